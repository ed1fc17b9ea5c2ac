"""The one Sampler shape: timesteps as the source of truth, var_values None, any latent channel count."""

import dataclasses

import numpy as np
import pytest
import torch

from dit_ref.diffusion import fixed_large_log_variance, schedule_from_spec
from dit_ref.errors import DiTError
from runtime.sampling.noise import OfficialNoise
from runtime.denoiser import Denoiser
from runtime.sampling import DIFFUSERS_SCHEDULERS, sampler_from_name

L = 4  # latent side: the fake denoiser makes any size equally cheap


class FakeDenoiser(Denoiser):
    """A scripted denoiser: eps and var_values are fixed functions of x and t; records each call's t."""

    def __init__(self, learned_sigma: bool = True):
        self.device, self.name, self.learned_sigma = torch.device("cpu"), "fake", learned_sigma
        self.timesteps = []  # t of every call, in call order

    def __call__(self, x, t, y, cfg_scale):
        self.timesteps.append(int(t[0]))
        eps = 0.5 * torch.tanh(x) + 1e-4 * t.float().view(-1, 1, 1, 1)  # (n, C, L, L)
        var_values = torch.tanh(0.3 * x) if self.learned_sigma else None  # (n, C, L, L) or None
        return eps, var_values


class RecordingNoise(OfficialNoise):
    """OfficialNoise that keeps every step noise it hands out."""

    def __init__(self, seed: int):
        super().__init__(seed)
        self.drawn = []

    def __call__(self, x):
        noise = super().__call__(x)
        self.drawn.append(noise)
        return noise


def run(sampler, denoiser, channels: int = 4, n: int = 2, seed: int = 0, callback=None):
    x = torch.randn(n, channels, L, L, generator=torch.Generator().manual_seed(seed))  # (n, C, L, L)
    y, scale = torch.arange(n), torch.full((n,), 4.0)
    return sampler(denoiser, x, y, scale, OfficialNoise(seed + 1), callback)


@pytest.mark.parametrize("steps", [None, 3])
@pytest.mark.parametrize("name", ["ddpm", "ddim", *DIFFUSERS_SCHEDULERS])
def test_timesteps_are_descending_and_are_the_calls_made(name, steps):
    sampler, denoiser = sampler_from_name(name, steps), FakeDenoiser()
    run(sampler, denoiser)
    timesteps = sampler.timesteps
    print(f"{name} ({steps} steps): {sampler.num_calls} calls at {timesteps[:8]}...")
    assert isinstance(timesteps, tuple) and all(type(t) is int and 0 <= t < 1000 for t in timesteps)
    # Descending; heun and pndm call the model twice at some timesteps, ours never repeat one.
    assert all(a >= b for a, b in zip(timesteps, timesteps[1:]))
    if name in ("ddpm", "ddim"):
        assert len(set(timesteps)) == len(timesteps)
    assert sampler.num_calls == len(denoiser.timesteps) and tuple(denoiser.timesteps) == timesteps


def official_fixed_large_step(timesteps, i, x, eps, noise):
    """p_sample with ModelVarType.FIXED_LARGE, written out in float64 numpy from the definitions.

    facebookresearch/DiT diffusion/gaussian_diffusion.py (p_mean_variance: FIXED_LARGE is
    append(posterior_variance[1], betas[1:])) and respace.py (respaced betas from the kept abar).
    """
    base_abar = np.cumprod(1.0 - np.linspace(1e-4, 0.02, 1000, dtype=np.float64))
    kept = base_abar[np.asarray(timesteps)]
    betas = 1.0 - kept / np.append(1.0, kept[:-1])
    abar = np.cumprod(1.0 - betas)
    abar_prev = np.append(1.0, abar[:-1])
    posterior_variance = betas * (1.0 - abar_prev) / (1.0 - abar)
    variance = np.append(posterior_variance[1], betas[1:])
    x, eps, noise = (v.double().numpy() for v in (x, eps, noise))
    x0 = np.sqrt(1.0 / abar[i]) * x - np.sqrt(1.0 / abar[i] - 1.0) * eps
    mean = (betas[i] * np.sqrt(abar_prev[i]) / (1.0 - abar[i]) * x0
            + (1.0 - abar_prev[i]) * np.sqrt(1.0 - betas[i]) / (1.0 - abar[i]) * x)
    return mean + np.sqrt(variance[i]) * noise, variance


def test_ddpm_without_learned_sigma_takes_the_fixed_large_step():
    # The first step of a 10-step run (step index 9, t 999) through the Sampler, var_values None.
    timesteps = [round(j * 999 / 9) for j in range(10)]  # space_timesteps(1000, "10")
    sampler, denoiser, noise = sampler_from_name("ddpm", 10), FakeDenoiser(learned_sigma=False), RecordingNoise(1)
    x = torch.randn(2, 4, L, L, generator=torch.Generator().manual_seed(0))
    after = []
    sampler(denoiser, x, torch.tensor([1, 2]), torch.full((2,), 4.0), noise, lambda info: after.append(info["x"]))
    eps, _ = FakeDenoiser(learned_sigma=False)(x, torch.full((2,), 999), None, None)
    expected, _ = official_fixed_large_step(timesteps, 9, x, eps, noise.drawn[0])
    error = np.abs(after[0].double().numpy() - expected).max() / np.abs(expected).max()
    print(f"DDPM fixed-large step vs float64 numpy: max rel err {error:.2e} (tolerance 1e-5, float32 math)")
    assert error < 1e-5


def test_fixed_large_log_variance_is_the_official_array():
    timesteps = [round(j * 999 / 9) for j in range(10)]
    _, variance = official_fixed_large_step(timesteps, 0, torch.zeros(1), torch.zeros(1), torch.zeros(1))
    schedule, like = schedule_from_spec(10), torch.zeros(1)
    ours = np.array([fixed_large_log_variance(schedule, i, like).item() for i in range(10)])
    error = np.abs(ours - np.log(variance)).max()
    print(f"fixed-large log variance vs float64 numpy: max abs err {error:.2e} (tolerance 1e-6, float32)")
    assert error < 1e-6


@pytest.mark.parametrize("learned_sigma", [True, False])
@pytest.mark.parametrize("channels", [1, 16])
@pytest.mark.parametrize("name", ["ddpm", "ddim", "dpm++"])
def test_any_latent_channel_count_runs(name, channels, learned_sigma):
    sampler, denoiser = sampler_from_name(name, 4), FakeDenoiser(learned_sigma)
    x = run(sampler, denoiser, channels)
    print(f"{name}, {channels} channels, learned sigma {learned_sigma}: |x| max {x.abs().max():.2f}")
    assert x.shape == (2, channels, L, L) and x.dtype == torch.float32 and torch.isfinite(x).all()
    assert len(denoiser.timesteps) == sampler.num_calls


@pytest.mark.parametrize("name", ["ddpm", "dpm++", "euler-ancestral"])
def test_a_sampler_keeps_no_state_between_calls(name):
    # diffusers schedulers keep a step index and multistep history: each call must make a fresh one.
    sampler = sampler_from_name(name, 4)
    first, second = (run(sampler, FakeDenoiser()) for _ in range(2))
    assert torch.equal(first, second)


def test_diffusers_run_refuses_timesteps_its_scheduler_does_not_make():
    sampler = sampler_from_name("dpm++", 4)
    edited = dataclasses.replace(sampler, timesteps=sampler.timesteps[1:])
    with pytest.raises(DiTError, match="does not make the sampler's timesteps"):
        run(edited, FakeDenoiser())
