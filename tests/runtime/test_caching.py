"""Cached steps: the refresh and reuse graphs against the reference, each policy's refreshes against lists written
by hand, refresh-every-call equal to no cache, the memory a cache holds, the forecast's arithmetic,
and caching composed with guided rows (a guidance interval)."""

import numpy as np
import pytest
import torch

from dit_ref import block_features
from dit_ref.contract import read_manifest
from dit_ref.errors import DiTError
from export import export
from runtime.backends import load_denoiser
from runtime.caching import Newton, cache_bytes_per_image, cached_denoiser, parse_cache
from runtime.generate import generate
from runtime.sampling import sampler_from_name
from testing_utils import max_rel_error, random_model

GRAPH_BACKENDS = ["onnxruntime", "openvino"]
FP32_LIMIT = 1e-4


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """S/8 (random, seed 0) at 256 with its cached-steps graphs, FP32."""
    return export("S/8", 256, random_init=0, precision="fp32", out=tmp_path_factory.mktemp("cached"), engine="skip",
                  cached_steps=True)


def test_the_export_checks_both_graphs_and_names_them_in_the_manifest(pair):
    manifest = read_manifest(pair.graph)
    refresh, reuse = (read_manifest(pair.graph.parent / manifest.cached_steps[role]) for role in ("refresh", "reuse"))
    assert (refresh.role, reuse.role) == ("refresh", "reuse") and refresh.feature_shape == (12, 2, 16, 384)
    assert set(reuse.input_names) >= {"features", "null_features"} and "features" in refresh.output_names
    sizes = {role: (pair.graph.parent / manifest.cached_steps[role]).stat().st_size for role in ("refresh", "reuse")}
    print(f"graph sizes: guided {pair.graph.stat().st_size / 1e6:.1f} MB, refresh {sizes['refresh'] / 1e6:.1f} MB, "
          f"reuse {sizes['reuse'] / 1e6:.1f} MB")
    assert sizes["reuse"] < 0.4 * sizes["refresh"]  # it holds only the weights it uses: no attention, no MLP


@pytest.mark.parametrize("backend", GRAPH_BACKENDS)
def test_reuse_fed_this_steps_own_features_is_the_full_forward(pair, backend):
    model = random_model("S/8", 256, 0)
    manifest = read_manifest(pair.graph)
    refresh, reuse = (load_denoiser(pair.graph.parent / manifest.cached_steps[role], backend, threads=1)
                      for role in ("refresh", "reuse"))
    generator = torch.Generator().manual_seed(1)
    inputs = {"x": torch.randn(3, 4, 32, 32, generator=generator), "t": torch.tensor([10, 500, 990]),
              "y": torch.tensor([1, 2, 3]), "cfg_scale": torch.tensor([4.0, 1.0, 2.0]), "guided": torch.tensor([0, 2])}
    with torch.no_grad():
        expected = model.guided_forward(inputs["x"], inputs["t"], inputs["y"], inputs["cfg_scale"], 3, inputs["guided"])
    refreshed = refresh.run_named(inputs)
    reused = reuse.run_named({**inputs, "features": refreshed["features"], "null_features": refreshed["null_features"]})
    errors = [max_rel_error(refreshed["eps"], expected[0]), max_rel_error(reused["eps"], expected[0]),
              max_rel_error(reused["var_values"], expected[1])]
    print(f"{backend}: refresh eps {errors[0]:.2e}; reuse of its own features: eps {errors[1]:.2e}, var {errors[2]:.2e}")
    assert refreshed["features"].shape == (3, 12, 2, 16, 384) and refreshed["null_features"].shape == (2, 12, 2, 16, 384)
    assert max(errors) < FP32_LIMIT


@pytest.mark.parametrize("backend", ["torch", *GRAPH_BACKENDS])
def test_refreshing_every_call_is_the_uncached_run(pair, reference, backend):
    denoiser = reference if backend == "torch" else load_denoiser(pair.graph, backend, threads=1)
    sampler = sampler_from_name("ddim", 6)
    (plain,) = generate(denoiser, [1, 2], sampler, seed=3)
    (every,) = generate(denoiser, [1, 2], sampler, seed=3, cache="fora:1")
    error = max_rel_error(every.samples, plain.samples)
    print(f"{denoiser.name}: fora:1 vs uncached, DDIM 6: {error:.2e}")
    assert error < 1e-5


# The calls each policy refreshes over DDIM 12's 12 calls, written out by hand: the first and last two (0, 1, 10,
# 11), and every N-th from call 2 on (N = 2: 2, 4, 6, 8; N = 3: 2, 5, 8).
EXPECTED_REFRESHES = {"fora:2": [0, 1, 2, 4, 6, 8, 10, 11], "fora:3": [0, 1, 2, 5, 8, 10, 11],
                      "forecast:3:1": [0, 1, 2, 5, 8, 10, 11], "forecast:2:2": [0, 1, 2, 4, 6, 8, 10, 11]}


@pytest.mark.parametrize("spec", ["fora:2", "fora:3", "forecast:3:1", "forecast:2:2"])
def test_each_policy_refreshes_the_calls_its_rule_names(reference, spec, monkeypatch):
    denoiser = cached_denoiser(reference)
    refreshed = []
    keep = type(denoiser).keep
    monkeypatch.setattr(type(denoiser), "keep", lambda self, trajectory, ask, outputs: (
        refreshed.append(trajectory.k), keep(self, trajectory, ask, outputs))[-1])
    sampler = sampler_from_name("ddim", 12)
    (batch,) = generate(denoiser, [4, 5], sampler, seed=1, cache=spec)
    print(f"{spec}: refreshed at calls {refreshed}; {denoiser.reused_rows} rows reused")
    assert sampler.num_calls == 12 and refreshed == EXPECTED_REFRESHES[spec] and np.isfinite(batch.samples).all()


def newton_through(points, polynomial, order) -> Newton:
    """The differences as a trajectory's refreshes at `points` leave them."""
    newton = Newton()
    for k in points:
        newton = newton.add(k, torch.full((2,), float(polynomial(k))), order)
    return newton


def test_the_forecast_is_exact_for_polynomials_of_its_order():
    line = lambda k: 3 - 2 * k
    parabola = lambda k: 1 + k - 0.5 * k * k
    cubic = lambda k: k**3 - 4 * k
    assert torch.allclose(newton_through([2, 5], line, 1).at(7), torch.full((2,), float(line(7))))
    assert torch.allclose(newton_through([0, 1, 4], parabola, 2).at(6), torch.full((2,), float(parabola(6))))
    # older points leave the table: order 2 through the last three of five (-1, 2, 3, 5, 8) is the parabola there
    newton = newton_through([-1, 2, 3, 5, 8], cubic, 2)
    through = [(3, cubic(3)), (5, cubic(5)), (8, cubic(8))]
    expected = sum(value * np.prod([(9 - other) / (k - other) for other, _ in through if other != k])
                   for k, value in through)  # Lagrange's form of the same parabola, at 9
    print(f"order 2 through 3, 5, 8 of k^3 - 4k at 9: {float(newton.at(9)[0]):.4f}, Lagrange {expected:.4f}")
    assert newton.points == (3, 5, 8) and torch.allclose(newton.at(9), torch.full((2,), float(expected)))
    one = newton_through([3, 6], line, 0)  # order 0 (fora): the last features themselves
    assert one.at(9) is one.diagonal[0] and torch.equal(one.at(9), torch.full((2,), float(line(6))))


def test_the_cache_holds_what_its_accounting_says(reference):
    policy = parse_cache("forecast:3:2")
    denoiser = cached_denoiser(reference)
    sampler = sampler_from_name("ddim", 8)
    model = reference.model
    from runtime.sampling.noise import PerSampleNoise

    noise = PerSampleNoise(0, [0, 1])
    x, y = noise.draw_batch([1, 2], (4, 32, 32), 1000)
    from runtime.sampling import CallOptions, step

    trajectory = sampler.begin(x, y, torch.full((2,), 4.0), noise, options=CallOptions(cache=policy))

    while not trajectory.done:
        step(denoiser, [trajectory])
    held = sum(part.numel() * part.element_size() for newton in trajectory.cache_state.newton for part in newton.diagonal)
    expected = cache_bytes_per_image(block_features.feature_shape(model), policy) * 2  # two images
    print(f"forecast:3:2 on S/8: {held / 2 / 1e6:.2f} MB per image held, {expected / 2 / 1e6:.2f} MB accounted")
    assert held == expected


def test_caching_composes_with_a_guidance_interval(pair):
    """The interval changes a trajectory's guided rows: the cache refreshes there, and refresh-every-call with
    the interval is the uncached run with the interval."""
    with load_denoiser(pair.graph, "onnxruntime", threads=1) as denoiser:
        sampler = sampler_from_name("ddim", 10)
        (plain,) = generate(denoiser, [1, 2], sampler, seed=5, guidance_interval="300:700")
        (every,) = generate(denoiser, [1, 2], sampler, seed=5, guidance_interval="300:700", cache="fora:1")
        cached_run = cached_denoiser(denoiser)
        (reused,) = generate(cached_run, [1, 2], sampler, seed=5, guidance_interval="300:700", cache="fora:3")
    print(f"interval 300:700: fora:1 vs uncached {max_rel_error(every.samples, plain.samples):.2e}; fora:3 refreshed "
          f"{cached_run.refreshed_rows} rows, reused {cached_run.reused_rows}")
    assert max_rel_error(every.samples, plain.samples) < 1e-5
    # DDIM 10 calls at t 900..0: 0, 1 edges; 2 (t 700 enters the interval: other guided rows), 5; 7 (t 200 leaves
    # it); 8, 9 edges. Reused: 3, 4, 6 inside (2 rows + 2 null rows each), none else.
    assert cached_run.refreshed_rows == 2 * 7 + 2 * 2 and cached_run.reused_rows == 3 * 4
    assert np.isfinite(reused.samples).all()


def test_a_graph_denoiser_declares_itself_and_loads_its_pair_once(pair):
    denoiser = load_denoiser(pair.graph, "openvino", threads=1)
    assert (denoiser.path, denoiser.backend, denoiser.load_options) == (pair.graph, "openvino", {"threads": 1})
    refresh, reuse = denoiser.cached_forms()
    again = denoiser.cached_forms()
    loaded = denoiser._pair
    print(f"{denoiser.name}: pair {[form.runner.path.name for form in loaded]}")
    assert again == (refresh, reuse) and [form.name for form in loaded] == ["openvino-cpu fp32"] * 2
    assert [form.manifest.role for form in loaded] == ["refresh", "reuse"]
    denoiser.close()  # closes the pair's runners too
    assert all(form.runner.request is None for form in loaded) and denoiser.runner.request is None


def test_a_graph_without_its_pair_is_refused_before_sampling(graphs):
    with load_denoiser(graphs["fp32"], "onnxruntime", threads=1) as denoiser:
        with pytest.raises(DiTError, match="without its cached-steps graphs; re-export it with dit-export --cached-steps"):
            next(generate(denoiser, [1], sampler_from_name("ddim", 4), cache="fora:2"))


@pytest.mark.parametrize("spec", ["fora", "fora:0", "forecast:3", "forecast:3:3", "taylor:2"])
def test_a_bad_policy_spelling_is_one_line(spec):
    with pytest.raises(DiTError, match="--cache .*: use fora:N"):
        parse_cache(spec)
