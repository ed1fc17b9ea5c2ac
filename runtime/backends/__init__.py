"""The registry of denoiser backends: TensorRT (.plan), ONNX Runtime (.onnx), PyTorch (a checkpoint).

A backend is one module with a `load(path, manifest, expected, **options)` function returning a
runtime.denoiser.Denoiser and a `default_device()`, plus one line in BACKENDS naming its suffixes and
its own options.
Heavy dependencies (tensorrt, onnxruntime) are imported only when their backend is chosen, and a
file's backend never imports export/ or onnx.
"""

import importlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch

from dit_ref import configs
from dit_ref.contract import Manifest, read_manifest
from dit_ref.errors import DiTError


@dataclass(frozen=True)
class Backend:
    """One way to run the guided forward."""

    name: str  # the name used by dit-run --backend, the benchmarks and the API
    suffixes: tuple[str, ...]  # files it runs; () for the PyTorch reference, which runs a checkpoint
    module: str  # imported when chosen; defines load(path, manifest, expected, **options) and default_device()
    options: tuple[str, ...]  # keyword options its load() takes beyond what is expected of the model
    description: str


BACKENDS = {backend.name: backend for backend in (
    Backend("tensorrt", (".plan", ".engine"), "runtime.backends.tensorrt_backend", ("device", "threads", "cuda_graphs"),
            "TensorRT engine, CUDA"),
    Backend("onnxruntime", (".onnx",), "runtime.backends.onnxruntime_backend", ("device", "threads"),
            "ONNX Runtime on the exported graph, CPU or CUDA"),
    Backend("openvino", (".onnx",), "runtime.backends.openvino_backend", ("device", "threads", "dtype"),
            "OpenVINO on the exported graph, CPU (float32 or bfloat16 compute)"),
    Backend("torch", (), "runtime.backends.torch_backend",
            ("device", "threads", "dtype", "ckpt", "random_init", "compile", "num_classes"),
            "PyTorch reference (dit_ref), eager or torch.compile'd (mode reduce-overhead: CUDA graphs)"),
)}
BACKEND_CHOICES = ("auto", *BACKENDS)


NOTHING_TO_RUN = ("nothing to run: pass an engine (.plan) or graph (.onnx) made by dit-export, or "
                  "--ckpt PATH|auto|hf:ID (or --random-init SEED) with --model")


@dataclass(frozen=True)
class Expected:
    """What the caller expects of the model; None: whatever the file (or the torch defaults) says."""

    model: str | None = None
    image_size: int | None = None
    cfg_channels: int | None = None


# --backend auto for a graph on a CPU, by the graph's precision: the backend the yardstick found fastest at
# equal accuracy (the frontier of 2026-12-02, AMD EPYC with AVX-512 BF16/VNNI, docs/benchmarks.md: OpenVINO
# 1.6x ONNX Runtime in FP32, 1.7x in FP16, 1.8x in INT8). A bf16 graph runs only in OpenVINO (ONNX Runtime
# has no bfloat16 CPU kernels); an fp8 one only in ONNX Runtime (emulated).
CPU_CHOICE = {"fp32": "openvino", "fp16": "openvino", "bf16": "openvino", "int8": "openvino", "fp8": "onnxruntime"}


def backend_for(path, backend: str = "auto") -> str:
    """The backend for a file (.plan -> tensorrt, .onnx -> auto_backend's choice) or the one asked for."""
    if backend not in BACKEND_CHOICES:
        raise DiTError(f"unknown backend {backend!r}; choose one of {', '.join(BACKEND_CHOICES)}")
    if path is None:
        if backend in ("auto", "torch"):
            return "torch"
        raise DiTError(f"the {backend} backend needs an engine or graph file; pass its path")
    if backend == "torch":
        raise DiTError(f"the torch backend runs a checkpoint (--ckpt or --random-init), not {Path(path).name}; "
                       f"drop the file argument or use --backend auto")
    suffix = Path(path).suffix.lower()
    runners = [b.name for b in BACKENDS.values() if suffix in b.suffixes]
    if not runners:
        raise DiTError(f"{Path(path).name} is neither a TensorRT engine (.plan) nor an ONNX graph (.onnx)")
    if backend == "auto":
        return auto_backend(path)[0]
    if backend not in runners:
        raise DiTError(f"--backend {backend} cannot run {Path(path).name} (a {' or '.join(runners)} file)")
    return backend


def auto_backend(path) -> tuple[str, str]:
    """(backend, why) for --backend auto: a .plan runs in TensorRT; a graph in ONNX Runtime on a GPU where its
    CUDA provider is here, else on the CPU in CPU_CHOICE's backend for its precision (OpenVINO when it is
    installed; ONNX Runtime otherwise)."""
    if Path(path).suffix.lower() in BACKENDS["tensorrt"].suffixes:
        return "tensorrt", "a TensorRT engine"
    if onnxruntime_cuda_here():
        return "onnxruntime", "ONNX Runtime's CUDA provider and a GPU are here"
    precision = graph_precision(path)
    wanted = CPU_CHOICE.get(precision, "openvino")
    if wanted == "openvino" and not openvino_here():
        return "onnxruntime", "OpenVINO, the faster CPU runtime, is not installed (pip install -e '.[cpu]')"
    return wanted, f"the fastest CPU runtime at equal accuracy for {precision or 'these'} graphs (docs/benchmarks.md)"


def graph_precision(path) -> str | None:
    """The manifest's precision of a graph, or None when it has no readable manifest (refused later)."""
    try:
        return read_manifest(path).precision
    except DiTError:
        return None


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


def check_expected(manifest: Manifest, path, expected: Expected) -> None:
    """DiTError saying why, if the graph or engine described by manifest is not what the caller expects."""
    name = Path(path).name
    if expected.model is not None and configs.get_config(expected.model).name != manifest.model:
        raise DiTError(f"{name} holds {manifest.model}, not {configs.get_config(expected.model).name}; "
                       f"export that model or drop --model")
    if expected.image_size is not None and int(expected.image_size) != manifest.image_size:
        size = expected.image_size
        raise DiTError(f"{name} was exported for {manifest.image_size} px images, not {size}; "
                       f"export a graph for {size} (dit-export --image-size {size}) or drop --image-size")
    if expected.cfg_channels is not None and int(expected.cfg_channels) != manifest.cfg_channels:
        raise DiTError(f"{name} guides {manifest.cfg_channels} channels (baked into the graph), not "
                       f"{expected.cfg_channels}; re-export with --cfg-channels {expected.cfg_channels} or drop --cfg-channels")


def backend_options(backend: Backend, options: dict, path) -> dict:
    """The options that were given (not None or False); DiTError naming one this backend does not take."""
    given = {key: value for key, value in options.items() if value is not None and value is not False}
    foreign = [key for key in given if key not in backend.options]
    if foreign:
        key = foreign[0]
        owners = " or ".join(b.name for b in BACKENDS.values() if key in b.options) or "no"
        hint = (f"{Path(path).name} has its weights inside" if path is not None and key in ("ckpt", "random_init")
                else f"the {backend.name} backend does not take it")
        raise DiTError(f"--{key.replace('_', '-')} is for the {owners} backend; {hint}")
    return given


def device_for(path, backend: str = "auto", device=None) -> torch.device:
    """The device a denoiser for this file (or checkpoint) will run on: `device`, or its backend's default."""
    if device is not None:
        return torch.device(device)
    return importlib.import_module(BACKENDS[backend_for(path, backend)].module).default_device()


def load_denoiser(path=None, backend: str = "auto", *, model=None, image_size=None, cfg_channels=None, **options):
    """A Denoiser for an engine or graph file, or for a checkpoint with the torch backend.

    For files, the model, image size, cfg_channels and batch range come from the manifest beside
    them; model / image_size / cfg_channels given here must agree with it. options are
    the chosen backend's own (see BACKENDS): device, threads (ONNX Runtime's intra-op threads; torch's
    for the host work everywhere), cuda_graphs, dtype, ckpt, random_init, compile. None and False
    count as not given.
    """
    chosen = BACKENDS[backend_for(path, backend)]
    expected = Expected(model, image_size, cfg_channels)
    if path is None and options.get("ckpt") is None and options.get("random_init") is None:
        raise DiTError(NOTHING_TO_RUN)
    given = backend_options(chosen, options, path)
    manifest = None
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise DiTError(f"{path} not found; pass an engine (.plan) or graph (.onnx) made by dit-export")
        manifest = read_manifest(path)
        check_expected(manifest, path, expected)
    denoiser = importlib.import_module(chosen.module).load(path, manifest, expected, **given)
    denoiser.path, denoiser.loaded_as = path, (chosen.name, given)  # what loads its cached-steps pair alike
    return denoiser
