"""The Sampler and its step API: samplers driven one denoiser call at a time.

    sampler = sampler_from_name("ddpm", 250)          # runtime.sampling: a Sampler (name, timesteps, start)
    x = sampler(denoiser, x, y, cfg_scale, noise)      # the whole loop, as sample.py runs it

    a = sampler.begin(x, y, cfg_scale, noise)          # or step by step: a Trajectory per group of samples
    b = other_sampler.begin(x2, y2, cfg2, noise2)
    while not (a.done and b.done):
        step(denoiser, [a, b])                         # one denoiser call for both, each at its own step

A Trajectory is a group of samples that started together with one sampler: its latents, labels, cfg
scales, guidance interval, noise source and its own step index k. step() stacks the model inputs of any number of
trajectories, each at its own timestep, into one denoiser call, splits the outputs and lets each
take its step: samples at different steps, of different samplers and step counts share a call (the
service's step-level batching, and cached steps, build on it). The whole-loop call is one
trajectory stepped to its end.

x (n, C, L, L) float32 initial latents and y (n,) int64 labels on the denoiser's device, cfg_scale (n,) float32
(a trajectory keeps it on the CPU); C comes from x alone. step() asks the denoiser for one call for all the
trajectories (Denoiser.call_trajectories: stacked rows; a caching denoiser refreshes or reuses per trajectory). The denoiser returns (eps, var_values), var_values None
for a model without learned sigma. A Sampler's timesteps are the one source of truth for its
schedule; samplers never know which backend runs the denoiser. callback, if given, gets
{"x", "i", "t", "total"} after every denoiser call of its trajectory. NaN or inf in the latents
raises DiTError naming the step and timestep where it first appeared.
"""

from dataclasses import dataclass
from typing import Callable, NamedTuple, Protocol, Sequence

import torch

from dit_ref.errors import DiTError

Callback = Callable[[dict], None]


class NoiseSource(Protocol):
    """Step noise for a trajectory's samples (runtime.sampling.noise): noise(x) -> noise like x (n, C, L, L)."""

    generator: "torch.Generator | list[torch.Generator]"  # one for the run, or one per sample (per-sample seeding)

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...


def same_input(k: int, x: torch.Tensor) -> torch.Tensor:
    """The denoiser sees the latents themselves (every sampler but diffusers' scaled ones)."""
    return x


class Run(NamedTuple):
    """One trajectory's step functions, made fresh for every trajectory by a sampler's start function."""

    x: torch.Tensor  # the latents the loop starts from, (n, C, L, L)
    step: Callable  # step(k, x, eps, var_values) -> the latents after the k-th denoiser call
    model_input: Callable = same_input  # model_input(k, x) -> what the denoiser sees at call k


Start = Callable[[tuple, torch.Tensor, "NoiseSource | None"], Run]  # start(timesteps, x, noise) -> Run


@dataclass(frozen=True)
class CallOptions:
    """What every denoiser call of a trajectory is asked beyond its samples (a request plan's, runtime.plan)."""

    guidance_interval: tuple[int, int] | None = None  # (LO, HI): guide only the calls whose t has LO <= t <= HI
    cache: object = None  # a runtime.caching.CachePolicy: refresh or reuse cached features (a denoiser with them)


@dataclass(frozen=True)
class Sampler:
    """A sampler with its timesteps bound; stateless (every trajectory gets its own Run)."""

    name: str  # "ddpm", "ddim" or a diffusers scheduler name
    timesteps: tuple[int, ...]  # original timesteps (0..999) of the denoiser calls, in sampling order
    start: Start  # start(timesteps, x, noise_source) -> Run; the same signature for every sampler
    steps: int  # the step count it was made for (a diffusers scheduler may call the denoiser more often)
    stochastic: bool  # its steps draw noise (DDPM, ancestral/SDE schedulers): no ODE, so no paired reference at
    # other step counts (runtime.tuning.reference); set by each factory

    @property
    def num_calls(self) -> int:
        """Denoiser calls per run (for progress bars)."""
        return len(self.timesteps)

    def begin(self, x, y, cfg_scale, noise_source, callback: Callback | None = None, backend: str = "denoiser",
              options: CallOptions = CallOptions()) -> "Trajectory":
        """A Trajectory of these samples at step 0 (backend: the denoiser's name, for error messages; options:
        what its calls are asked beyond the samples, a guidance interval and a cache policy)."""
        run = self.start(self.timesteps, x, noise_source)
        watch = FiniteWatch(x.device, self.timesteps, backend)
        return Trajectory(self, run, run.x, y, cfg_scale.to("cpu", torch.float32), watch, callback, options=options)

    def __call__(self, denoiser, x, y, cfg_scale, noise_source, callback: Callback | None = None,
                 options: CallOptions = CallOptions()):
        """The whole loop: x (n, C, L, L) initial latents -> the final latents."""
        trajectory = self.begin(x, y, cfg_scale, noise_source, callback, denoiser.name, options)
        while not trajectory.done:
            step(denoiser, [trajectory])
        return trajectory.result()


@dataclass
class Trajectory:
    """Samples on their way through one sampler, all at step index k; driven by step()."""

    sampler: Sampler
    run: Run
    x: torch.Tensor  # (n, C, L, L) the latents after k calls
    y: torch.Tensor  # (n,) int64
    cfg_scale: torch.Tensor  # (n,) float32, on the CPU: the denoiser decides the guided rows from it without a sync
    watch: "FiniteWatch"
    callback: Callback | None = None
    k: int = 0  # denoiser calls made
    options: CallOptions = CallOptions()  # the guidance interval and cache policy of its calls
    cache_state: object = None  # what a caching denoiser keeps for these samples (runtime.caching.CacheState)

    def __len__(self) -> int:
        return len(self.x)

    @property
    def done(self) -> bool:
        return self.k == self.sampler.num_calls

    @property
    def t(self) -> int:
        """The original timestep of the next call."""
        return self.sampler.timesteps[self.k]

    def model_inputs(self) -> tuple[torch.Tensor, ...]:
        """(x, t, y, cfg_scale) of this trajectory's next denoiser call, each with n rows; outside the guidance
        interval the cfg scale is 1 (the denoiser then runs no unconditional pass for these rows)."""
        return self.run.model_input(self.k, self.x), torch.full_like(self.y, self.t), self.y, self.call_cfg_scale()

    def call_cfg_scale(self) -> torch.Tensor:
        """(n,) the cfg scales of the next call: the samples' own inside the interval, 1 outside it."""
        interval = self.options.guidance_interval
        if interval is None or guided_at(self.t, interval):
            return self.cfg_scale
        return torch.ones_like(self.cfg_scale)

    def advance(self, eps, var_values) -> None:
        """Take step k with the denoiser's outputs for these samples."""
        self.x = self.run.step(self.k, self.x, eps, var_values)  # (n, C, L, L)
        self.watch.update(self.k, self.x)
        self.k += 1
        if self.callback is not None:
            self.callback({"x": self.x, "i": self.k - 1, "t": self.sampler.timesteps[self.k - 1],
                           "total": self.sampler.num_calls})

    def result(self) -> torch.Tensor:
        """The final latents (n, C, L, L); DiTError if a step made NaN or inf."""
        self.watch.check()
        return self.x


def step(denoiser, trajectories: Sequence[Trajectory]) -> None:
    """One denoiser call for every trajectory (each at its own step and timestep), then each steps.

    The caller keeps the rows within the denoiser's batch range; finished trajectories are refused.
    """
    if any(trajectory.done for trajectory in trajectories):
        raise DiTError("internal: a finished trajectory was stepped")
    for trajectory, (eps, var_values) in zip(trajectories, denoiser.call_trajectories(trajectories)):
        trajectory.advance(eps, var_values)


def guided_at(t: int, interval: tuple[int, int]) -> bool:
    """Whether timestep t (0..999) lies in the guidance interval (LO, HI), both ends included."""
    return interval[0] <= t <= interval[1]


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
