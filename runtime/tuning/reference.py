"""The reference rule: which setting a point's samples are compared with, pair by pair (runtime.tuning.fidelity).

A point is plain when it computes in FP32, uncached, with every step guided: it follows its sampler's
trajectory as exactly as the machine can. Then:
  - a point that is not plain (another precision, backend option, cache policy or guidance interval, the
    same sampler and steps) is compared with its plain self: the trajectory it means to follow;
  - a plain point of a deterministic sampler (DDIM eta 0, DPM++, UniPC, DEIS, Euler, Heun, ...) solves the
    probability-flow ODE; other step counts and samplers solve the same ODE, so it is compared with a
    converged many-step solution of it (CONVERGED);
  - a plain point of a stochastic sampler (DDPM, ancestral and SDE schedulers) has no paired reference:
    other step counts draw other noise, so it is judged by population metrics only.
Every reference is plain, at the point's cfg scale, and on any backend (FP32 backends agree to rounding).
"""

from dataclasses import dataclass

CONVERGED = ("ddim", 1000)  # (sampler, steps): the converged ODE solution, chosen by measurement (docs/benchmarks.md)


@dataclass(frozen=True)
class Reference:
    """The plain setting a point is compared with (at the point's cfg scale)."""

    kind: str  # "trajectory": the point's own sampler and steps; "converged": CONVERGED, the ODE solved to rounding
    sampler: str  # a runtime.sampling.sampler_from_name name
    steps: int


def reference_for(sampler, plain: bool) -> Reference | None:
    """The reference of a point that samples with sampler (a runtime.sampling Sampler); plain: FP32, uncached,
    every step guided. None: the point has no paired reference (it is CONVERGED itself, or a plain stochastic one)."""
    if not plain:
        return Reference("trajectory", sampler.name, sampler.steps)
    if sampler.stochastic or (sampler.name, sampler.steps) == CONVERGED:
        return None
    return Reference("converged", *CONVERGED)
