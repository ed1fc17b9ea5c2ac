"""Backends: selection, manifest checks, broken files, and ONNX Runtime against the PyTorch reference."""

import json
import shutil

import onnx
import pytest
import torch
from onnx import TensorProto, helper
from runtime_helpers import graph_copy

from dit_ref.contract import read_manifest
from dit_ref.diffusion import schedule_from_spec
from dit_ref.errors import DiTError
from runtime.backends import backend_for, load_denoiser
from runtime.generate import generate
from runtime.sampling import sampler_from_name
from runtime.sampling.noise import OfficialNoise
from runtime.sampling.official import sample_ddpm
from testing_utils import max_rel_error

L = 32


def guided_inputs(batch: int = 4, seed: int = 1):
    """Varied x, t, y, cfg_scale for one guided call."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, L, L, generator=generator)
    t = torch.tensor([0, 250, 500, 999, 17, 733][:batch])
    y = torch.tensor([1, 207, 500, 999, 0, 88][:batch])
    cfg_scale = torch.tensor([1.0, 1.5, 4.0, 7.5, 0.0, 2.0][:batch])
    return x, t, y, cfg_scale


@pytest.mark.parametrize("path, backend, expected", [
    ("DiT-S-2-256-fp16.plan", "auto", "tensorrt"), (None, "auto", "torch"), (None, "torch", "torch"),
    ("g.onnx", "onnxruntime", "onnxruntime"), ("g.onnx", "openvino", "openvino"), ("g.engine", "tensorrt", "tensorrt"),
])
def test_backend_from_suffix_or_name(path, backend, expected):
    assert backend_for(path, backend) == expected


@pytest.mark.parametrize("cuda, openvino, precision, expected", [
    (True, True, "fp16", "onnxruntime"), (False, True, "fp32", "openvino"), (False, True, "fp16", "openvino"),
    (False, True, "bf16", "openvino"), (False, True, "int8", "openvino"), (False, True, "fp8", "onnxruntime"),
    (False, False, "fp16", "onnxruntime"),
])
def test_auto_picks_a_graphs_backend_by_machine_and_precision(monkeypatch, cuda, openvino, precision, expected):
    import dit_ref.runners.choice as choice
    import runtime.backends as registry

    monkeypatch.setattr(choice, "onnxruntime_cuda_here", lambda: cuda)
    monkeypatch.setattr(choice, "openvino_here", lambda: openvino)
    monkeypatch.setattr(registry, "graph_precision", lambda path: precision)
    chosen, why = registry.auto_backend("g.onnx")
    print(f"cuda {cuda}, openvino {openvino}, {precision}: {chosen} ({why})")
    assert chosen == expected and choice.CPU_CHOICE["denoiser", precision] in ("openvino", "onnxruntime")


def test_auto_refuses_a_bf16_graph_without_openvino(monkeypatch):
    import dit_ref.runners.choice as choice
    import runtime.backends as registry

    monkeypatch.setattr(choice, "onnxruntime_cuda_here", lambda: False)
    monkeypatch.setattr(choice, "openvino_here", lambda: False)
    monkeypatch.setattr(registry, "graph_precision", lambda path: "bf16")
    with pytest.raises(DiTError, match="g.onnx is a bf16 denoiser, which runs on a CPU in OpenVINO only: pip install"):
        registry.auto_backend("g.onnx")


@pytest.mark.parametrize("path, backend, words", [
    ("model.pt", "auto", "neither"), ("g.plan", "onnxruntime", "cannot run"), ("g.onnx", "torch", "checkpoint"),
    (None, "tensorrt", "needs an engine"), ("g.onnx", "openvino-gpu", "unknown backend"),
])
def test_backend_selection_errors(path, backend, words):
    with pytest.raises(DiTError, match=words):
        backend_for(path, backend)


GRAPH_BACKENDS = ["onnxruntime", "openvino"]  # the backends that run the .onnx itself, through the same tests


@pytest.mark.parametrize("backend", GRAPH_BACKENDS)
@pytest.mark.parametrize("precision, tolerance", [("fp32", 1e-4), ("fp16", 1e-2)])
def test_graph_backends_match_torch(graphs, reference, backend, precision, tolerance):
    denoiser = load_denoiser(graphs[precision], backend, threads=1)
    inputs = guided_inputs()
    ours, expected = denoiser(*inputs), reference(*inputs)
    errors = [max_rel_error(a, b) for a, b in zip(ours, expected)]
    print(f"{denoiser.name} vs torch: eps {errors[0]:.2e}, var_values {errors[1]:.2e} (of output scale)")
    assert denoiser.manifest.precision == precision and ours[0].dtype == torch.float32
    assert max(errors) < tolerance


@pytest.mark.parametrize("backend", GRAPH_BACKENDS)
@pytest.mark.parametrize("precision, tolerance", [("fp32", 1e-4), ("fp16", 5e-2)])
def test_ten_ddpm_steps_agree_with_torch(graphs, reference, backend, precision, tolerance):
    denoiser = load_denoiser(graphs[precision], backend, threads=1)
    y, scale, schedule = torch.tensor([207, 88]), torch.full((2,), 4.0), schedule_from_spec(10)
    latents = []
    for backend in (denoiser, reference):
        noise = OfficialNoise(5)
        latents.append(sample_ddpm(backend, noise.initial(2, (4, L, L)), schedule, y, scale, noise))
    error = max_rel_error(*latents)
    print(f"10 DDPM steps, {denoiser.name} vs torch: max abs err / max |latents| = {error:.2e}")
    assert error < tolerance


def test_torch_backend_from_load_denoiser(reference):
    # load_dit's random init with seed 0 is the fixture's model (randomize_weights_ seed 0).
    denoiser = load_denoiser(backend="torch", model="S/8", image_size=256, random_init=0, device="cpu")
    inputs = guided_inputs()
    assert denoiser.random_weights and denoiser.manifest is None and denoiser.name == "torch-cpu float32"
    assert all(torch.equal(a, b) for a, b in zip(denoiser(*inputs), reference(*inputs)))
    half = load_denoiser(backend="torch", model="S/8", image_size=256, random_init=0, device="cpu", dtype="float16")
    error = max_rel_error(half(*inputs)[0], reference(*inputs)[0])
    print(f"torch float16 on CPU vs float32: eps {error:.2e}")
    assert half.name == "torch-cpu float16" and error < 1e-2


def test_graph_for_512_refuses_a_256_request(graphs, tmp_path):
    link = graph_copy(graphs["fp32"], tmp_path, image_size=512, latent_size=64)
    with pytest.raises(DiTError) as caught:
        load_denoiser(link, image_size=256)
    print(caught.value)
    assert "512" in str(caught.value) and "256" in str(caught.value)


@pytest.mark.parametrize("request_args, words", [
    ({"model": "XL/2"}, "holds DiT-S/8, not DiT-XL/2"), ({"cfg_channels": 4}, "guides 3 channels"),
    ({"ckpt": "x.pt"}, "for the torch backend"),
])
def test_manifest_mismatches_are_refused(graphs, tmp_path, request_args, words):
    link = graph_copy(graphs["fp32"], tmp_path, batch={"min": 1, "opt": 4, "max": 8})
    with pytest.raises(DiTError, match=words) as caught:
        load_denoiser(link, **request_args)
    print(caught.value)


def test_a_batch_outside_the_range_is_refused_by_the_plan(graphs, tmp_path):
    # The one batch-range check: the request plan's, against the manifest (before loading) or the denoiser.
    from runtime.plan import ModelFacts, make_plan

    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    link = graph_copy(graphs["fp32"], tmp_path / "a", batch={"min": 1, "opt": 4, "max": 8})
    with pytest.raises(DiTError, match="outside the range 1..8"):
        make_plan([1] * 9, batch_size=9).check(ModelFacts.from_manifest(read_manifest(link)))
    denoiser = load_denoiser(graph_copy(graphs["fp32"], tmp_path / "b", batch={"min": 2, "opt": 2, "max": 3}),
                             threads=1)
    with pytest.raises(DiTError, match=r"batch of 4 is outside the range 2..3"):
        next(generate(denoiser, [1] * 4, sampler_from_name("ddim", 1), batch_size=4))


@pytest.mark.parametrize("backend", GRAPH_BACKENDS)
@pytest.mark.parametrize("content", [b"not a graph at all", "truncated"])
def test_corrupt_graph_is_one_line(graphs, tmp_path, backend, content):
    broken = tmp_path / graphs["fp32"].name
    broken.write_bytes(graphs["fp32"].read_bytes()[:200_000] if content == "truncated" else content)
    shutil.copy(graphs["fp32"].with_suffix(".json"), broken.with_suffix(".json"))
    with pytest.raises(DiTError) as caught:
        load_denoiser(broken, backend)
    print(caught.value)
    assert "cannot load the ONNX graph" in str(caught.value) and "\n" not in str(caught.value)


def test_missing_manifest_names_it(graphs, tmp_path):
    lonely = tmp_path / graphs["fp32"].name
    lonely.symlink_to(graphs["fp32"])
    with pytest.raises(DiTError) as caught:
        load_denoiser(lonely)
    print(caught.value)
    assert str(lonely.with_suffix(".json")) in str(caught.value) and "dit-export" in str(caught.value)


@pytest.mark.parametrize("backend", GRAPH_BACKENDS)
def test_graph_without_the_guided_contract_is_refused(graphs, tmp_path, backend):
    node = helper.make_node("Identity", ["input"], ["output"])
    value = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1])
    model = helper.make_model(helper.make_graph([node], "g", [value], [helper.make_tensor_value_info(
        "output", TensorProto.FLOAT, [1])]), opset_imports=[helper.make_opsetid("", 18)])
    path = tmp_path / "other.onnx"
    onnx.save(model, path)
    manifest = json.loads(graphs["fp32"].with_suffix(".json").read_text())
    path.with_suffix(".json").write_text(json.dumps(manifest))
    with pytest.raises(DiTError, match="is not a guided DiT graph"):
        load_denoiser(path, backend)


def test_engine_without_tensorrt_points_to_the_graph(graphs, tmp_path):
    plan = tmp_path / graphs["fp16"].with_suffix(".plan").name
    plan.write_bytes(b"engine bytes")
    shutil.copy(graphs["fp16"].with_suffix(".json"), plan.with_suffix(".json"))
    with pytest.raises(DiTError) as caught:
        load_denoiser(plan)
    print(caught.value)
    message = str(caught.value)
    assert "gpu" in message and plan.with_suffix(".onnx").name in message


def test_missing_file(tmp_path):
    with pytest.raises(DiTError, match="not found"):
        load_denoiser(tmp_path / "nothing.onnx")
    with pytest.raises(DiTError, match="nothing to run"):
        load_denoiser()


@pytest.mark.gpu
@pytest.mark.onnxruntime_cuda
def test_onnxruntime_cuda_io_binding(graphs, reference, record_property):
    denoiser = load_denoiser(graphs["fp32"], device="cuda")
    assert denoiser.runner.session.get_providers()[0] == "CUDAExecutionProvider"
    eps, var_values = denoiser(*(value.cuda() for value in guided_inputs()))
    expected = reference(*guided_inputs())
    errors = [max_rel_error(a.cpu(), b) for a, b in zip((eps, var_values), expected)]
    print(f"{denoiser.name} (I/O binding) vs torch CPU: eps {errors[0]:.2e}, var_values {errors[1]:.2e}")
    record_property("error_vs_torch", max(errors))  # scripts/gpu-check.sh's report reads it
    assert eps.device.type == "cuda" and max(errors) < 2e-3  # the CUDA provider may use TF32 matmuls
    noise = OfficialNoise(0, "cuda")
    x = sample_ddpm(denoiser, noise.initial(2, (4, L, L)), schedule_from_spec(3), torch.tensor([1, 2], device="cuda"),
                    torch.full((2,), 4.0, device="cuda"), noise)
    assert x.device.type == "cuda" and torch.isfinite(x).all()


def test_engine_batch_range_is_the_manifests_one_range(graphs):
    # One batch range per manifest: an engine rebuilt with --batch 1:2:4 rewrites it (export.engine).
    from dit_ref.contract import BatchRange, read_manifest
    from runtime.plan import ModelFacts, make_plan

    manifest = read_manifest(graphs["fp16"])
    plan = make_plan([1] * 8, batch_size=8)
    plan.check(ModelFacts.from_manifest(manifest))  # the graph's range takes 8
    rebuilt = manifest.replace(batch=BatchRange(1, 2, 4))
    with pytest.raises(DiTError, match=r"batch of 8 is outside the range 1..4"):
        plan.check(ModelFacts.from_manifest(rebuilt))  # the rebuilt engine's does not


def test_dit_run_batches_fit_an_engine_rebuilt_with_a_smaller_range():
    from dit_ref.contract import BatchRange
    from runtime.plan import make_plan

    engine, graph = BatchRange(1, 2, 4), BatchRange(1, 8, 32)  # a rebuilt engine's range, the graph's
    plan = make_plan([1] * 10)
    assert plan.choose_batch_size(10, engine) == 4 and plan.choose_batch_size(10, graph) == 10


@pytest.mark.parametrize("backend", GRAPH_BACKENDS)
def test_graph_backends_cast_inputs_to_the_graph_contract(graphs, backend):
    denoiser = load_denoiser(graphs["fp32"], backend, threads=1)
    x, t, y, cfg_scale = guided_inputs(3)
    expected = denoiser(x, t, y, cfg_scale)
    got = denoiser(x.double(), t.int(), y.int(), cfg_scale.half())  # cfg values are exact in float16
    for a, b in zip(got, expected):
        assert a.dtype == torch.float32 and torch.equal(a, b)
