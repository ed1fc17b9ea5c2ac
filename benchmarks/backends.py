"""How each benchmarked backend is made, and why one cannot run on this machine.

A backend spec is a name from BACKENDS; `skip_reason` says in one line why it cannot run here (or
None), `prepare` makes the files it needs once (graphs, engines) in the work directory, and
`make_denoiser` builds it inside the measuring process.
"""

import importlib.util
from pathlib import Path

import torch

BACKENDS = {
    "torch": "PyTorch eager, float32 (the baseline)",
    "torch-fp16": "PyTorch eager, float16 (float32 islands kept)",
    "torch-bf16": "PyTorch eager, bfloat16 (float32 islands kept)",
    "torch-compile": "torch.compile of the guided forward, float32",
    "onnx": "ONNX Runtime, FP32 graph",
    "onnx-fp16": "ONNX Runtime, FP16-typed graph",
    "trt": "TensorRT engine from the FP16 graph",
}
TORCH_DTYPES = {"torch": "float32", "torch-fp16": "float16", "torch-bf16": "bfloat16", "torch-compile": "float32"}
GRAPH_PRECISION = {"onnx": "fp32", "onnx-fp16": "fp16", "trt": "fp16"}


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def skip_reason(backend: str) -> str | None:
    """Why backend cannot run on this machine, in one line; None when it can."""
    if backend not in BACKENDS:
        return f"unknown backend; choose from {', '.join(BACKENDS)}"
    on_gpu = device().type == "cuda"
    if backend == "torch-fp16" and not on_gpu and not cpu_has("avx512_fp16", "amx_fp16"):
        return "this CPU has no float16 units (avx512_fp16 / amx_fp16): float16 would be emulated"
    if backend == "torch-bf16" and not on_gpu and not cpu_has("avx512_bf16", "amx_bf16"):
        return "this CPU has no bfloat16 units (avx512_bf16 / amx_bf16): bfloat16 would be emulated"
    if backend == "torch-bf16" and on_gpu and not torch.cuda.is_bf16_supported():
        return "this GPU does not support bfloat16 (needs Ampere or newer)"
    if backend == "torch-compile" and importlib.util.find_spec("triton") is None and on_gpu:
        return "torch.compile needs triton on a GPU"
    if backend == "trt":
        from export.engine import engine_unavailable_reason

        return engine_unavailable_reason()
    return None


def cpu_has(*flags: str) -> bool:
    """True if /proc/cpuinfo lists any of the flags (False where there is no /proc/cpuinfo)."""
    try:
        words = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return False
    return any(flag in words for flag in flags)


def graph_dir(work_dir: Path, model: str, image_size: int) -> Path:
    return work_dir / f"{model.replace('/', '-')}-{image_size}"


def prepare(backend: str, model: str, image_size: int, batch: dict, work_dir: Path) -> Path | None:
    """The graph or engine the backend runs, made once per model and size (random weights, seed 0)."""
    if backend not in GRAPH_PRECISION:
        return None
    from dit_ref.weights import load_dit
    from export.onnx_export import export_onnx, graph_file_name

    out_dir = graph_dir(work_dir, model, image_size)
    precision = GRAPH_PRECISION[backend]
    loaded = load_dit(model, image_size, random_init=0)
    graph = out_dir / graph_file_name(loaded.model, precision)
    if not graph.exists():
        checkpoint = {"source": loaded.source, "sha256": loaded.sha256, "random_weights": True}
        graph = export_onnx(loaded.model, out_dir, precision, batch=batch, checkpoint=checkpoint)
    if backend != "trt":
        return graph
    plan = graph.with_suffix(".plan")
    if not plan.exists():
        from export.engine import build_engine

        plan = build_engine(graph, batch)
    return plan


def make_denoiser(backend: str, model: str, image_size: int, artifact: str | None):
    """The denoiser to time, on this machine's device."""
    from runtime.backends import load_denoiser

    if artifact is not None:  # ONNX Runtime picks CUDA when it has the provider, else CPU (named in the record)
        return load_denoiser(artifact)
    denoiser = load_denoiser(None, "torch", device=device(), model=model, image_size=image_size,
                             random_init=0, dtype=TORCH_DTYPES[backend])
    if backend == "torch-compile":
        denoiser = CompiledDenoiser(denoiser)
    return denoiser


class CompiledDenoiser:
    """torch.compile of the same guided forward the graph is exported from (export.guided.GuidedDiT)."""

    def __init__(self, eager):
        from export.guided import GuidedDiT

        self.device, self.manifest, self.name = eager.device, None, "torch.compile float32"
        self.module = torch.compile(GuidedDiT(eager.model, eager.cfg_channels))

    def __call__(self, x, t, y, cfg_scale):
        with torch.inference_mode():
            return self.module(x, t, y, cfg_scale)
