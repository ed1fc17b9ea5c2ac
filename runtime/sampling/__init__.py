"""Sampling: the Sampler and its step API (core), the official ddpm and ddim (official), diffusers
schedulers (diffusers_adapter), seeded noise (noise), and here the registry of sampler names.

    sampler = sampler_from_name("ddpm", 250)   # ddpm, ddim, dpm++, unipc, ... or a diffusers class name
    x = sampler(denoiser, x, y, cfg_scale, noise)

Imports flow one way: this registry -> official, diffusers_adapter -> core.
"""

import functools

from dit_ref.configs import NUM_TIMESTEPS
from dit_ref.errors import DiTError
from runtime.sampling.core import CallOptions, FiniteWatch, Sampler, Trajectory, step
from runtime.sampling.diffusers_adapter import DIFFUSERS_SCHEDULERS, DIFFUSERS_STEPS, diffusers_sampler
from runtime.sampling.official import DDIM_STEPS, DDPM_STEPS, ddim_sampler, ddpm_sampler

SAMPLERS = {"ddpm": ddpm_sampler, "ddim": ddim_sampler}  # ours; any other name is a diffusers scheduler
DEFAULT_STEPS = {"ddpm": DDPM_STEPS, "ddim": DDIM_STEPS}  # any other sampler: DIFFUSERS_STEPS

__all__ = ["DIFFUSERS_SCHEDULERS", "CallOptions", "FiniteWatch", "SAMPLERS", "Sampler", "Trajectory", "default_steps",
           "sampler_from_name", "sampler_names", "step"]


def default_steps(name: str) -> int:
    """The steps a sampler takes when none are given: ddpm 250, ddim 50, a diffusers scheduler 20."""
    return DEFAULT_STEPS.get(name.strip().lower(), DIFFUSERS_STEPS)


def sampler_names() -> list[str]:
    """The short names (any diffusers scheduler class name works too)."""
    return [*SAMPLERS, *DIFFUSERS_SCHEDULERS]


def check_steps(steps: int | None, what: str = "--steps") -> None:
    """DiTError unless steps is None (the sampler's default) or 1..1000 (the training schedule's length)."""
    if steps is None:
        return
    if isinstance(steps, bool) or not isinstance(steps, int):
        raise DiTError(f"{what} must be an integer, not {steps!r}")
    if not 1 <= steps <= NUM_TIMESTEPS:
        raise DiTError(f"{what} must be 1..{NUM_TIMESTEPS} (the training schedule has {NUM_TIMESTEPS} timesteps), "
                       f"not {steps}")


@functools.lru_cache(maxsize=64)
def sampler_from_name(name: str, steps: int | None = None) -> Sampler:
    """ddpm (250 steps), ddim (eta 0, 50 steps), or a diffusers scheduler (20 steps). Cached: a Sampler is
    stateless (every trajectory gets its own run), and a diffusers scheduler takes a while to make."""
    check_steps(steps)
    name = name.strip()
    key = name.lower()
    steps = steps or default_steps(name)
    if key in SAMPLERS:
        return SAMPLERS[key](steps)
    return diffusers_sampler(key if key in DIFFUSERS_SCHEDULERS else name, steps)
