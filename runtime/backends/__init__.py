"""Denoiser backends and the choice between them: TensorRT (.plan), ONNX Runtime (.onnx), PyTorch.

Every backend is a callable (x, t, y, cfg_scale) -> (eps, var_values) on its `device`, with a
`name` and the `manifest` of its graph or engine (None for PyTorch). Heavy dependencies (tensorrt,
onnxruntime) are imported only when their backend is chosen.
"""

import importlib.util
from pathlib import Path

import torch

from dit_ref import configs
from dit_ref.errors import DiTError

BACKENDS = ("auto", "tensorrt", "onnxruntime", "torch")
SUFFIXES = {".plan": "tensorrt", ".engine": "tensorrt", ".onnx": "onnxruntime"}


def backend_for(path, backend: str = "auto") -> str:
    """The backend for a file (.plan -> tensorrt, .onnx -> onnxruntime) or the one asked for."""
    if backend not in BACKENDS:
        raise DiTError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if path is None:
        if backend in ("auto", "torch"):
            return "torch"
        raise DiTError(f"the {backend} backend needs an engine or graph file; pass its path")
    suffix = Path(path).suffix.lower()
    if backend == "torch":
        raise DiTError(f"the torch backend runs a checkpoint (--ckpt or --random-init), not {Path(path).name}; "
                       f"drop the file argument or use --backend auto")
    found = SUFFIXES.get(suffix)
    if found is None:
        raise DiTError(f"{Path(path).name} is neither a TensorRT engine (.plan) nor an ONNX graph (.onnx)")
    if backend != "auto" and backend != found:
        raise DiTError(f"--backend {backend} cannot run {Path(path).name} (a {found} file)")
    return found


def batch_range(manifest: dict, path) -> dict:
    """The {"min", "opt", "max"} a graph or engine file serves; an engine's own (it may have been
    rebuilt with another --batch than its graph)."""
    is_engine = path is not None and SUFFIXES.get(Path(path).suffix.lower()) == "tensorrt"
    engine = manifest.get("engine") if is_engine else None
    return (engine or manifest).get("batch", {})


def check_request(manifest: dict, path, model=None, image_size=None, batch_size=None, cfg_channels=None) -> None:
    """DiTError saying why, if the graph or engine described by manifest cannot serve the request."""
    name = Path(path).name
    if model is not None and configs.get_config(model).name != configs.get_config(manifest["model"]).name:
        raise DiTError(f"{name} holds {manifest['model']}, not {configs.get_config(model).name}; "
                       f"export that model or drop --model")
    if image_size is not None and int(image_size) != int(manifest["image_size"]):
        raise DiTError(f"{name} was exported for {manifest['image_size']} px images, not {image_size}; "
                       f"export a graph for {image_size} (dit-export --image-size {image_size}) or drop --image-size")
    if cfg_channels is not None and int(cfg_channels) != int(manifest["cfg_channels"]):
        raise DiTError(f"{name} guides {manifest['cfg_channels']} channels (baked into the graph), not "
                       f"{cfg_channels}; re-export with --cfg-channels {cfg_channels} or drop --cfg-channels")
    if batch_size is not None:
        from runtime.backends.onnxruntime_backend import check_batch

        check_batch(int(batch_size), batch_range(manifest, path), path)


def load_denoiser(path=None, backend: str = "auto", device=None, ckpt=None, model=None, image_size=None,
                  cfg_channels=None, dtype="float32", random_init=None, batch_size=None, threads=None,
                  cuda_graphs=False):
    """A denoiser for an engine or graph file, or for a checkpoint with the torch backend.

    For files the model, image size, cfg_channels and batch range come from the manifest beside
    them; model / image_size / cfg_channels / batch_size given here must agree with it (None: take
    the manifest's). cfg_channels for the torch backend defaults to 3 (official sample.py).
    threads: ONNX Runtime's CPU intra-op threads (default: physical cores).
    cuda_graphs: TensorRT only, capture one CUDA graph per batch size and replay it.
    """
    chosen = backend_for(path, backend)
    if path is None and ckpt is None and random_init is None:
        raise DiTError("nothing to run: pass an engine (.plan) or graph (.onnx) made by dit-export, or "
                       "--ckpt PATH|auto|hf:ID (or --random-init SEED) with --model and --image-size")
    if chosen == "torch":
        from runtime.backends.torch_backend import load_torch_denoiser

        return load_torch_denoiser(model, image_size, ckpt, random_init, device, dtype,
                                   3 if cfg_channels is None else int(cfg_channels))
    if ckpt is not None or random_init is not None:
        raise DiTError(f"--ckpt and --random-init are for the torch backend; {Path(path).name} has its weights inside")
    path = Path(path)
    if not path.is_file():
        raise DiTError(f"{path} not found; pass an engine (.plan) or graph (.onnx) made by dit-export")
    from export.manifest import read_manifest

    manifest = read_manifest(path)
    check_request(manifest, path, model, image_size, batch_size, cfg_channels)
    if chosen == "onnxruntime":
        from runtime.backends.onnxruntime_backend import OnnxRuntimeDenoiser

        return OnnxRuntimeDenoiser(path, manifest, device, threads)
    return _load_tensorrt(path, manifest, device, cuda_graphs)


def _load_tensorrt(path: Path, manifest: dict, device, cuda_graphs: bool = False):
    """The TensorRT denoiser (helper module imported lazily); DiTError when TensorRT cannot run here."""
    graph = path.with_suffix(".onnx").name
    remedy = (f"install the gpu extra (pip install -e '.[gpu]') on a CUDA machine, or run the graph "
              f"instead: dit-run {graph}")
    if importlib.util.find_spec("tensorrt") is None:
        raise DiTError(f"cannot run {path.name}: TensorRT is not installed; {remedy}")
    if not torch.cuda.is_available():
        raise DiTError(f"cannot run {path.name}: TensorRT needs a CUDA GPU and torch sees none; {remedy}")
    try:
        from runtime.backends.tensorrt_backend import TensorRTDenoiser
    except ImportError as error:
        raise DiTError(f"cannot run {path.name}: {error}; {remedy}") from None
    return TensorRTDenoiser(path, manifest, device=device or "cuda", cuda_graphs=cuda_graphs)


def model_facts(denoiser) -> dict:
    """What the CLI needs to know about a denoiser: model, image and latent size, weights' origin."""
    manifest = denoiser.manifest
    if manifest is not None:
        checkpoint = manifest.get("checkpoint") or {}
        return {"model": manifest["model"], "image_size": int(manifest["image_size"]),
                "latent_size": int(manifest["latent_size"]), "source": checkpoint.get("source", "?"),
                "random_weights": bool(checkpoint.get("random_weights", False))}
    model = denoiser.model
    return {"model": model.config.name, "image_size": model.image_size, "latent_size": model.latent_size,
            "source": getattr(denoiser, "source", "?"),
            "random_weights": bool(getattr(denoiser, "random_weights", False))}
