"""Samplers: one shape for ddpm, ddim and the diffusers adapter, in the style of k-diffusion.

    sampler = sampler_from_name("ddpm", 250)  # a Sampler: name, timesteps, start
    x = sampler(denoiser, x, y, cfg_scale, noise_source, callback=None)

x (n, C, L, L) float32 initial latents, y (n,) int64 labels, cfg_scale (n,) float32, all on the
denoiser's device; the channel count C comes from x alone. The denoiser returns (eps, var_values),
var_values None for a model without learned sigma. noise_source(x) returns step noise like x
(runtime.noise.OfficialNoise draws it as sample.py does). A Sampler's timesteps are the one source
of truth for its schedule: ddpm and ddim derive their coefficients from them with dit_ref.diffusion,
and the diffusers adapter (runtime.diffusers_sampler) checks that its scheduler makes the same ones.
The samplers never know which backend runs the denoiser. callback, if given, gets
{"x", "i", "t", "total"} after every denoiser call. NaN or inf in the latents raises DiTError
naming the step and timestep where it first appeared.
"""

import functools
from dataclasses import dataclass
from typing import Callable, NamedTuple, Sequence

import torch

from dit_ref.diffusion import Schedule, ddim_step, ddpm_step, respaced_timesteps, schedule_from_timesteps
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

Callback = Callable[[dict], None]
NoiseSource = Callable[[torch.Tensor], torch.Tensor]  # noise_source(x) -> step noise like x


def same_input(k: int, x: torch.Tensor) -> torch.Tensor:
    """The denoiser sees the latents themselves (every sampler but diffusers' scaled ones)."""
    return x


class Run(NamedTuple):
    """One sampling run's pieces, made fresh for every call by a sampler's start function."""

    x: torch.Tensor  # the latents the loop starts from, (n, C, L, L)
    step: Callable  # step(k, x, eps, var_values) -> the latents after the k-th denoiser call
    model_input: Callable = same_input  # model_input(k, x) -> what the denoiser sees at call k


Start = Callable[[tuple, torch.Tensor, NoiseSource | None], Run]  # start(timesteps, x, noise_source) -> Run


@dataclass(frozen=True)
class Sampler:
    """A sampler with its timesteps bound: sampler(denoiser, x, y, cfg_scale, noise_source, callback) -> x."""

    name: str  # "ddpm", "ddim" or a diffusers scheduler name
    timesteps: tuple[int, ...]  # original timesteps (0..999) of the denoiser calls, in sampling order
    start: Start  # start(timesteps, x, noise_source) -> Run; the same signature for every sampler

    @property
    def num_calls(self) -> int:
        """Denoiser calls per run (for progress bars)."""
        return len(self.timesteps)

    def __call__(self, denoiser, x, y, cfg_scale, noise_source, callback: Callback | None = None):
        run = self.start(self.timesteps, x, noise_source)
        return denoise(denoiser, run, self.timesteps, y, cfg_scale, callback)


def denoise(denoiser, run: Run, timesteps: Sequence[int], y, cfg_scale, callback: Callback | None = None):
    """Call the denoiser at each timestep (in sampling order), then run.step(k, x, eps, var_values)."""
    x = run.x
    watch = FiniteWatch(x.device, timesteps, getattr(denoiser, "name", "denoiser"))
    # Made up front, one fresh tensor per step: TensorRT binds raw pointers, which must be 256-byte
    # aligned (a fresh allocation is; a row of a (steps, n) table is not).
    t_all = [torch.full_like(y, t) for t in timesteps]  # each (n,) int64
    for k, t in enumerate(t_all):
        eps, var_values = denoiser(run.model_input(k, x), t, y, cfg_scale)  # (n, C, L, L); var_values may be None
        x = run.step(k, x, eps, var_values)  # (n, C, L, L)
        watch.update(k, x)
        if callback is not None:
            callback({"x": x, "i": k, "t": timesteps[k], "total": len(timesteps)})
    watch.check()
    return x


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


def ddpm_sampler(steps: int = DEFAULT_STEPS["ddpm"]) -> Sampler:
    """DDPM at `steps` evenly spaced timesteps (sample.py uses 250)."""
    return Sampler("ddpm", descending(respaced_timesteps(steps)), start_ddpm)


def ddim_sampler(steps: int = DEFAULT_STEPS["ddim"], eta: float = 0.0) -> Sampler:
    """DDIM at ddim_timesteps(steps); eta 0 (the default) is deterministic."""
    return Sampler("ddim", descending(ddim_timesteps(steps)), functools.partial(start_ddim, eta=eta))


def sample_ddpm(denoiser, x, schedule: Schedule, y, cfg_scale, noise_source, callback: Callback | None = None):
    """DDPM with an explicit schedule, as the official sample.py runs it (see ddpm_run)."""
    run = ddpm_run(schedule, x, noise_source)
    return denoise(denoiser, run, descending(schedule.timesteps), y, cfg_scale, callback)


def sample_ddim(denoiser, x, schedule: Schedule, y, cfg_scale, noise_source=None,
                callback: Callback | None = None, eta: float = 0.0):
    """DDIM with an explicit schedule (see ddim_run)."""
    run = ddim_run(schedule, x, noise_source, eta)
    return denoise(denoiser, run, descending(schedule.timesteps), y, cfg_scale, callback)


def descending(timesteps) -> tuple[int, ...]:
    """Timesteps as Python ints in sampling order (999 first)."""
    return tuple(sorted((int(t) for t in timesteps), reverse=True))


class FiniteWatch:
    """Finds the first step whose latents hold NaN or inf; on a GPU without a host sync per step."""

    def __init__(self, device: torch.device, timesteps: Sequence[int], backend: str, check_every: int = 25,
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


def ddim_timesteps(steps: int) -> list[int]:
    """DDIM's timesteps: "ddimN" (the first integer stride giving N steps, as guided-diffusion's
    documented DDIM runs use) when such a stride exists, else N evenly spaced steps ("N")."""
    try:
        return respaced_timesteps(f"ddim{steps}")
    except DiTError:
        return respaced_timesteps(steps)


SAMPLERS = {"ddpm": ddpm_sampler, "ddim": ddim_sampler}  # ours; any other name is a diffusers scheduler


def default_steps(name: str) -> int:
    """The steps a sampler takes when none are given: ddpm 250, ddim 50, a diffusers scheduler 20."""
    key = name.strip().lower()
    return DEFAULT_STEPS[key if key in SAMPLERS else "diffusers"]


def sampler_from_name(name: str, steps: int | None = None) -> Sampler:
    """ddpm (250 steps), ddim (eta 0, 50 steps), or a diffusers scheduler (20 steps)."""
    name = name.strip()
    key = name.lower()
    if steps is not None and steps < 1:
        raise DiTError(f"--steps must be at least 1, not {steps}")
    steps = steps or default_steps(name)
    if key in SAMPLERS:
        return SAMPLERS[key](steps)
    # Imported here, not at the top: the adapter builds on the Sampler defined in this module.
    from runtime.diffusers_sampler import diffusers_sampler

    return diffusers_sampler(key if key in DIFFUSERS_SCHEDULERS else name, steps)
