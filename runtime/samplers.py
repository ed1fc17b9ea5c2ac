"""Samplers: small stateless functions with one signature, in the style of k-diffusion.

    sample_X(denoiser, x, schedule, y, cfg_scale, noise_source, callback=None) -> x

x (n, 4, L, L) float32 initial latents, y (n,) int64 labels, cfg_scale (n,) float32, all on the
denoiser's device; noise_source(x) returns step noise like x (runtime.noise.OfficialNoise draws it
as sample.py does). The coefficients come from dit_ref.diffusion, the one source of truth for the
DiT schedule; the samplers never know which backend runs the denoiser. callback, if given, gets
{"x", "i", "t", "total"} after every denoiser call. NaN or inf in the latents raises DiTError
naming the step and timestep where it first appeared.
"""

import functools
import inspect
from dataclasses import dataclass
from typing import Callable

import torch

from dit_ref.diffusion import (
    BETA_END, BETA_START, Schedule, ddim_step, ddpm_step, respaced_timesteps, schedule_from_spec,
    schedule_from_timesteps,
)
from dit_ref.configs import NUM_TIMESTEPS
from dit_ref.errors import DiTError

DEFAULT_STEPS = {"ddpm": 250, "ddim": 50, "diffusers": 20}  # sample.py; diffusers' DiTPipeline; few-step

# Short names for diffusers schedulers that take eps predictions -> (class name, extra config).
DIFFUSERS_SCHEDULERS = {
    "dpm++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "deis": ("DEISMultistepScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler-ancestral": ("EulerAncestralDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "ddim-diffusers": ("DDIMScheduler", {"clip_sample": False}),
    "pndm": ("PNDMScheduler", {"skip_prk_steps": True}),
}
# The DiT training schedule in diffusers' terms. "trailing" spacing starts at t=999 and keeps the
# timesteps integral, which the graph's int64 t input needs (Lin et al. 2024 recommend it for few steps).
DIFFUSERS_CONFIG = {
    "num_train_timesteps": NUM_TIMESTEPS, "beta_start": BETA_START, "beta_end": BETA_END,
    "beta_schedule": "linear", "prediction_type": "epsilon", "timestep_spacing": "trailing",
}

Callback = Callable[[dict], None]


def sample_ddpm(denoiser, x, schedule: Schedule, y, cfg_scale, noise_source, callback: Callback | None = None):
    """Ancestral sampling with the learned variance, as the official sample.py runs it.

    Ho et al., "Denoising Diffusion Probabilistic Models" (2020); Nichol & Dhariwal, "Improved
    DDPM" (2021). Noise is drawn after each model call, the last step included.
    """

    def step(k, x, eps, var_values):
        i = len(schedule) - 1 - k
        return ddpm_step(schedule, i, x, eps, var_values, noise_source(x))

    return _denoise_loop(denoiser, x, _sampling_order(schedule), y, cfg_scale, step, callback)


def sample_ddim(denoiser, x, schedule: Schedule, y, cfg_scale, noise_source=None,
                callback: Callback | None = None, eta: float = 0.0):
    """DDIM (Song et al., "Denoising Diffusion Implicit Models", 2021); eta 0 is deterministic.

    Like the official ddim_sample, noise is drawn every step even when eta is 0, so a seeded run
    leaves the generator where the official loop leaves it.
    """

    def step(k, x, eps, var_values):
        i = len(schedule) - 1 - k
        noise = noise_source(x) if noise_source is not None else None
        return ddim_step(schedule, i, x, eps, noise, eta)

    return _denoise_loop(denoiser, x, _sampling_order(schedule), y, cfg_scale, step, callback)


def sample_diffusers(denoiser, x, steps: int, y, cfg_scale, noise_source=None,
                     callback: Callback | None = None, scheduler: str = "dpm++"):
    """Few-step sampling with a diffusers scheduler on eps predictions; the learned variance is unused.

    A fresh scheduler is made for every call, so its internal state lives only inside this call.
    """
    solver = diffusers_scheduler(scheduler, steps, x.device)
    scheduler_timesteps = list(solver.timesteps)
    step_kwargs = {}
    if noise_source is not None and "generator" in inspect.signature(solver.step).parameters:
        step_kwargs["generator"] = noise_source.generator  # ancestral schedulers draw from it

    def prepare(k, x):
        return solver.scale_model_input(x, scheduler_timesteps[k]).float()

    def step(k, x, eps, var_values):
        return solver.step(eps, scheduler_timesteps[k], x, return_dict=False, **step_kwargs)[0].float()

    x = (x * solver.init_noise_sigma).float()
    timesteps = _integer_timesteps(scheduler_timesteps, scheduler)
    return _denoise_loop(denoiser, x, timesteps, y, cfg_scale, step, callback, prepare)


def _denoise_loop(denoiser, x, timesteps: list[int], y, cfg_scale, step, callback, prepare=None):
    """Call the denoiser at each timestep (in sampling order), then step(k, x, eps, var_values)."""
    watch = FiniteWatch(x.device, timesteps, getattr(denoiser, "name", "denoiser"))
    # Made up front, one fresh tensor per step: TensorRT binds raw pointers, which must be 256-byte
    # aligned (a fresh allocation is; a row of a (steps, n) table is not).
    t_all = [torch.full_like(y, t) for t in timesteps]  # each (n,) int64
    for k in range(len(timesteps)):
        t = t_all[k]  # (n,)
        model_input = prepare(k, x) if prepare is not None else x
        eps, var_values = denoiser(model_input, t, y, cfg_scale)  # each (n, 4, L, L)
        x = step(k, x, eps, var_values)
        watch.update(k, x)
        if callback is not None:
            callback({"x": x, "i": k, "t": timesteps[k], "total": len(timesteps)})
    watch.check()
    return x


def _sampling_order(schedule: Schedule) -> list[int]:
    return [int(t) for t in schedule.timesteps[::-1]]


class FiniteWatch:
    """Finds the first step whose latents hold NaN or inf; on a GPU without a host sync per step."""

    def __init__(self, device: torch.device, timesteps: list[int], backend: str, check_every: int = 25,
                 eager: bool | None = None):
        self.timesteps, self.backend, self.check_every = timesteps, backend, check_every
        self.eager = device.type == "cpu" if eager is None else eager  # a CPU check is cheap and synchronous
        self.first_bad = None if self.eager else torch.full((), -1, dtype=torch.int64, device=device)

    def update(self, k: int, x: torch.Tensor) -> None:
        finite = torch.isfinite(x).all()
        if self.eager:
            if not finite:
                raise self.error(k)
            return
        self.first_bad = torch.where((self.first_bad < 0) & ~finite, k, self.first_bad)
        if (k + 1) % self.check_every == 0:
            self.check()

    def check(self) -> None:
        if self.first_bad is not None and (k := int(self.first_bad)) >= 0:
            raise self.error(k)

    def error(self, k: int) -> DiTError:
        return DiTError(
            f"the latents became NaN or inf at step {k + 1} of {len(self.timesteps)} (step index {k}, "
            f"timestep {self.timesteps[k]}) with the {self.backend} denoiser; try float32 (the fp32 "
            f"graph or --dtype float32) or a lower --cfg-scale"
        )


def _integer_timesteps(timesteps, scheduler: str) -> list[int]:
    """The scheduler's timesteps as ints for the graph's int64 t; DiTError if one is fractional."""
    values = [float(t) for t in timesteps]
    if any(abs(v - round(v)) > 1e-4 for v in values):
        raise DiTError(f"scheduler {scheduler!r} made fractional timesteps; the graph takes integer t, "
                       f"choose another sampler")
    return [int(round(v)) for v in values]


def diffusers_scheduler(name: str, steps: int, device=None):
    """A fresh diffusers scheduler on the DiT schedule (linear betas, eps prediction), timesteps set."""
    import diffusers

    class_name, extra = DIFFUSERS_SCHEDULERS.get(name, (name, {}))
    cls = getattr(diffusers, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, diffusers.SchedulerMixin)):
        raise DiTError(f"unknown sampler {name!r}; choose ddpm, ddim, {', '.join(DIFFUSERS_SCHEDULERS)} "
                       f"or a diffusers scheduler class name")
    parameters = inspect.signature(cls.__init__).parameters
    if "prediction_type" not in parameters or "beta_schedule" not in parameters:
        raise DiTError(f"diffusers' {class_name} does not take eps predictions on a beta schedule; "
                       f"choose one of {', '.join(DIFFUSERS_SCHEDULERS)}")
    config = {key: value for key, value in {**DIFFUSERS_CONFIG, **extra}.items() if key in parameters}
    solver = cls(**config)
    solver.set_timesteps(steps, device=device)
    return solver


def ddim_timesteps(steps: int) -> list[int]:
    """DDIM's timesteps: "ddimN" (the first integer stride giving N steps, as guided-diffusion's
    documented DDIM runs use) when such a stride exists, else N evenly spaced steps ("N")."""
    try:
        return respaced_timesteps(f"ddim{steps}")
    except DiTError:
        return respaced_timesteps(steps)


@dataclass(frozen=True)
class Sampler:
    """A sampler with its schedule bound: sampler(denoiser, x, y, cfg_scale, noise_source, callback)."""

    name: str  # "ddpm", "ddim" or a diffusers scheduler name
    function: Callable
    schedule: object  # a dit_ref Schedule, or the step count for diffusers schedulers
    num_calls: int  # denoiser calls per run (for progress bars)

    def __call__(self, denoiser, x, y, cfg_scale, noise_source, callback: Callback | None = None):
        return self.function(denoiser, x, self.schedule, y, cfg_scale, noise_source, callback)


def sampler_from_name(name: str, steps: int | None = None) -> Sampler:
    """ddpm (learned sigma, 250 steps), ddim (eta 0, 50 steps), or a diffusers scheduler (20 steps)."""
    name = name.strip()
    key = name.lower()
    if steps is not None and steps < 1:
        raise DiTError(f"--steps must be at least 1, not {steps}")
    if key in ("ddpm", "ddim"):
        steps = steps or DEFAULT_STEPS[key]
        if key == "ddpm":
            schedule = schedule_from_spec(steps)
            return Sampler("ddpm", sample_ddpm, schedule, len(schedule))
        schedule = schedule_from_timesteps(ddim_timesteps(steps))
        return Sampler("ddim", sample_ddim, schedule, len(schedule))
    steps = steps or DEFAULT_STEPS["diffusers"]
    scheduler_name = key if key in DIFFUSERS_SCHEDULERS else name
    num_calls = len(diffusers_scheduler(scheduler_name, steps).timesteps)
    function = functools.partial(_call_diffusers, scheduler=scheduler_name)
    return Sampler(scheduler_name, function, steps, num_calls)


def _call_diffusers(denoiser, x, steps, y, cfg_scale, noise_source, callback=None, *, scheduler):
    return sample_diffusers(denoiser, x, steps, y, cfg_scale, noise_source, callback, scheduler=scheduler)
