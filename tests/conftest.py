"""Shared fixtures: tiny random-weight models built once per session, and gpu/trt skips."""

import functools
import importlib.util

import pytest
import torch

from dit_ref import build_model, randomize_weights_


def _has_cuda() -> bool:
    return torch.cuda.is_available()


def _has_tensorrt() -> bool:
    return importlib.util.find_spec("tensorrt") is not None


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU; this machine has none (run on a GPU machine, see README)")
    skip_trt = pytest.mark.skip(reason="needs TensorRT (pip install -e '.[gpu]' on a CUDA machine, see README)")
    for item in items:
        if "gpu" in item.keywords and not _has_cuda():
            item.add_marker(skip_gpu)
        if "trt" in item.keywords and not _has_tensorrt():
            item.add_marker(skip_trt)


@functools.cache
def random_model(name: str, image_size: int = 256, seed: int = 0, numerics: str = "official"):
    """A DiT with every tensor randomised (seeded), in eval mode; cached for the session."""
    model = randomize_weights_(build_model(name, image_size, numerics), seed)
    return model.eval().requires_grad_(False)


@pytest.fixture(scope="session")
def tiny_model():
    """Factory for cached random models: tiny_model("S/8", 256, seed=0)."""
    return random_model


def max_rel_error(actual, expected) -> float:
    """max |actual - expected| / max |expected|: error relative to the output's scale."""
    actual, expected = torch.as_tensor(actual).double(), torch.as_tensor(expected).double()
    return ((actual - expected).abs().max() / expected.abs().max()).item()


@pytest.fixture(scope="session")
def exported_graph(tmp_path_factory):
    """Factory for cached exported graphs: exported_graph("S/8", 256, "fp16", seed=0, cfg_channels=3).

    Exports random_model(name, image_size, seed) once per session into its own temporary directory
    (graph + manifest, default batch range 1:8:32) and returns the .onnx path.
    """
    from export.onnx_export import export_onnx

    @functools.cache
    def export(name: str, image_size: int, precision: str, seed: int = 0, cfg_channels: int = 3):
        stem = f"{name.replace('/', '-')}-{image_size}-{precision}-seed{seed}-cfg{cfg_channels}"
        checkpoint = {"source": f"random init (seed {seed})", "sha256": None, "random_weights": True}
        return export_onnx(
            random_model(name, image_size, seed), tmp_path_factory.mktemp(stem), precision,
            cfg_channels, checkpoint=checkpoint,
        )

    return export
