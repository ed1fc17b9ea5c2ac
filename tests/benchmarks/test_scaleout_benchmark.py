"""The scale-out benchmark's own arithmetic; its figures are not asserted (they live in the README)."""

from benchmarks.scaleout import extra_per_step


def test_per_sample_cost_per_step_spreads_the_batch_start_over_the_steps():
    row = {"official_batch_start_ms": 1.0, "per_sample_batch_start_ms": 6.0,
           "official_step_noise_ms": 0.5, "per_sample_step_noise_ms": 0.25}
    assert extra_per_step(row, steps=50, step_noise=False) == 0.1  # DDIM (eta 0) draws no step noise
    assert extra_per_step(row, steps=50, step_noise=True) == 0.1 - 0.25
