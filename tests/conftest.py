"""Shared fixtures: tiny random-weight models and graphs built once per session, and gpu/trt skips."""

import functools
import importlib.util

import pytest
import torch

from testing_utils import random_model


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


@pytest.fixture(scope="session")
def tiny_model():
    """Factory for cached random models: tiny_model("S/8", 256, seed=0)."""
    return random_model


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
