"""Which runtime runs a file when none is named: TensorRT for an engine, ONNX Runtime's CUDA provider where it and a
GPU are here, else the CPU runtime this table names for the graph's kind and precision.

docs/benchmarks.md gives the measurements behind each choice (the yardstick's frontier for denoisers, VAE decode for
decoders).
"""

import importlib.util
from pathlib import Path

import torch

from dit_ref.errors import DiTError

ENGINE_SUFFIXES = (".plan", ".engine")  # TensorRT engines; a .onnx is a graph
KINDS = ("denoiser", "decoder")  # a DiT graph, a VAE decoder graph
# (kind, precision) -> the CPU runtime. Denoisers: OpenVINO, the fastest at equal accuracy, except fp8, which only
# ONNX Runtime runs (emulated). Decoders: ONNX Runtime for fp32 and fp16 (every decoder check uses it; OpenVINO is
# barely faster there), OpenVINO for bf16.
CPU_CHOICE = {
    ("denoiser", "fp32"): "openvino", ("denoiser", "fp16"): "openvino", ("denoiser", "bf16"): "openvino",
    ("denoiser", "int8"): "openvino", ("denoiser", "fp8"): "onnxruntime",
    ("decoder", "fp32"): "onnxruntime", ("decoder", "fp16"): "onnxruntime", ("decoder", "bf16"): "openvino",
}
OPENVINO_ONLY = ("bf16",)  # precisions no other CPU runtime runs (ONNX Runtime has no bfloat16 CPU kernels)


def is_engine(path) -> bool:
    return Path(path).suffix.lower() in ENGINE_SUFFIXES


def onnxruntime_cuda_here() -> bool:
    """torch sees a GPU and ONNX Runtime has its CUDA provider (onnxruntime-gpu)."""
    if not torch.cuda.is_available():
        return False
    try:
        import onnxruntime
    except ModuleNotFoundError:
        return False
    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


def openvino_here() -> bool:
    return importlib.util.find_spec("openvino") is not None


def choose_runtime(path, kind: str, precision: str | None, device: torch.device | None = None) -> tuple[str, str]:
    """(runtime, why) for a file: an engine runs in TensorRT; a graph in ONNX Runtime on a GPU where its CUDA
    provider is (unless device says cpu), else on the CPU in CPU_CHOICE's runtime for its kind and precision
    (ONNX Runtime where OpenVINO is not installed, or DiTError for a precision only OpenVINO runs)."""
    if is_engine(path):
        return "tensorrt", "a TensorRT engine"
    if (device is None or device.type == "cuda") and onnxruntime_cuda_here():
        return "onnxruntime", "ONNX Runtime's CUDA provider and a GPU are here"
    wanted = CPU_CHOICE.get((kind, precision), "openvino")
    if wanted == "openvino" and not openvino_here():
        if precision in OPENVINO_ONLY:
            raise DiTError(f"{Path(path).name} is a {precision} {kind}, which runs on a CPU in OpenVINO only: "
                           "pip install -e '.[cpu]'")
        return "onnxruntime", "OpenVINO, the faster CPU runtime, is not installed (pip install -e '.[cpu]')"
    return wanted, f"the fastest CPU runtime at equal accuracy for {precision or 'these'} graphs (docs/benchmarks.md)"


def runtime_device(runtime: str, device: torch.device) -> torch.device:
    """Where a runtime chosen for a file next to work on `device` runs it: TensorRT on a CUDA device, ONNX Runtime
    on `device` when that is a GPU its CUDA provider reaches, else on the CPU."""
    if runtime == "tensorrt":
        return device if device.type == "cuda" else torch.device("cuda")
    if runtime == "onnxruntime" and device.type == "cuda" and onnxruntime_cuda_here():
        return device
    return torch.device("cpu")
