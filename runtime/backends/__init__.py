"""The registry of denoiser backends: TensorRT (.plan), ONNX Runtime (.onnx), PyTorch (a checkpoint).

A backend is one module with a `load(path, manifest, expected, **options)` function returning a
runtime.denoiser.Denoiser (a file's: runtime.backends.graph.GraphDenoiser over a dit_ref.runners runner) and a
`default_device()`, plus one line in BACKENDS naming its suffixes and its own options.
Heavy dependencies (tensorrt, onnxruntime, openvino) are imported only when their backend is chosen, and a
file's backend never imports export/ or onnx.
"""

import importlib
from dataclasses import dataclass
from pathlib import Path

import torch

from dit_ref import configs
from dit_ref.contract import Manifest, read_manifest
from dit_ref.errors import DiTError
from dit_ref.runners import ENGINE_SUFFIXES, choose_runtime, is_engine, onnxruntime_cuda_here, openvino_here


@dataclass(frozen=True)
class Backend:
    """One way to run the guided forward."""

    name: str  # the name used by dit-run --backend, the benchmarks and the API
    suffixes: tuple[str, ...]  # files it runs; () for the PyTorch reference, which runs a checkpoint
    module: str  # imported when chosen; defines load(path, manifest, expected, **options) and default_device()
    options: tuple[str, ...]  # keyword options its load() takes beyond what is expected of the model
    description: str


BACKENDS = {backend.name: backend for backend in (
    Backend("tensorrt", ENGINE_SUFFIXES, "runtime.backends.tensorrt_backend", ("device", "threads", "cuda_graphs"),
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
    CUDA provider is here, else on the CPU in the backend dit-tune measured fastest for it here (a profile beside
    it), else the runtime dit_ref.runners.CPU_CHOICE names for its precision (OpenVINO when it is installed; ONNX
    Runtime otherwise)."""
    chosen = unmeasured_backend(path)
    if chosen[0] == "tensorrt" or onnxruntime_cuda_here():
        return chosen
    from runtime.profile import measured_backend

    measured = measured_backend(path)
    if measured is not None and (measured != "openvino" or openvino_here()):
        return measured, "measured fastest for this graph on this machine by dit-tune (the profile beside it)"
    return chosen


def unmeasured_backend(path) -> tuple[str, str]:
    """(backend, why) for --backend auto without a profile: the runtime dit_ref.runners.choose_runtime names."""
    return choose_runtime(path, "denoiser", None if is_engine(path) else graph_precision(path))


def graph_precision(path) -> str | None:
    """The manifest's precision of a graph, or None when it has no readable manifest (refused later)."""
    try:
        return read_manifest(path).precision
    except DiTError:
        return None


def profile_choice(path, backend: str, spec: str, options: dict) -> tuple:
    """(file, backend, options) of a profile point for load_denoiser: the point's where the caller gave none."""
    from runtime.profile import load_point

    profile, point = load_point(spec, path)
    chosen = point.backend if backend == "auto" else backend
    return profile.graph_path(point), chosen, {**point.load_for(chosen), **{k: v for k, v in options.items()
                                                                            if v is not None}}


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


def load_denoiser(path=None, backend: str = "auto", *, model=None, image_size=None, cfg_channels=None, profile=None,
                  **options):
    """A Denoiser for an engine or graph file, or for a checkpoint with the torch backend.

    For files, the model, image size, cfg_channels and batch range come from the manifest beside
    them; model / image_size / cfg_channels given here must agree with it. options are
    the chosen backend's own (see BACKENDS): device, threads (ONNX Runtime's intra-op threads; torch's
    for the host work everywhere), cuda_graphs, dtype, ckpt, random_init, compile. None and False
    count as not given. profile: a point of the tuning profile beside the file (runtime.profile): its graph or
    engine, backend and backend options load instead, where backend and options do not say otherwise.
    """
    if profile is not None:
        path, backend, options = profile_choice(path, backend, profile, options)
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
    return importlib.import_module(chosen.module).load(path, manifest, expected, **given)
