"""Guidance only where it pays: the graph's `guided` input (the transformer over B + U rows), cfg-1 rows never
doubled, the guidance interval's edges, and graphs of the older formats still running with every row guided."""

import json

import pytest
import torch
from torch import nn

from dit_ref.contract import INPUT_NAMES
from export.guided import example_inputs
from export.verify import check_runner, run_graph
from runtime.backends import load_denoiser
from runtime.generate import generate
from runtime_helpers import Wrapped
from runtime.sampling import CallOptions, sampler_from_name, step
from runtime.sampling.noise import OfficialNoise
from runtime.sampling.core import guided_at
from testing_utils import max_rel_error

FP32_LIMIT = 1e-4  # of the output scale, as every FP32 parity test
GRAPH_BACKENDS = ["onnxruntime", "openvino"]


@pytest.fixture(scope="module")
def s8(tiny_model):
    return tiny_model("S/8", 256, 0)


def graph_outputs(session, inputs, guided):
    rows = torch.tensor(guided, dtype=torch.int64)
    return torch.cat(run_graph(session, *inputs, rows), dim=1)


def test_every_row_guided_is_the_official_guided_forward(graphs, s8):
    x, t, y, cfg_scale = inputs = example_inputs(s8, 8, seed=3)
    official = s8.forward_with_cfg(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, torch.full_like(y, 1000)]),
                                   cfg_scale.reshape(-1, 1, 1, 1), 3)[:8]
    got = graph_outputs(check_runner(graphs["fp32"]), inputs, list(range(8)))
    error = max_rel_error(got, official)
    print(f"graph, every row guided, vs sample.py's forward_with_cfg: {error:.2e}")
    assert error < FP32_LIMIT


@pytest.mark.parametrize("guided", [[], [0, 5], [1, 3, 4, 6, 7], list(range(8))], ids=lambda g: f"U={len(g)}")
def test_each_row_is_its_guided_or_its_conditional_output(graphs, s8, guided):
    inputs = example_inputs(s8, 8, seed=4)
    got = graph_outputs(check_runner(graphs["fp32"]), inputs, guided)
    with torch.no_grad():
        all_guided = torch.cat(s8.guided_forward(*inputs, 3), dim=1)
        conditional = s8(*inputs[:3])
    expected = torch.stack([all_guided[row] if row in guided else conditional[row] for row in range(8)])
    errors = [max_rel_error(got[row], expected[row]) for row in range(8)]
    print(f"U={len(guided)}: per-row errors against the reference {max(errors):.2e}")
    assert max(errors) < FP32_LIMIT


class LegacyGuided(nn.Module):
    """A graph of manifest formats 2 and 3: no `guided` input, every row doubled (the old guided forward)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x, t, y, cfg_scale):
        null = torch.full_like(y, self.model.config.null_class)
        out = self.model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null]))  # (2B, 8, L, L)
        cond, uncond = out.unflatten(0, (2, -1)).unbind(0)
        scale = cfg_scale.reshape(-1, 1, 1, 1)
        eps = torch.cat([uncond[:, :3] + scale * (cond[:, :3] - uncond[:, :3]), cond[:, 3:4]], dim=1)
        return eps, cond[:, 4:]


@pytest.fixture(scope="module")
def legacy_graph(graphs, s8, tmp_path_factory):
    """The same weights as a format 3 graph (no `guided`), with the graph's manifest marked format 3."""
    folder = tmp_path_factory.mktemp("legacy")
    path = folder / graphs["fp32"].name
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.onnx.export(LegacyGuided(s8).eval(), example_inputs(s8, 2), dynamo=True, opset_version=18,
                                input_names=list(INPUT_NAMES), output_names=["eps", "var_values"],
                                dynamic_shapes={name: {0: batch} for name in INPUT_NAMES})
    program.save(path)
    manifest = json.loads(graphs["fp32"].with_suffix(".json").read_text())
    manifest.update(format="dit-deploy-manifest/3")
    manifest.pop("guided_rows")
    path.with_suffix(".json").write_text(json.dumps(manifest))
    return path


@pytest.mark.parametrize("backend", GRAPH_BACKENDS)
def test_an_older_graph_keeps_running_with_every_row_guided(graphs, legacy_graph, s8, backend):
    x, t, y, _ = example_inputs(s8, 4, seed=6)
    scales = torch.tensor([4.0, 1.5, 2.0, 3.0])
    with load_denoiser(legacy_graph, backend, threads=1) as old, load_denoiser(graphs["fp32"], backend, threads=1) as new:
        old_out = old(x, t, y, torch.tensor([4.0, 1.0, 2.0, 1.0]))  # cfg-1 rows too: an old graph doubles them
        assert old.manifest.guided_rows is False and old.transformer_rows == 8  # every row doubled
        old_out, new_out = old(x, t, y, scales), new(x, t, y, scales)  # every row guided in both
        assert new.transformer_rows == 8
        bitwise = all(torch.equal(a, b) for a, b in zip(old_out, new_out))
        error = max(max_rel_error(a, b) for a, b in zip(old_out, new_out))
    print(f"{backend}: format 3 graph vs format 4 graph, every row guided: {error:.2e}, bitwise {bitwise}")
    assert error < 1e-5


@pytest.mark.parametrize("backend", ["torch", *GRAPH_BACKENDS])
def test_cfg_one_is_never_doubled(graphs, reference, backend):
    denoiser = reference if backend == "torch" else load_denoiser(graphs["fp32"], backend, threads=1)
    denoiser.transformer_rows = 0
    (batch,) = generate(denoiser, [1, 2, 3], sampler_from_name("ddim", 4), cfg_scale=1.0, seed=0)
    print(f"{denoiser.name}: cfg 1, 3 images x 4 calls -> {denoiser.transformer_rows} transformer rows")
    assert denoiser.transformer_rows == 3 * 4
    denoiser.transformer_rows = 0
    (batch,) = generate(denoiser, [1, 2, 3], sampler_from_name("ddim", 4), cfg_scale=4.0, seed=0)
    assert denoiser.transformer_rows == 2 * 3 * 4


class RecordingDenoiser(Wrapped):
    """Records each call's (t, cfg scales) and runs the reference."""

    def __init__(self, inner):
        super().__init__(inner)
        self.calls = []

    def __call__(self, x, t, y, cfg_scale):
        self.calls.append((int(t[0]), cfg_scale.tolist()))
        return self.inner(x, t, y, cfg_scale)


def test_the_interval_guides_its_edges_and_nothing_outside(reference):
    sampler = sampler_from_name("ddpm", 250)
    low, high = 80, 468  # inclusive ends: 80 is one of the 250 steps, 468 falls between two of them
    inside = [t for t in sampler.timesteps if low <= t <= high]
    above, below = min(t for t in sampler.timesteps if t > high), max(t for t in sampler.timesteps if t < low)
    recorder = RecordingDenoiser(reference)
    noise = OfficialNoise(0)
    trajectory = sampler.begin(noise.initial(2, (4, 32, 32)), torch.tensor([1, 2]), torch.tensor([4.0, 1.5]), noise,
                               options=CallOptions(guidance_interval=(low, high)))
    while not trajectory.done:
        step(recorder, [trajectory])
    guided = [t for t, scales in recorder.calls if scales == [4.0, 1.5]]
    unguided = [t for t, scales in recorder.calls if scales == [1.0, 1.0]]
    print(f"guided at {len(guided)} of {len(recorder.calls)} calls: t {max(guided)}..{min(guided)}")
    assert len(guided) + len(unguided) == 250 and guided == inside and low in guided
    assert max(guided) == max(inside) and above in unguided and below in unguided
    assert guided_at(high, (low, high)) and guided_at(low, (low, high)) and not guided_at(high + 1, (low, high))


def test_an_interval_run_equals_per_row_guidance_of_the_same_steps(graphs):
    """generate() with an interval through the graph: the same latents as the reference run with the same rule."""
    from runtime.backends.torch_backend import TorchDenoiser
    from testing_utils import random_model

    reference = TorchDenoiser(random_model("S/8", 256, 0), device="cpu", cfg_channels=3)
    with load_denoiser(graphs["fp32"], "onnxruntime", threads=1) as denoiser:
        runs = [next(generate(d, [5, 6], sampler_from_name("ddim", 10), seed=2, guidance_interval="300:700")).samples
                for d in (denoiser, reference)]
        rows = denoiser.transformer_rows
    error = max_rel_error(*runs)
    print(f"DDIM 10 with interval 300:700, graph vs torch: {error:.2e}; {rows} transformer rows for 2 x 10 calls")
    assert error < FP32_LIMIT and rows == 2 * 10 + 2 * 5  # guided at t 700, 600, 500, 400, 300: 5 of 10 calls
