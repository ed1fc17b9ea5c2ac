"""Calibrated cache schedules: the rule on feature changes constructed by hand, the measured changes of a model whose
features are constructed, and a calibrated list run end to end."""

import numpy as np
import pytest
import torch

from dit_ref.contract import BatchRange
from runtime.denoiser import Denoiser, Provenance
from runtime.sampling import CallOptions, sampler_from_name
from runtime.tuning import schedule


def constructed_changes(per_call: list[float], max_gap: int = 8) -> np.ndarray:
    """[k, g]: the change from k - g to k when call k moves the features by per_call[k] (changes add up)."""
    total = len(per_call)
    changes = np.full((total, max_gap + 1), np.nan)
    for k in range(total):
        for gap in range(0, min(k, max_gap) + 1):
            changes[k, gap] = sum(per_call[k - gap + 1:k + 1])
    return changes


def test_the_rule_refreshes_where_the_features_move():
    # fast at both ends (0.2 a call), slow in the middle (0.02): with a threshold of 0.11 every call at the ends
    # refreshes; in the middle five calls reuse (0.02 .. 0.10 since call 3) and the sixth (0.12) refreshes
    per_call = [0.0] + [0.2] * 3 + [0.02] * 10 + [0.2] * 3
    calls = schedule.refresh_calls(constructed_changes(per_call), 0.11)
    print(f"refreshes at {calls}")
    assert calls == (0, 1, 2, 3, 9, 14, 15, 16)


def test_a_schedule_takes_the_lowest_threshold_that_keeps_its_count():
    per_call = [0.0] + [0.2] * 3 + [0.02] * 10 + [0.2] * 3
    changes = constructed_changes(per_call)
    for count in (17, 9, 6, 4):
        calls = schedule.schedule_for(changes, count)
        print(f"at most {count}: {calls}")
        assert len(calls) <= count and calls[0] == 0
    assert schedule.schedule_for(changes, 17) == tuple(range(17))  # the budget allows every call
    # a lower budget spends the refreshes where the features move most: the ends before the middle
    four = schedule.schedule_for(changes, 6)
    assert {1, 15} & set(four) and len([call for call in four if 4 <= call <= 13]) <= 2


def test_forced_calls_always_refresh():
    changes = constructed_changes([0.0] + [0.01] * 9)
    assert schedule.refresh_calls(changes, 1.0, forced={4, 7}) == (0, 4, 7)
    assert schedule.interval_edges((900, 700, 500, 300, 100), (300, 700)) == {1, 4}
    assert schedule.interval_edges((900, 700), None) == set()


class ConstructedFeatures(Denoiser):
    """A denoiser whose refresh form gives features F_k = (1 + k)^2 (all elements), eps 0: the relative change from
    k - g to k is 1 - ((1 + k - g) / (1 + k))^2, known exactly."""

    def __init__(self):
        self.device, self.name = torch.device("cpu"), "constructed"
        self.provenance = Provenance("fashion", 28, 1, 28, 10, False, "pixels", 1, "constructed", True)
        self.batch_range, self.calls = BatchRange(1, 4, 4), 0

    def cached_forms(self):
        def refresh(inputs):
            value = float((1 + self.calls) ** 2)
            self.calls += 1
            n, u = len(inputs["x"]), len(inputs["guided"])
            return {"eps": torch.zeros_like(inputs["x"]), "features": torch.full((n, 2, 3), value),
                    "null_features": torch.full((u, 2, 3), value)}
        return refresh, None


def test_measured_changes_are_the_constructed_ones():
    sampler = sampler_from_name("ddim", 6)
    changes = schedule.feature_changes(ConstructedFeatures(), sampler, [0, 1], seed=0, max_gap=3)
    expected = np.full((6, 4), np.nan)
    for k in range(6):
        for gap in range(0, min(k, 3) + 1):
            expected[k, gap] = 1 - ((1 + k - gap) / (1 + k)) ** 2
    print(f"measured [k, gap]:\n{np.round(changes, 4)}")
    np.testing.assert_allclose(changes, expected, atol=1e-12)


def test_a_calibrated_list_runs_and_refreshing_every_call_is_the_uncached_run(reference):
    from runtime.generate import generate

    sampler = sampler_from_name("ddim", 8)
    changes = schedule.feature_changes(reference, sampler, [3, 4], seed=1, options=CallOptions())
    calls = schedule.schedule_for(changes, 5)
    print(f"S/8 DDIM 8: changes between neighbours {np.round(changes[1:, 1], 3)}; 5 refreshes at {calls}")
    assert len(calls) <= 5 and np.isfinite(changes[1:, 1]).all()
    (plain,) = generate(reference, [1, 2], sampler, seed=2)
    (every,) = generate(reference, [1, 2], sampler, seed=2, cache="refresh:" + ",".join(map(str, range(8))))
    (listed,) = generate(reference, [1, 2], sampler, seed=2, cache="refresh:" + ",".join(map(str, calls)))
    assert np.abs(every.samples - plain.samples).max() < 1e-5 and np.isfinite(listed.samples).all()
