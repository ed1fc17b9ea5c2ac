"""The benchmarked settings, named as the runtime names its backends, and why one cannot run here.

A setting is a registry backend (runtime.backends.BACKENDS) with options: "torch-fp16" is the torch
backend in float16, "onnxruntime-fp16" ONNX Runtime on the FP16 graph. `skip_reason` says in one
line why it cannot run here (or None), `prepare` makes the graph or engine it needs once with
export.export(), and `make_denoiser` loads it through runtime.backends.load_denoiser.
"""

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dit_ref.contract import BatchRange
from dit_ref.machine.cpu import cpu_has


@dataclass(frozen=True)
class Setting:
    backend: str  # a runtime.backends.BACKENDS name
    description: str
    options: dict = field(default_factory=dict)  # load_denoiser options
    precision: str | None = None  # the graph it runs ("fp32"/"fp16"), None for the PyTorch reference


SETTINGS = {
    "torch": Setting("torch", "PyTorch eager, float32 (the baseline)"),
    "torch-fp16": Setting("torch", "PyTorch eager, float16 (float32 islands kept)", {"dtype": "float16"}),
    "torch-bf16": Setting("torch", "PyTorch eager, bfloat16 (float32 islands kept)", {"dtype": "bfloat16"}),
    "torch-compile": Setting("torch", "torch.compile of the guided forward, float32", {"compile": True}),
    "onnxruntime": Setting("onnxruntime", "ONNX Runtime, FP32 graph", precision="fp32"),
    "onnxruntime-fp16": Setting("onnxruntime", "ONNX Runtime, FP16-typed graph", precision="fp16"),
    "tensorrt": Setting("tensorrt", "TensorRT engine from the FP16 graph", precision="fp16"),
}
BACKENDS = {name: setting.description for name, setting in SETTINGS.items()}


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def skip_reason(name: str) -> str | None:
    """Why a setting cannot run on this machine, in one line; None when it can."""
    if name not in SETTINGS:
        return f"unknown backend; choose from {', '.join(SETTINGS)}"
    on_gpu = device().type == "cuda"
    if name == "torch-fp16" and not on_gpu and not cpu_has("avx512_fp16", "amx_fp16"):
        return "this CPU has no float16 units (avx512_fp16 / amx_fp16): float16 would be emulated"
    if name == "torch-bf16" and not on_gpu and not cpu_has("avx512_bf16", "amx_bf16"):
        return "this CPU has no bfloat16 units (avx512_bf16 / amx_bf16): bfloat16 would be emulated"
    if name == "torch-bf16" and on_gpu and not torch.cuda.is_bf16_supported():
        return "this GPU does not support bfloat16 (needs Ampere or newer)"
    if name == "torch-compile" and importlib.util.find_spec("triton") is None and on_gpu:
        return "torch.compile needs triton on a GPU"
    if name == "tensorrt":
        from dit_ref.machine.tensorrt_stack import engine_unavailable_reason

        return engine_unavailable_reason()
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


def make_denoiser(name: str, model: str, image_size: int, artifact: str | None):
    """The denoiser to time, on this machine's device."""
    from runtime.backends import load_denoiser

    setting = SETTINGS[name]
    if artifact is not None:
        options = dict(setting.options)
        if setting.backend == "onnxruntime" and device().type == "cuda":
            options["device"] = "cuda"  # on a GPU machine: CUDA, or the one-line reason it cannot (never CPU quietly)
        return load_denoiser(artifact, setting.backend, **options)
    return load_denoiser(None, "torch", device=device(), model=model, image_size=image_size, random_init=0,
                         **setting.options)
