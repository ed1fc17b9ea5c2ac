"""TensorRT engines on a GPU: S/2 at 256 from the FP32 and FP16 graphs, against ONNX Runtime and torch.

Marked gpu and trt, so they skip (with the reason) where either is missing, and fail with it under
DIT_REQUIRE_GPU=1; written to run as-is on a CUDA machine with a GPU flavour installed (see README,
scripts/gpu-check.sh). Not run where this was written: no GPU there. Each measured error is printed
and recorded as a test property, which scripts/gpu-check.sh's report collects.
"""

import dataclasses
import functools
import shutil

import pytest
import torch

from testing_utils import capture_keys, engine_case_inputs, max_rel_error, onnxruntime_outputs, reference_outputs
from dit_ref.contract import BatchRange, manifest_path_for, read_manifest
from dit_ref.errors import DiTError
from export.engine import build_engine
from runtime.backends import load_denoiser

pytestmark = [pytest.mark.gpu, pytest.mark.trt, pytest.mark.slow]

MODEL, IMAGE_SIZE = "S/2", 256
BATCH = BatchRange(1, 4, 8)
# max |error| / max |reference|. FP32 builds clear TF32, so the engine computes in float32.
# Both limits are to be measured on the first GPU run (scripts/gpu-check.sh reports the errors):
# FP32 1e-4 is a guess (other kernels, other summation orders than torch on CPU); FP16 1e-2 is the
# limit the FP16 graph meets in ONNX Runtime on CPU (README "Tests").
TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2}


@pytest.fixture(scope="module")
def engine_for(exported_graph, tmp_path_factory):
    """precision -> (graph, plan): the session's graph copied to its own directory, its engine built there."""

    @functools.cache
    def build(precision: str):
        graph = exported_graph(MODEL, IMAGE_SIZE, precision)
        directory = tmp_path_factory.mktemp(f"engine-{precision}")
        external = read_manifest(graph).graph.external_data
        for path in [graph, manifest_path_for(graph)] + ([graph.parent / external] if external else []):
            shutil.copy(path, directory)
        return directory / graph.name, build_engine(directory / graph.name, BATCH)

    return build


def _inputs(batch: int, seed: int):
    return engine_case_inputs(MODEL, IMAGE_SIZE, batch, seed)  # the CPU suite runs the same (test_tensorrt_backend.py)


def _cuda(*tensors):
    return [tensor.cuda() for tensor in tensors]


def engine_denoiser(plan, manifest=None, device="cuda", cuda_graphs=False):
    """The engine's denoiser as dit-run loads it, or, with a tampered manifest, the runner's refusal of it."""
    if manifest is None:
        return load_denoiser(plan, "tensorrt", device=device, cuda_graphs=cuda_graphs)
    from dit_ref.runners import open_runner

    return open_runner(plan, "tensorrt", device, manifest=manifest)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_build_writes_plan_and_manifest_engine_section(engine_for, precision, record_property):
    import tensorrt as trt

    graph, plan = engine_for(precision)
    assert plan == graph.with_suffix(".plan") and plan.stat().st_size > 0
    manifest = read_manifest(graph)
    engine = manifest.engine
    print(engine)
    record_property("build_seconds", engine.build_seconds)
    assert engine.file == plan.name and engine.tensorrt == trt.__version__
    assert engine.compute_capability == "{}.{}".format(*torch.cuda.get_device_capability())
    assert engine.gpu == torch.cuda.get_device_name()
    assert manifest.batch == BATCH and engine.optimization_level == 3 and engine.build_seconds > 0
    assert len(list(plan.parent.glob("timing-*.cache"))) == 1


@pytest.mark.parametrize("batch", [1, 3, 8])
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_engine_matches_reference_and_onnxruntime(engine_for, precision, batch, record_property):
    graph, plan = engine_for(precision)
    x, t, y, cfg_scale = _inputs(batch, seed=batch)
    eps, var_values = engine_denoiser(plan, None, "cuda")(*_cuda(x, t, y, cfg_scale))
    assert eps.device.type == "cuda" and eps.dtype == torch.float32 and eps.shape == x.shape
    engine_out = torch.cat([eps, var_values], 1).cpu()
    reference = reference_outputs(MODEL, IMAGE_SIZE, x, t, y, cfg_scale)
    error_reference = max_rel_error(engine_out, reference)
    error_onnxruntime = max_rel_error(engine_out, onnxruntime_outputs(graph, x, t, y, cfg_scale))
    print(f"{precision} batch {batch}: vs torch {error_reference:.2e}, vs onnxruntime {error_onnxruntime:.2e} "
          f"(limit {TOLERANCE[precision]:.0e})")
    record_property("error_vs_torch", error_reference)
    record_property("error_vs_onnxruntime", error_onnxruntime)
    record_property("limit", TOLERANCE[precision])
    assert torch.isfinite(engine_out).all()
    assert error_reference <= TOLERANCE[precision] and error_onnxruntime <= TOLERANCE[precision]


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_cuda_graph_replay_equals_eager_bitwise(engine_for, precision, record_property):
    # Bitwise: the eager context and each graph's context come from
    # one engine (same tactics), but a kernel with atomics would make them differ in the last bits.
    _, plan = engine_for(precision)
    eager = engine_denoiser(plan, None, "cuda")
    graphed = engine_denoiser(plan, None, "cuda", cuda_graphs=True)
    kept, largest, calls = None, 0.0, [_inputs(batch, seed=100 + step) for step, batch in enumerate([3, 8, 3, 3])]
    for step, batch in enumerate([3, 8, 3, 3]):  # revisits batch 3: replays with new inputs
        inputs = _cuda(*calls[step])
        expected, replayed = eager(*inputs), graphed(*inputs)
        difference = max((a - b).abs().max().item() for a, b in zip(expected, replayed))
        largest = max(largest, difference)
        print(f"{precision} step {step} batch {batch}: max |eager - replay| = {difference}")
        record_property(f"max_abs_difference_step{step}", difference)
        assert all(torch.equal(a, b) for a, b in zip(expected, replayed))
        if kept is not None:  # outputs handed out earlier are copies, not the graph's persistent buffers
            assert all(torch.equal(a, b) for a, b in zip(*kept))
        kept = (replayed, [tensor.clone() for tensor in replayed])
    record_property("max_abs_difference", largest)
    captured = graphed.runner._captured
    assert sorted(captured) == capture_keys(read_manifest(plan), calls)  # one per (B, U): (3, 2) and (8, 7)
    assert all(entry.graph is not None for entry in captured.values())  # captured, not the fallback


def test_replay_after_the_caller_switches_streams(engine_for):
    # One context (and one graph's I/O) used from two streams in turn: each call waits for the last.
    _, plan = engine_for("fp16")
    for cuda_graphs in (False, True):
        denoiser = engine_denoiser(plan, None, "cuda", cuda_graphs=cuda_graphs)
        inputs = _cuda(*_inputs(3, seed=7))
        expected = [tensor.clone() for tensor in denoiser(*inputs)]
        for _ in range(3):
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())  # the inputs were written on the default stream
            with torch.cuda.stream(side):
                first = denoiser(*inputs)
            second = denoiser(*inputs)  # back on the default stream, right after
            torch.cuda.synchronize()
            assert all(torch.equal(a, b) for a, b in zip(expected, first))
            assert all(torch.equal(a, b) for a, b in zip(expected, second))


def _tampered(plan, **engine_changes):
    manifest = read_manifest(plan)
    return manifest.replace(engine=dataclasses.replace(manifest.engine, **engine_changes))


def test_manifest_claiming_another_tensorrt_is_refused(engine_for):
    import tensorrt as trt

    graph, plan = engine_for("fp16")
    with pytest.raises(DiTError) as caught:
        engine_denoiser(plan, _tampered(plan, tensorrt="9.3.0.1"), "cuda")
    print(caught.value)
    assert "9.3.0.1" in str(caught.value) and trt.__version__ in str(caught.value)
    assert f"dit-export build {graph.name}" in str(caught.value)


def test_manifest_claiming_another_gpu_architecture_is_refused(engine_for):
    _, plan = engine_for("fp16")
    with pytest.raises(DiTError, match="compute capability 5.2"):
        engine_denoiser(plan, _tampered(plan, compute_capability="5.2"), "cuda")


def test_manifest_claiming_another_gpu_model_is_refused(engine_for):
    _, plan = engine_for("fp16")
    with pytest.raises(DiTError) as caught:
        engine_denoiser(plan, _tampered(plan, gpu="NVIDIA Some Other GPU"), "cuda")
    print(caught.value)
    assert "NVIDIA Some Other GPU" in str(caught.value) and torch.cuda.get_device_name() in str(caught.value)


def test_batch_outside_the_profile_is_refused(engine_for):
    _, plan = engine_for("fp16")
    inputs = _cuda(*_inputs(BATCH.max + 1, seed=0))
    with pytest.raises(DiTError, match="outside the engine's range 1..8"):
        engine_denoiser(plan, None, "cuda")(*inputs)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_decoder_engine_matches_diffusers_decode(exported_decoder, random_vae, tmp_path, precision, record_property):
    """The VAE decoder graph (dit-export --vae) built into an engine and run through runtime.vae's GraphDecoder."""
    from dit_ref.vae import SCALING_FACTOR, load_autoencoder
    from runtime.vae import load_decoder

    graph = exported_decoder(precision).graph
    for path in (graph, manifest_path_for(graph)):
        shutil.copy(path, tmp_path)
    plan = build_engine(tmp_path / graph.name, None)
    decoder = load_decoder(str(plan), "vae", 4, device="cuda", latent_size=32)
    latents = torch.randn(3, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = load_autoencoder(random_vae).model.decode(latents / SCALING_FACTOR).sample
    error = max_rel_error(decoder.images(latents), expected)
    print(f"{precision} decoder engine ({decoder.source}) vs diffusers' decode, batch 3: {error:.2e}")
    record_property("decoder_error_vs_diffusers", error)
    assert decoder.backend == "tensorrt-cuda" and error < TOLERANCE[precision]
