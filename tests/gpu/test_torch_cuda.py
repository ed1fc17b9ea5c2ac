"""The torch CUDA paths, which need no TensorRT: float16/bfloat16 against float32, torch.compile against eager,
CUDA graphs (torch.compile's reduce-overhead mode) with guided rows and cached steps, seeded noise on CUDA, and a
sampling run on CUDA batched as on its own (what gpu-check --no-install runs).

Marked gpu: they skip (with the reason) without a CUDA device and fail with it under DIT_REQUIRE_GPU=1.
Not run where this was written (no GPU there). Each measured error is printed and recorded as a test
property for gpu-check's report.
"""

import pytest
import torch

from dit_ref.contract import BatchRange
from export.guided import example_inputs
from runtime.backends.torch_backend import TorchDenoiser
from runtime.generate import generate
from runtime.sampling import sampler_from_name
from runtime.sampling.noise import OfficialNoise, PerSampleNoise
from testing_utils import max_rel_error, random_model

pytestmark = [pytest.mark.gpu, pytest.mark.slow]

MODEL, IMAGE_SIZE = "S/2", 256
# max |error| / max |reference| against float32 on the same GPU (TF32 off): the limits the FP16 graph meets
# on CPU (1e-2) and the BF16 bound of export's check (3e-2).
TOLERANCE = {"float16": 1e-2, "bfloat16": 3e-2}


@pytest.fixture(scope="module")
def cuda_reference():
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    model = random_model(MODEL, IMAGE_SIZE)
    return lambda dtype="float32", compile=False: TorchDenoiser(
        _copy(model), "cuda", dtype, 3, "random init (seed 0)", True, compile)


def _copy(model):
    import copy

    return copy.deepcopy(model)


def _inputs(batch: int = 4):
    return [tensor.cuda() for tensor in example_inputs(random_model(MODEL, IMAGE_SIZE), batch, seed=3)]


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precisions_against_float32(cuda_reference, dtype, record_property):
    inputs = _inputs()
    expected = cuda_reference()(*inputs)
    got = cuda_reference(dtype)(*inputs)
    errors = [max_rel_error(a.cpu(), b.cpu()) for a, b in zip(got, expected)]
    print(f"torch-cuda {dtype} vs float32, {MODEL}: eps {errors[0]:.2e}, var_values {errors[1]:.2e}")
    record_property(f"{dtype}_vs_float32", max(errors))
    assert all(a.dtype == torch.float32 and torch.isfinite(a).all() for a in got)
    assert max(errors) < TOLERANCE[dtype]


def test_torch_compile_matches_eager(cuda_reference, record_property):
    inputs = _inputs()
    eager = cuda_reference()(*inputs)
    compiled = cuda_reference(compile=True)(*inputs)
    error = max(max_rel_error(a.cpu(), b.cpu()) for a, b in zip(compiled, eager))
    print(f"torch.compile vs eager on CUDA, float32: {error:.2e}")
    record_property("compile_vs_eager", error)
    assert error < 1e-4


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_cuda_graphs_with_guided_rows_against_float32(cuda_reference, dtype, record_property):
    """reduce-overhead replays one CUDA graph per input shape: every row guided, then rows 0 and 2 of 4; each
    call's outputs are its own (copied out of the graph before the next replay overwrites it)."""
    expected, graphs = cuda_reference(), cuda_reference(dtype, compile="reduce-overhead")
    assert graphs.name == f"torch.compile reduce-overhead {dtype}"
    x, t, y, cfg_scale = _inputs()
    some = cfg_scale.clone()
    some[[1, 3]] = 1.0  # U = 2: a second shape, a second graph
    errors = []
    for scales in (cfg_scale, some, cfg_scale, some):  # the second round replays the recorded graphs
        got = graphs(x, t, y, scales)
        kept = [output.clone() for output in got]
        graphs(x + 1, t, y, scales)  # the next replay must leave `got` alone
        errors += [max_rel_error(a.cpu(), b.cpu()) for a, b in zip(got, expected(x, t, y, scales))]
        assert all(torch.equal(a, b) for a, b in zip(got, kept))
    print(f"CUDA graphs (reduce-overhead) {dtype} vs eager float32, guided rows, {MODEL}: {max(errors):.2e}")
    record_property(f"cuda_graphs_{dtype}_vs_float32", max(errors))
    assert max(errors) < TOLERANCE[dtype]


def test_cached_steps_under_cuda_graphs_against_eager(cuda_reference, record_property):
    eager, graphs = cuda_reference(), cuda_reference("float16", compile="reduce-overhead")
    x, t, y, cfg_scale = _inputs()
    inputs = {"x": x, "t": t, "y": y, "cfg_scale": cfg_scale, "guided": torch.tensor([0, 2], device="cuda")}
    (refresh, reuse), (eager_refresh, eager_reuse) = graphs.cached_forms(), eager.cached_forms()
    expected = eager_refresh(inputs)
    errors = [max_rel_error(value.cpu(), expected[name].cpu()) for name, value in refresh(inputs).items()]
    features = {name: expected[name] for name in ("features", "null_features")}
    errors += [max_rel_error(a.cpu(), b.cpu()) for a, b in zip(reuse({**inputs, **features}).values(),
                                                               eager_reuse({**inputs, **features}).values())]
    print(f"cached steps under CUDA graphs, float16 vs eager float32, {MODEL}: {max(errors):.2e}")
    record_property("cached_steps_cuda_graphs_vs_float32", max(errors))
    assert max(errors) < TOLERANCE["float16"]


def test_noise_on_cuda_is_seeded_and_per_sample_noise_ignores_the_batch():
    first, again = OfficialNoise(7, "cuda").initial(3, (4, 8, 8)), OfficialNoise(7, "cuda").initial(3, (4, 8, 8))
    assert first.device.type == "cuda" and torch.equal(first, again)
    together = PerSampleNoise(5, [0, 1, 2], "cuda").initial(3, (4, 8, 8))
    alone = PerSampleNoise(5, [2], "cuda").initial(1, (4, 8, 8))
    assert torch.equal(together[2:], alone)


def test_per_sample_run_on_cuda_is_independent_of_the_batch(cuda_reference, record_property):
    denoiser = cuda_reference()
    denoiser.batch_range = BatchRange(1, 8, 32)
    sampler = sampler_from_name("ddim", 4)
    (batch,) = generate(denoiser, [1, 2, 3], sampler, seed=9, seeding="per-sample", batch_size=3)
    (alone,) = generate(denoiser, [3], sampler, seed=9, seeding="per-sample", first_index=2)
    error = max_rel_error(torch.from_numpy(batch.samples[2:]), torch.from_numpy(alone.samples))
    print(f"per-sample seeding on CUDA, sample 2 in a batch of 3 vs alone: {error:.2e}")
    record_property("per_sample_batch_error", error)
    assert error < 1e-5
