"""The tuner's pure parts: the walk over a synthetic table whose answer is known, the additive error model, the cost
model's prediction, and the calls a cache policy refreshes against what CachingDenoiser does."""

import itertools
import math

import numpy as np
import pytest
import torch

from runtime.caching import cached_denoiser, parse_cache, refreshed_calls
from runtime.generate import generate
from runtime.sampling import sampler_from_name
from runtime.tuning.costs import CallCosts, predict_seconds
from runtime.tuning.search import Candidate, Verdict, predicted_psnr, psnr_from_mse, walk


def synthetic_table():
    """Every combination of three levers with a known speed (factors multiply) and a known error (adds)."""
    engines = {"fp32": (1.0, 0.0), "fp16": (0.8, 1e-5), "int8": (0.5, 2e-4)}  # (seconds factor, squared error)
    steps = {50: (1.0, 0.0), 25: (0.5, 5e-5), 10: (0.2, 6e-4)}
    caches = {None: (1.0, 0.0), "fora:2": (0.7, 4e-5), "fora:4": (0.45, 5e-4)}
    table = []
    for (engine, a), (count, b), (cache, c) in itertools.product(engines.items(), steps.items(), caches.items()):
        seconds, error = a[0] * b[0] * c[0], a[1] + b[1] + c[1]
        table.append((f"{engine} {count} {cache}", seconds, psnr_from_mse(error, 1.0)))
    return table


def test_the_walk_finds_the_known_fastest_within_budget_and_measures_few():
    table = synthetic_table()
    budget = 40.0
    truth = min((row for row in table if row[2] >= budget), key=lambda row: row[1])
    checked = []

    def check(candidate):  # the measurement: the true value, a little noisy
        checked.append(candidate.key)
        true = next(row for row in table if row[0] == candidate.key)
        return Verdict(true[2] + 0.2 >= budget, true[1])

    candidates = [Candidate(key, seconds, psnr - 0.5) for key, seconds, psnr in table]  # predictions a bit low
    best, measured = walk(candidates, budget, check)
    print(f"{len(table)} combinations, {len(measured)} measured: {checked}; found {best.key}, truth {truth[0]}")
    assert best.key == truth[0] and len(measured) < len(table) / 2


def test_the_walk_stops_when_time_runs_out():
    calls = []
    candidates = [Candidate(f"c{k}", float(k), 50.0) for k in range(10)]
    best, measured = walk(candidates, 40.0, lambda c: (calls.append(c), Verdict(False))[1], time_left=lambda: len(calls) < 3)
    assert best is None and len(measured) == 3


def test_errors_add_and_a_single_lever_is_its_own_psnr():
    assert predicted_psnr([1e-4], 1.0) == pytest.approx(40.0)
    assert predicted_psnr([1e-4, 1e-4], 1.0) == pytest.approx(40.0 - 10 * math.log10(2))
    assert math.isinf(predicted_psnr([0.0], 255.0))


def test_the_cost_model_counts_each_call_by_what_it_computes():
    costs = CallCosts(batch=10, ms={"plain": (20.0, 10.0), "refresh": (24.0, 12.0), "reuse": (4.0, 2.0)})
    timesteps = (900, 700, 500, 300, 100)
    assert predict_seconds(costs, timesteps) == pytest.approx(5 * 20.0 / 1000 / 10)
    # interval 400:999 guides the first three calls
    assert predict_seconds(costs, timesteps, (400, 999)) == pytest.approx((3 * 20 + 2 * 10) / 1000 / 10)
    # fora:2 over five calls: edges 0, 1 and 3, 4 refresh; call 2 is (2 - 2) % 2 == 0 a refresh too: all refresh
    assert predict_seconds(costs, timesteps, None, parse_cache("fora:2")) == pytest.approx(5 * 24 / 1000 / 10)
    listed = parse_cache("refresh:0,3")
    assert predict_seconds(costs, timesteps, None, listed) == pytest.approx((2 * 24 + 3 * 4) / 1000 / 10)


@pytest.mark.parametrize("spec, interval", [("fora:3", None), ("forecast:2:1", None), ("refresh:0,1,5,9", None),
                                            ("fora:3", (300, 700)), ("refresh:0,4,9", (300, 700))])
def test_refreshed_calls_are_the_calls_the_caching_denoiser_refreshes(reference, spec, interval, monkeypatch):
    sampler = sampler_from_name("ddim", 10)
    denoiser = cached_denoiser(reference)
    refreshed = []
    keep = type(denoiser).keep
    monkeypatch.setattr(type(denoiser), "keep", lambda self, trajectory, ask, outputs: (
        refreshed.append(trajectory.k), keep(self, trajectory, ask, outputs))[-1])
    gi = None if interval is None else "{}:{}".format(*interval)
    generate(denoiser, [1, 2], sampler, seed=0, cache=spec, guidance_interval=gi).__next__()
    predicted = [k for k, refreshes in enumerate(refreshed_calls(parse_cache(spec), sampler.timesteps, interval))
                 if refreshes]
    print(f"{spec} with interval {interval}: refreshed {refreshed}")
    assert refreshed == predicted


def test_a_calibrated_list_past_the_samplers_calls_is_refused():
    from dit_ref.errors import DiTError
    from runtime.plan import make_plan

    with pytest.raises(DiTError, match="call 12 is past this sampler's 10 calls"):
        make_plan([1], sampler="ddim", steps=10, cache="refresh:0,4,12")
    assert make_plan([1], sampler="ddim", steps=10, cache="refresh:0,4,9").cache.calls == (0, 4, 9)
    assert torch.equal(torch.tensor(parse_cache("refresh:0,2,7").calls), torch.tensor([0, 2, 7]))
    np.testing.assert_array_equal(refreshed_calls(None, (3, 2, 1)), [True] * 3)


def test_pairs_shrink_to_fit_the_budget_where_exact_is_slow():
    from runtime.tuning.points import Pairs

    asked = Pairs(16, 64, 1000)
    assert asked.fitted(exact_seconds=0.16, budget_s=900) == asked  # fashion here: 10 s of 900
    slow = asked.fitted(exact_seconds=12.8, budget_s=900)  # S/2 at 256 px here: 64 pairs would take 819 s
    print(slow)
    assert slow == Pairs(8, 17, 1000) and 17 * 12.8 <= 0.25 * 900
    assert asked.fitted(exact_seconds=100.0, budget_s=900) == Pairs(4, 8, 1000)  # never below 4:8
    for few in (Pairs(16, 16, 1000), Pairs(4, 4, 1000)):  # fast enough: kept as asked, never raised
        assert few.fitted(exact_seconds=0.16, budget_s=900) == few
