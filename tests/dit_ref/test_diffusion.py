import numpy as np
import pytest
import torch

from dit_ref import DiTError
from dit_ref.diffusion import (
    ddim_step, ddpm_step, linear_betas, respaced_timesteps, schedule_from_spec, schedule_from_timesteps,
)


def test_respacing_250_golden():
    # facebookresearch/DiT diffusion/respace.py space_timesteps(1000, "250"): stride 999/249 rounded.
    steps = respaced_timesteps("250")
    assert len(steps) == 250
    assert steps[:4] == [0, 4, 8, 12] and steps[-3:] == [991, 995, 999]


def test_respacing_ddim25_golden():
    # space_timesteps(1000, "ddim25"): first stride with exactly 25 steps is 40 -> 0, 40, ..., 960.
    assert respaced_timesteps("ddim25") == list(range(0, 1000, 40))
    assert respaced_timesteps("ddim50") == list(range(0, 1000, 20))


def test_respacing_sections():
    # "10,15" splits 1000 into two sections of 500 with 10 and 15 evenly spaced steps.
    steps = respaced_timesteps("10,15")
    assert len(steps) == 25 and steps[0] == 0 and steps[9] == 499 and steps[10] == 500 and steps[-1] == 999


@pytest.mark.parametrize("spec", ["abc", "ddimx", "ddim600", "0", "2000"])
def test_bad_step_specs(spec):
    with pytest.raises(DiTError):
        respaced_timesteps(spec)


def test_full_schedule_is_the_linear_schedule():
    schedule = schedule_from_spec(1000)
    assert np.abs(schedule.betas - linear_betas()).max() < 1e-15
    assert linear_betas()[0] == 1e-4 and linear_betas()[-1] == 0.02
    assert schedule.betas.dtype == np.float64


def test_respaced_betas_keep_alphas_cumprod():
    # Respacing keeps abar at the kept timesteps: prod(1 - new_betas) == abar[t_i].
    base = np.cumprod(1 - linear_betas())
    schedule = schedule_from_timesteps(respaced_timesteps(250))
    err = np.abs(schedule.alphas_cumprod - base[schedule.timesteps]).max()
    print(f"max |abar_respaced - abar[t]| = {err:.2e}")
    assert err < 1e-12


def test_ddpm_step_matches_closed_form():
    # Posterior mean of q(x_{t-1} | x_t, x0) for the learned range at v = -1 (min log variance).
    schedule = schedule_from_spec(10)
    gen = torch.Generator().manual_seed(0)
    x, eps, noise = (torch.randn(2, 4, 8, 8, generator=gen) for _ in range(3))
    i = 5
    abar, abar_prev, beta = schedule.alphas_cumprod[i], schedule.alphas_cumprod_prev[i], schedule.betas[i]
    x0 = (x.double() - np.sqrt(1 - abar) * eps.double()) / np.sqrt(abar)
    mean = (np.sqrt(abar_prev) * beta * x0 + np.sqrt(1 - beta) * (1 - abar_prev) * x.double()) / (1 - abar)
    variance = beta * (1 - abar_prev) / (1 - abar)
    expected = mean + np.sqrt(variance) * noise.double()
    out = ddpm_step(schedule, i, x, eps, -torch.ones_like(x), noise)
    err = (out.double() - expected).abs().max().item()
    print(f"ddpm step vs closed form: {err:.2e}")
    assert out.dtype == torch.float32 and err < 1e-5
    # The last step adds no noise.
    assert torch.equal(ddpm_step(schedule, 0, x, eps, torch.zeros_like(x), noise),
                       ddpm_step(schedule, 0, x, eps, torch.zeros_like(x), 0 * noise))


def test_ddim_eta0_is_deterministic_and_matches_formula():
    schedule = schedule_from_spec("ddim25")
    gen = torch.Generator().manual_seed(1)
    x, eps = torch.randn(1, 4, 8, 8, generator=gen), torch.randn(1, 4, 8, 8, generator=gen)
    i = 12
    abar, abar_prev = schedule.alphas_cumprod[i], schedule.alphas_cumprod_prev[i]
    x0 = (x.double() - np.sqrt(1 - abar) * eps.double()) / np.sqrt(abar)
    expected = np.sqrt(abar_prev) * x0 + np.sqrt(1 - abar_prev) * eps.double()
    out = ddim_step(schedule, i, x, eps, noise=torch.randn_like(x), eta=0.0)
    err = (out.double() - expected).abs().max().item()
    print(f"ddim step vs closed form: {err:.2e}")
    assert err < 1e-5
