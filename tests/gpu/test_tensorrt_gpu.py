"""TensorRT engines on a GPU: S/2 at 256 from the FP32 and FP16 graphs, against ONNX Runtime and torch.

Marked gpu and trt, so they skip (with the reason) where either is missing; written to run as-is on a
CUDA machine with the gpu extra installed (see README). Not run where this was written: no GPU there.
"""

import functools
import shutil

import numpy as np
import pytest
import torch

from testing_utils import max_rel_error, random_model
from dit_ref.errors import DiTError
from export.engine import build_engine
from export.guided import example_inputs
from export.manifest import manifest_path_for, read_manifest
from runtime.backends.tensorrt_backend import TensorRTDenoiser

pytestmark = [pytest.mark.gpu, pytest.mark.trt, pytest.mark.slow]

MODEL, IMAGE_SIZE, LATENT_SIZE = "S/2", 256, 32
BATCH = {"min": 1, "opt": 4, "max": 8}
# max |error| / max |reference| (issue 4). FP32 builds clear TF32, so the engine computes in float32.
TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2}


@pytest.fixture(scope="module")
def engine_for(exported_graph, tmp_path_factory):
    """precision -> (graph, plan): the session's graph copied to its own directory, its engine built there."""

    @functools.cache
    def build(precision: str):
        graph = exported_graph(MODEL, IMAGE_SIZE, precision)
        directory = tmp_path_factory.mktemp(f"engine-{precision}")
        external = read_manifest(graph)["graph"].get("external_data")
        for path in [graph, manifest_path_for(graph)] + ([graph.parent / external] if external else []):
            shutil.copy(path, directory)
        return directory / graph.name, build_engine(directory / graph.name, BATCH)

    return build


def _cuda(*tensors):
    return [tensor.cuda() for tensor in tensors]


def _onnxruntime(graph, x, t, y, cfg_scale) -> torch.Tensor:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    feeds = {"x": x.numpy(), "t": t.numpy(), "y": y.numpy(), "cfg_scale": cfg_scale.numpy()}
    return torch.from_numpy(np.concatenate(session.run(["eps", "var_values"], feeds), axis=1))


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_build_writes_plan_and_manifest_engine_section(engine_for, precision):
    import tensorrt as trt

    graph, plan = engine_for(precision)
    assert plan == graph.with_suffix(".plan") and plan.stat().st_size > 0
    engine = read_manifest(graph)["engine"]
    print(engine)
    assert engine["file"] == plan.name and engine["tensorrt"] == trt.__version__
    assert engine["compute_capability"] == "{}.{}".format(*torch.cuda.get_device_capability())
    assert engine["batch"] == BATCH and engine["optimization_level"] == 3 and engine["build_seconds"] > 0
    assert len(list(plan.parent.glob("timing-*.cache"))) == 1


@pytest.mark.parametrize("batch", [1, 3, 8])
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_engine_matches_reference_and_onnxruntime(engine_for, precision, batch):
    graph, plan = engine_for(precision)
    x, t, y, cfg_scale = example_inputs(LATENT_SIZE, batch, seed=batch)
    eps, var_values = TensorRTDenoiser(plan, None, "cuda")(*_cuda(x, t, y, cfg_scale))
    assert eps.device.type == "cuda" and eps.dtype == torch.float32 and eps.shape == x.shape
    engine_out = torch.cat([eps, var_values], 1).cpu()
    with torch.no_grad():
        reference = torch.cat(random_model(MODEL, IMAGE_SIZE).guided_forward(x, t, y, cfg_scale, 3), 1)
    error_reference = max_rel_error(engine_out, reference)
    error_onnxruntime = max_rel_error(engine_out, _onnxruntime(graph, x, t, y, cfg_scale))
    print(f"{precision} batch {batch}: vs torch {error_reference:.2e}, vs onnxruntime {error_onnxruntime:.2e}")
    assert torch.isfinite(engine_out).all()
    assert error_reference <= TOLERANCE[precision] and error_onnxruntime <= TOLERANCE[precision]


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_cuda_graph_replay_equals_eager_bitwise(engine_for, precision):
    _, plan = engine_for(precision)
    eager = TensorRTDenoiser(plan, None, "cuda")
    graphed = TensorRTDenoiser(plan, None, "cuda", cuda_graphs=True)
    kept = None
    for step, batch in enumerate([3, 8, 3, 3]):  # revisits batch 3: replays with new inputs
        inputs = _cuda(*example_inputs(LATENT_SIZE, batch, seed=100 + step))
        expected, replayed = eager(*inputs), graphed(*inputs)
        difference = max((a - b).abs().max().item() for a, b in zip(expected, replayed))
        print(f"{precision} step {step} batch {batch}: max |eager - replay| = {difference}")
        assert all(torch.equal(a, b) for a, b in zip(expected, replayed))
        if kept is not None:  # outputs handed out earlier are copies, not the graph's persistent buffers
            assert all(torch.equal(a, b) for a, b in zip(*kept))
        kept = (replayed, [tensor.clone() for tensor in replayed])
    assert sorted(graphed._captured) == [3, 8]
    assert all(entry.graph is not None for entry in graphed._captured.values())  # captured, not the fallback


def test_manifest_claiming_another_tensorrt_is_refused(engine_for):
    import tensorrt as trt

    graph, plan = engine_for("fp16")
    manifest = read_manifest(plan)
    manifest["engine"]["tensorrt"] = "9.3.0.1"
    with pytest.raises(DiTError) as caught:
        TensorRTDenoiser(plan, manifest, "cuda")
    print(caught.value)
    assert "9.3.0.1" in str(caught.value) and trt.__version__ in str(caught.value)
    assert f"dit-export build {graph.name}" in str(caught.value)


def test_manifest_claiming_another_gpu_is_refused(engine_for):
    _, plan = engine_for("fp16")
    manifest = read_manifest(plan)
    manifest["engine"]["compute_capability"] = "5.2"
    with pytest.raises(DiTError, match="compute capability 5.2"):
        TensorRTDenoiser(plan, manifest, "cuda")


def test_batch_outside_the_profile_is_refused(engine_for):
    _, plan = engine_for("fp16")
    inputs = _cuda(*example_inputs(LATENT_SIZE, BATCH["max"] + 1, seed=0))
    with pytest.raises(DiTError, match="outside the engine's range 1..8"):
        TensorRTDenoiser(plan, None, "cuda")(*inputs)
