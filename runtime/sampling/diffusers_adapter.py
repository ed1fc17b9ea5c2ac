"""The diffusers adapter: few-step sampling with a diffusers scheduler, in the Sampler shape.

diffusers schedulers keep a step index and a multistep history inside; a fresh scheduler is made for
every trajectory, so that state lives only with its samples (a group that shares a schedule). The
Sampler's timesteps are the scheduler's call timesteps (integers: the graph's t is int64), and every
trajectory checks that its scheduler makes exactly those. The schedulers take eps predictions; a
denoiser's var_values is unused (may be None).
"""

import functools
import inspect

from dit_ref.configs import NUM_TIMESTEPS
from dit_ref.diffusion import BETA_END, BETA_START
from dit_ref.errors import DiTError
from runtime.sampling.core import Callback, NoiseSource, Run, Sampler

DIFFUSERS_STEPS = 20  # few-step schedulers' default
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
# Scheduler classes whose steps draw no noise: two noise seeds give the same latents (tests/runtime/test_samplers.py
# checks each). Any other class counts as stochastic, and so do DPM-Solver's SDE variants (algorithm_type "sde-...").
DETERMINISTIC_SCHEDULERS = frozenset({
    "DDIMScheduler", "DDIMParallelScheduler", "DEISMultistepScheduler", "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler", "EulerDiscreteScheduler", "HeunDiscreteScheduler", "LMSDiscreteScheduler",
    "PNDMScheduler", "UniPCMultistepScheduler",
})
# The DiT training schedule in diffusers' terms. "trailing" spacing starts at t=999 and keeps the
# timesteps integral, which the graph's int64 t input needs (Lin et al. 2024 recommend it for few steps).
DIFFUSERS_CONFIG = {
    "num_train_timesteps": NUM_TIMESTEPS, "beta_start": BETA_START, "beta_end": BETA_END,
    "beta_schedule": "linear", "prediction_type": "epsilon", "timestep_spacing": "trailing",
}


def diffusers_sampler(scheduler: str, steps: int = DIFFUSERS_STEPS) -> Sampler:
    """A Sampler driving the diffusers scheduler `scheduler` (a short name or a class name) for `steps` steps."""
    solver = diffusers_scheduler(scheduler, steps)
    timesteps = _integer_timesteps(solver.timesteps, scheduler)
    return Sampler(scheduler, timesteps, functools.partial(start_diffusers, scheduler=scheduler, steps=steps), steps,
                   stochastic=is_stochastic(solver))


def is_stochastic(solver) -> bool:
    """Whether a diffusers scheduler's steps draw noise: a class not known to be deterministic, or an SDE variant."""
    algorithm = str(solver.config.get("algorithm_type") or "")
    return type(solver).__name__ not in DETERMINISTIC_SCHEDULERS or algorithm.startswith("sde")


def start_diffusers(timesteps: tuple[int, ...], x, noise_source: NoiseSource | None, *, scheduler: str,
                    steps: int) -> Run:
    """A run with a fresh scheduler on x's device; DiTError if it does not make `timesteps`."""
    solver = diffusers_scheduler(scheduler, steps, x.device)
    scheduler_timesteps = list(solver.timesteps)  # the scheduler's own values (float for some), one per call
    if _integer_timesteps(scheduler_timesteps, scheduler) != tuple(timesteps):
        raise DiTError(f"scheduler {scheduler!r} at {steps} steps does not make the sampler's timesteps; "
                       f"build the sampler with diffusers_sampler({scheduler!r}, {steps})")
    step_kwargs = {}
    if noise_source is not None and "generator" in inspect.signature(solver.step).parameters:
        step_kwargs["generator"] = noise_source.generator  # ancestral schedulers draw from it (a list: one per sample)

    def model_input(k, x):
        return solver.scale_model_input(x, scheduler_timesteps[k]).float()

    def step(k, x, eps, var_values):
        return solver.step(eps, scheduler_timesteps[k], x, return_dict=False, **step_kwargs)[0].float()

    return Run((x * solver.init_noise_sigma).float(), step, model_input)


def sample_diffusers(denoiser, x, steps: int, y, cfg_scale, noise_source=None,
                     callback: Callback | None = None, scheduler: str = "dpm++"):
    """Few-step sampling with a diffusers scheduler on eps predictions; the learned variance is unused."""
    return diffusers_sampler(scheduler, steps)(denoiser, x, y, cfg_scale, noise_source, callback)


def _integer_timesteps(timesteps, scheduler: str) -> tuple[int, ...]:
    """The scheduler's timesteps as ints for the graph's int64 t; DiTError if one is fractional."""
    values = [float(t) for t in timesteps]
    if any(abs(v - round(v)) > 1e-4 for v in values):
        raise DiTError(f"scheduler {scheduler!r} made fractional timesteps; the graph takes integer t, "
                       f"choose another sampler")
    return tuple(int(round(v)) for v in values)


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
