"""The official samplers, ddpm and ddim, as facebookresearch/DiT's gaussian_diffusion.py runs them.

Their coefficients come from dit_ref.diffusion, derived from the Sampler's timesteps (the one source
of truth for a schedule).
"""

import functools

from dit_ref.diffusion import Schedule, ddim_step, ddpm_step, respaced_timesteps, schedule_from_timesteps
from dit_ref.errors import DiTError
from runtime.sampling.core import Callback, NoiseSource, Run, Sampler, descending

DDPM_STEPS = 250  # sample.py
DDIM_STEPS = 50  # diffusers' DiTPipeline


def ddpm_run(schedule: Schedule, x, noise_source: NoiseSource) -> Run:
    """Ancestral sampling with the learned (or, for var_values None, the fixed-large) variance.

    Ho et al., "Denoising Diffusion Probabilistic Models" (2020); Nichol & Dhariwal, "Improved
    DDPM" (2021). Noise is drawn after each model call, the last step included, as sample.py does.
    """
    last = len(schedule) - 1

    def step(k, x, eps, var_values):
        return ddpm_step(schedule, last - k, x, eps, var_values, noise_source(x))

    return Run(x, step)


def ddim_run(schedule: Schedule, x, noise_source: NoiseSource | None, eta: float = 0.0) -> Run:
    """DDIM (Song et al., "Denoising Diffusion Implicit Models", 2021); eta 0 is deterministic.

    Like the official ddim_sample, noise is drawn every step even when eta is 0, so a seeded run
    leaves the generator where the official loop leaves it. var_values is unused.
    """
    last = len(schedule) - 1

    def step(k, x, eps, var_values):
        noise = noise_source(x) if noise_source is not None else None
        return ddim_step(schedule, last - k, x, eps, noise, eta)

    return Run(x, step)


def start_ddpm(timesteps: tuple[int, ...], x, noise_source: NoiseSource) -> Run:
    return ddpm_run(schedule_from_timesteps(timesteps), x, noise_source)


def start_ddim(timesteps: tuple[int, ...], x, noise_source: NoiseSource | None, eta: float = 0.0) -> Run:
    return ddim_run(schedule_from_timesteps(timesteps), x, noise_source, eta)


def ddpm_sampler(steps: int = DDPM_STEPS) -> Sampler:
    """DDPM at `steps` evenly spaced timesteps (sample.py uses 250)."""
    return Sampler("ddpm", descending(respaced_timesteps(steps)), start_ddpm, steps, stochastic=True)


def ddim_sampler(steps: int = DDIM_STEPS, eta: float = 0.0) -> Sampler:
    """DDIM at ddim_timesteps(steps); eta 0 (the default) is deterministic."""
    return Sampler("ddim", descending(ddim_timesteps(steps)), functools.partial(start_ddim, eta=eta), steps,
                   stochastic=eta > 0)


def ddim_timesteps(steps: int) -> list[int]:
    """DDIM's timesteps: "ddimN" (the first integer stride giving N steps, as guided-diffusion's
    documented DDIM runs use) when such a stride exists, else N evenly spaced steps ("N")."""
    try:
        return respaced_timesteps(f"ddim{steps}")
    except DiTError:
        return respaced_timesteps(steps)


def sample_ddpm(denoiser, x, schedule: Schedule, y, cfg_scale, noise_source, callback: Callback | None = None):
    """DDPM with an explicit schedule, as the official sample.py runs it (see ddpm_run)."""
    sampler = Sampler("ddpm", descending(schedule.timesteps), start_ddpm, len(schedule), stochastic=True)
    return sampler(denoiser, x, y, cfg_scale, noise_source, callback)


def sample_ddim(denoiser, x, schedule: Schedule, y, cfg_scale, noise_source=None,
                callback: Callback | None = None, eta: float = 0.0):
    """DDIM with an explicit schedule (see ddim_run)."""
    sampler = Sampler("ddim", descending(schedule.timesteps), functools.partial(start_ddim, eta=eta), len(schedule),
                      stochastic=eta > 0)
    return sampler(denoiser, x, y, cfg_scale, noise_source, callback)
