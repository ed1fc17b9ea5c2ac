"""The ONNX Runtime backend: the exported guided graph (any precision but bf16 on a CPU) on the CUDA or CPU provider,
run by dit_ref.runners.onnxruntime_runner (I/O binding on torch CUDA tensors on a GPU; numpy views on a CPU)."""

from dit_ref.runners import open_runner
from dit_ref.runners.onnxruntime_runner import default_device  # noqa: F401 (the registry's default_device())
from runtime.backends.graph import GraphDenoiser, given


def load(path, manifest, expected, device=None, threads=None) -> GraphDenoiser:
    runner = open_runner(path, "onnxruntime", device, threads, manifest)
    emulated = " (emulated)" if manifest.precision == "fp8" and runner.device.type == "cpu" else ""
    return GraphDenoiser(runner, manifest, path, "onnxruntime", given(device=device, threads=threads),
                         f"{runner.name} {manifest.precision}{emulated}")
