"""The reference rule: which setting a point's samples are compared with, pair by pair (runtime.tuning.fidelity).

A point is plain when it computes in FP32, uncached, with every step guided: it follows its sampler's
trajectory as exactly as the machine can. Then:
  - a point that is not plain (another precision, backend option, cache policy or guidance interval, the
    same sampler and steps) is compared with its plain self: the trajectory it means to follow;
  - a plain point of a deterministic sampler (DDIM eta 0, DPM++, UniPC, DEIS, Euler, Heun, ...) solves the
    probability-flow ODE; other step counts and samplers solve the same ODE, so it is compared with a
    converged many-step solution of it (CONVERGED, or CONVERGED_CHEAPER where that costs too much);
  - a plain point of a stochastic sampler (DDPM, ancestral and SDE schedulers) has no paired reference:
    other step counts draw other noise, so it is judged by population metrics only.
Every reference is plain, at the point's cfg scale, and on any backend (FP32 backends agree to rounding).
"""

from dataclasses import dataclass

# (sampler, steps) of the converged ODE solution, chosen by measurement on the fashion model (docs/benchmarks.md,
# "Paired fidelity"): refining DDIM 500 to 1000 moves its pictures by 67 dB, and DDIM 1000 and DPM++ 500 agree to
# 65 dB, while the step counts and samplers compared sit at 51 dB (DPM++ 100) and below from it.
CONVERGED = ("ddim", 1000)
# A quarter of the calls, for models where CONVERGED costs too much: 59 dB from CONVERGED on the fashion model.
# On a random-weight S/2 no solution converges cheaply (DPM++ 100 -> 250 moves the latents by 46 dB).
CONVERGED_CHEAPER = ("dpm++", 250)


@dataclass(frozen=True)
class Reference:
    """The plain setting a point is compared with (at the point's cfg scale)."""

    kind: str  # "trajectory": the point's own sampler and steps; "converged": CONVERGED, the ODE solved to rounding
    sampler: str  # a runtime.sampling.sampler_from_name name
    steps: int


def reference_for(sampler, plain: bool, converged: tuple[str, int] | None = None) -> Reference | None:
    """The reference of a point that samples with sampler (a runtime.sampling Sampler); plain: FP32, uncached,
    every step guided; converged: the (sampler, steps) solving the ODE (None: CONVERGED). None: the point has no
    paired reference (it is the converged solution itself, or a plain stochastic one)."""
    converged = converged or CONVERGED
    if not plain:
        return Reference("trajectory", sampler.name, sampler.steps)
    if sampler.stochastic or (sampler.name, sampler.steps) == tuple(converged):
        return None
    return Reference("converged", *converged)
