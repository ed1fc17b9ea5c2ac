"""The benchmarked settings, named as the runtime names its backends, and why one cannot run here.

A setting is a registry backend (runtime.backends.BACKENDS) with options: "torch-fp16" is the torch
backend in float16, "onnxruntime-fp16" ONNX Runtime on the FP16 graph, "openvino-bf16-compute"
OpenVINO on the FP32 graph with its own bfloat16 compute. `skip_reason` says in one line why it
cannot run here (or None), `prepare` makes the graph or engine it needs once with export.export(),
and `make_denoiser` loads it through runtime.backends.load_denoiser.
"""

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dit_ref.contract import BatchRange
from dit_ref.errors import DiTError
from dit_ref.machine.cpu import cpu_has
from dit_ref.machine.openvino_stack import import_openvino


@dataclass(frozen=True)
class Setting:
    backend: str  # a runtime.backends.BACKENDS name
    description: str
    options: dict = field(default_factory=dict)  # load_denoiser options
    precision: str | None = None  # the graph it runs (an export precision), None for the PyTorch reference
    compute: str = "fp32"  # what its matmuls compute in on a CPU: bf16 and int8 are also held against the bf16 peak
    cache: str | None = None  # cached steps in the full sampling run (runtime.caching), e.g. "fora:3"


SETTINGS = {
    "torch": Setting("torch", "PyTorch eager, float32 (the baseline)"),
    "torch-fp16": Setting("torch", "PyTorch eager, float16 (float32 islands kept)", {"dtype": "float16"}, None, "fp16"),
    "torch-bf16": Setting("torch", "PyTorch eager, bfloat16 (float32 islands kept)", {"dtype": "bfloat16"}, None, "bf16"),
    "torch-compile": Setting("torch", "torch.compile of the guided forward, float32", {"compile": True}),
    "torch-compile-fp16": Setting("torch", "torch.compile of the guided forward, float16",
                                  {"compile": True, "dtype": "float16"}, None, "fp16"),
    "torch-cudagraphs-fp16": Setting("torch", "torch.compile reduce-overhead (CUDA graphs), float16",
                                     {"compile": "reduce-overhead", "dtype": "float16"}, None, "fp16"),
    "torch-cudagraphs-bf16": Setting("torch", "torch.compile reduce-overhead (CUDA graphs), bfloat16",
                                     {"compile": "reduce-overhead", "dtype": "bfloat16"}, None, "bf16"),
    "torch-cudagraphs-fp16-fora3": Setting("torch", "torch.compile reduce-overhead (CUDA graphs), float16, cached "
                                           "steps fora:3 in the full run", {"compile": "reduce-overhead",
                                                                            "dtype": "float16"}, None, "fp16", "fora:3"),
    "onnxruntime": Setting("onnxruntime", "ONNX Runtime, FP32 graph", precision="fp32"),
    "onnxruntime-fp16": Setting("onnxruntime", "ONNX Runtime, FP16-typed graph", precision="fp16"),
    "onnxruntime-int8": Setting("onnxruntime", "ONNX Runtime, INT8 Q/DQ graph", precision="int8", compute="int8"),
    "openvino": Setting("openvino", "OpenVINO, FP32 graph, float32 inference", precision="fp32"),
    "openvino-fp16": Setting("openvino", "OpenVINO, FP16-typed graph, float32 inference", precision="fp16"),
    "openvino-bf16": Setting("openvino", "OpenVINO, BF16-typed graph, float32 inference (float32 islands kept)",
                             precision="bf16", compute="bf16"),
    "openvino-bf16-compute": Setting("openvino", "OpenVINO, FP32 graph, its own bfloat16 compute (islands dropped)",
                                     {"dtype": "bfloat16"}, "fp32", "bf16"),
    "openvino-int8": Setting("openvino", "OpenVINO, INT8 Q/DQ graph", precision="int8", compute="int8"),
    "tensorrt": Setting("tensorrt", "TensorRT engine from the FP16 graph", precision="fp16"),
}
BACKENDS = {name: setting.description for name, setting in SETTINGS.items()}


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def skip_reason(name: str) -> str | None:
    """Why a setting cannot run on this machine, in one line; None when it can."""
    if name not in SETTINGS:
        return f"unknown backend; choose from {', '.join(SETTINGS)}"
    on_gpu, backend = device().type == "cuda", SETTINGS[name].backend
    if backend == "torch":
        return torch_reason(SETTINGS[name].options, on_gpu)
    if backend == "onnxruntime" and importlib.util.find_spec("onnxruntime") is None:
        return "ONNX Runtime is not installed: pip install -e '.[cpu]'"
    if backend == "openvino":
        return openvino_reason(name, on_gpu)
    if name == "tensorrt":
        from dit_ref.machine.tensorrt_stack import build_unavailable_reason

        return build_unavailable_reason()  # prepare() builds the engine
    return None


def torch_reason(options: dict, on_gpu: bool) -> str | None:
    """Why a torch setting cannot run here: CUDA graphs off a GPU, half precision without its units (CPU) or
    bfloat16 on a GPU older than Ampere, torch.compile on a GPU without triton."""
    from runtime.backends.torch_backend import CUDA_GRAPH_MODES

    dtype, compile = options.get("dtype"), options.get("compile")
    if compile in CUDA_GRAPH_MODES and not on_gpu:
        return f"CUDA graphs (torch.compile mode {compile}) need a CUDA GPU"
    if dtype == "float16" and not on_gpu and not cpu_has("avx512_fp16", "amx_fp16"):
        return "this CPU has no float16 units (avx512_fp16 / amx_fp16): float16 would be emulated"
    if dtype == "bfloat16" and not on_gpu and not cpu_has("avx512_bf16", "amx_bf16"):
        return "this CPU has no bfloat16 units (avx512_bf16 / amx_bf16): bfloat16 would be emulated"
    if dtype == "bfloat16" and on_gpu and not torch.cuda.is_bf16_supported():
        return "this GPU does not support bfloat16 (needs Ampere or newer)"
    if compile and on_gpu and importlib.util.find_spec("triton") is None:
        return "torch.compile needs triton on a GPU"
    return None


def openvino_reason(name: str, on_gpu: bool) -> str | None:
    """Why an OpenVINO setting cannot run here: OpenVINO missing, a GPU run, bf16 compute without bf16 units."""
    try:
        import_openvino()
    except DiTError as error:
        return str(error)
    if on_gpu:
        return "OpenVINO runs on the CPU and this run measures the GPU; run it on a machine without CUDA"
    if SETTINGS[name].options.get("dtype") == "bfloat16" and not cpu_has("avx512_bf16", "amx_bf16"):
        return "this CPU has no bfloat16 units (avx512_bf16 / amx_bf16): OpenVINO would emulate bfloat16 compute"
    return None


def graph_dir(work_dir: Path, model: str, image_size: int) -> Path:
    return work_dir / f"{model.replace('/', '-')}-{image_size}"


def prepare(name: str, model: str, image_size: int, batch: BatchRange, work_dir: Path) -> Path | None:
    """The graph or engine the setting runs, made once per model and size (random weights, seed 0)."""
    setting = SETTINGS[name]
    if setting.precision is None:
        return None
    from export import export

    out_dir = graph_dir(work_dir, model, image_size)
    stem = out_dir / f"DiT-{model.replace('/', '-')}-{image_size}-{setting.precision}"
    graph, plan = stem.with_suffix(".onnx"), stem.with_suffix(".plan")
    wanted = plan if setting.backend == "tensorrt" else graph
    if not wanted.exists():
        engine = "required" if setting.backend == "tensorrt" else "skip"
        if graph.exists() and engine == "required":
            from export.engine import build_engine

            return build_engine(graph, batch)
        result = export(model, image_size, random_init=0, precision=setting.precision, batch=batch, out=out_dir,
                        engine=engine, check=False)
        return result.engine or result.graph
    return wanted


def make_denoiser(name: str, model: str, image_size: int, artifact: str | None, threads: int | None = None):
    """The denoiser to time, on this machine's device (with `threads` CPU threads when given)."""
    from runtime.backends import load_denoiser

    setting = SETTINGS[name]
    options = dict(setting.options, **({"threads": threads} if threads else {}))
    if artifact is not None:
        if setting.backend == "onnxruntime" and device().type == "cuda":
            options["device"] = "cuda"  # on a GPU machine: CUDA, or the one-line reason it cannot (never CPU quietly)
        return load_denoiser(artifact, setting.backend, **options)
    return load_denoiser(None, "torch", device=device(), model=model, image_size=image_size, random_init=0, **options)
