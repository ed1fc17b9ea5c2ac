"""Shared fixtures: tiny random-weight models and graphs built once per session, and gpu/trt skips.

Tests marked gpu, trt or onnxruntime_cuda skip, with the one-line reason, where a CUDA device,
TensorRT or ONNX Runtime's CUDA provider is missing. With DIT_REQUIRE_GPU=1 (scripts/gpu-check.sh
sets it) each such skip is a failure instead, with the same reason: a GPU run cannot pass by
skipping everything. DIT_REQUIRE_GPU=gpu,trt requires only those markers' pieces; tests needing the
others still skip with their reason (gpu-check --no-install on a machine without TensorRT, which then
reports the run as partial).
"""

import functools
import os

import pytest

from testing_utils import GPU_MARKERS, random_model, required_markers

REQUIRED = required_markers(os.environ.get("DIT_REQUIRE_GPU", ""))
_MISSING = pytest.StashKey[str]()


@functools.cache
def missing(marker: str) -> str | None:
    """Why this machine cannot run tests with the marker (one line), or None; computed once."""
    if marker == "gpu":
        from dit_ref.machine.gpu_stack import cuda_unavailable_reason

        return cuda_unavailable_reason()
    if marker == "trt":
        from dit_ref.machine.tensorrt_stack import tensorrt_unavailable_reason

        return tensorrt_unavailable_reason()
    from dit_ref.machine.gpu_stack import onnxruntime_cuda_unavailable_reason

    return onnxruntime_cuda_unavailable_reason()


def pytest_collection_modifyitems(config, items):
    for item in items:
        reasons = {marker: missing(marker) for marker in GPU_MARKERS if item.get_closest_marker(marker)}
        reasons = {marker: reason for marker, reason in reasons.items() if reason}
        required = [reason for marker, reason in reasons.items() if marker in REQUIRED]
        if required:
            item.stash[_MISSING] = "; ".join(required)
        elif reasons:
            item.add_marker(pytest.mark.skip(reason=next(iter(reasons.values()))))


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """Under DIT_REQUIRE_GPU=1, fail a test whose requirement is missing, before its fixtures run."""
    reason = item.stash.get(_MISSING, None)
    if reason:
        pytest.fail(f"DIT_REQUIRE_GPU={os.environ['DIT_REQUIRE_GPU']} but {reason}", pytrace=False)


def pytest_terminal_summary(terminalreporter):
    """The machine under the summary: a failure that only one CPU shows (a native library's kernels) says where."""
    from dit_ref.machine.cpu import cpu_summary
    from dit_ref.machine.gpu_stack import installed

    versions = ", ".join(f"{name} {installed(name)}" for name in ("torch", "onnxruntime", "openvino"))
    terminalreporter.write_line(f"machine: {cpu_summary()}; {versions}")


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


@pytest.fixture(scope="session")
def random_vae(tmp_path_factory):
    """A tiny diffusers VAE folder (testing_utils.TINY_VAE_CONFIG) with every tensor randomised, seed 0."""
    from testing_utils import random_vae_dir

    return random_vae_dir(str(tmp_path_factory.mktemp("vae")))


@pytest.fixture(scope="session")
def exported_decoder(tmp_path_factory, random_vae):
    """Factory for cached decoder graphs of the random_vae folder: exported_decoder("fp16", 256, batch=None)."""
    from export.vae_export import export_decoder

    @functools.cache
    def export(precision: str, image_size: int = 256, batch=None):
        out = tmp_path_factory.mktemp(f"decoder-{precision}-{image_size}")
        return export_decoder(random_vae, image_size, precision=precision, batch=batch, out=out, engine="skip")

    return export


@pytest.fixture(scope="session")
def fashion_graph(tmp_path_factory):
    """The shipped Fashion-MNIST DiT (real weights, 28 px, 10 classes) as an FP32 graph, exported once."""
    from export import export

    return export("fashion", ckpt="auto", precision="fp32", out=tmp_path_factory.mktemp("fashion-fp32"),
                  engine="skip", check=False).graph


@pytest.fixture(scope="session")
def fashion_cached_graph(tmp_path_factory):
    """The shipped Fashion-MNIST DiT as an FP32 graph with its cached-steps refresh and reuse graphs beside it."""
    from export import export

    return export("fashion", ckpt="auto", precision="fp32", out=tmp_path_factory.mktemp("fashion-cached"),
                  engine="skip", check=False, cached_steps=True).graph
