"""Samplers against the official sampling loop (sample.py / sample_ddp.py written out literally)."""

import numpy as np
import pytest
import torch
from runtime_helpers import ScriptedDenoiser

from dit_ref.diffusion import linear_betas, respaced_timesteps, schedule_from_spec, schedule_from_timesteps
from dit_ref.errors import DiTError
from runtime.denoiser import Denoiser
from runtime.generate import write_samples
from runtime.plan import ModelFacts, make_plan
from testing_utils import max_rel_error
from runtime.sampling.noise import OfficialNoise, PerSampleNoise
from runtime.sampling.diffusers_adapter import DIFFUSERS_SCHEDULERS, diffusers_scheduler, is_stochastic, sample_diffusers
from runtime.sampling import FiniteWatch, sampler_from_name
from runtime.sampling.official import ddim_sampler, ddim_timesteps, sample_ddim, sample_ddpm

L = 32  # latent side at 256 px
LATENT_SHAPE = (4, L, L)  # (C, L, L): SD VAE latents


class ListOutput:
    """Collects what write_samples writes."""

    def __init__(self):
        self.batches = []

    def add(self, batch):
        self.batches.append(batch)


def sample_all(denoiser, sampler, labels, batch_size, seed, cfg_scale, output):
    """dit-run's path: a plan of these labels (None: drawn as sample_ddp.py does), latents into output."""
    plan = make_plan(labels, sampler=sampler, cfg_scale=cfg_scale, seed=seed, batch_size=batch_size, decoder="none")
    write_samples(denoiser, plan.check(ModelFacts.of(denoiser)), None, output)


def extract(array, t, shape):
    """guided-diffusion's _extract_into_tensor: gather in float64 at t, cast to float32, broadcast."""
    out = torch.from_numpy(array)[t].float()
    while out.ndim < len(shape):
        out = out[..., None]
    return out + torch.zeros(shape)


class OfficialSchedule:
    """The respaced coefficients as facebookresearch/DiT computes them (written out here, not taken from dit_ref):
    diffusion/gaussian_diffusion.py get_named_beta_schedule("linear") (lines 98-115) and GaussianDiffusion.__init__
    (lines 174-201); diffusion/respace.py space_timesteps (lines 12-62) and SpacedDiffusion.__init__ (lines 75-86)."""

    def __init__(self, steps: int, num_timesteps: int = 1000):
        scale = 1000 / num_timesteps
        base = np.linspace(scale * 0.0001, scale * 0.02, num_timesteps, dtype=np.float64)
        use = self.space_timesteps(num_timesteps, steps)
        last, betas, self.timestep_map = 1.0, [], []
        for i, alpha_cumprod in enumerate(np.cumprod(1.0 - base)):
            if i in use:
                betas.append(1 - alpha_cumprod / last)
                last = alpha_cumprod
                self.timestep_map.append(i)
        betas = np.array(betas)
        alphas = 1.0 - betas
        cumprod = np.cumprod(alphas)
        previous = np.append(1.0, cumprod[:-1])
        self.betas = betas
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / cumprod)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / cumprod - 1)
        posterior_variance = betas * (1.0 - previous) / (1.0 - cumprod)
        self.posterior_log_variance_clipped = np.log(np.append(posterior_variance[1], posterior_variance[1:]))
        self.posterior_mean_coef1 = betas * np.sqrt(previous) / (1.0 - cumprod)
        self.posterior_mean_coef2 = (1.0 - previous) * np.sqrt(alphas) / (1.0 - cumprod)

    @staticmethod
    def space_timesteps(num_timesteps: int, count: int) -> set[int]:
        """One section of `count` steps: a fractional stride over the whole schedule, rounded."""
        stride = (num_timesteps - 1) / (count - 1) if count > 1 else 1
        return {round(k * stride) for k in range(count)}


def official_forward_with_cfg(model, x, t, y, cfg_scale):
    """models.py DiT.forward_with_cfg (lines 250-266): the plain forward on [half, half], guidance on 3 channels."""
    half = x[: len(x) // 2]
    model_out = model(torch.cat([half, half], dim=0), t, y)
    eps, rest = model_out[:, :3], model_out[:, 3:]
    cond_eps, uncond_eps = torch.split(eps, len(eps) // 2, dim=0)
    half_eps = uncond_eps + cfg_scale * (cond_eps - uncond_eps)
    return torch.cat([torch.cat([half_eps, half_eps], dim=0), rest], dim=1)


def official_p_sample_loop(model, z, y, cfg_scale, steps):
    """sample.py's p_sample_loop on the doubled batch, global RNG, official p_mean_variance math.

    facebookresearch/DiT diffusion/gaussian_diffusion.py (p_sample, p_mean_variance with
    LEARNED_RANGE, clip_denoised=False) and respace.py (_WrappedModel maps i -> timestep_map[i]).
    """
    schedule = OfficialSchedule(steps)
    timestep_map = torch.tensor(schedule.timestep_map)
    img = z
    for i in reversed(range(len(schedule.betas))):
        t = torch.tensor([i] * img.shape[0])
        out = official_forward_with_cfg(model, img, timestep_map[t], y, cfg_scale)  # (2n, 8, L, L)
        eps, var_values = out.split(4, dim=1)
        min_log = extract(schedule.posterior_log_variance_clipped, t, img.shape)
        max_log = extract(np.log(schedule.betas), t, img.shape)
        frac = (var_values + 1) / 2
        log_variance = frac * max_log + (1 - frac) * min_log
        x0 = extract(schedule.sqrt_recip_alphas_cumprod, t, img.shape) * img - extract(
            schedule.sqrt_recipm1_alphas_cumprod, t, img.shape) * eps
        mean = extract(schedule.posterior_mean_coef1, t, img.shape) * x0 + extract(
            schedule.posterior_mean_coef2, t, img.shape) * img
        noise = torch.randn_like(img)
        nonzero_mask = (t != 0).float().view(-1, 1, 1, 1)
        img = mean + nonzero_mask * torch.exp(0.5 * log_variance) * noise
    return img


def double_for_cfg(z, y):
    return torch.cat([z, z], 0), torch.cat([y, torch.tensor([1000] * len(y))], 0)


def test_dedicated_generator_draws_what_the_global_rng_draws():
    # sample.py seeds the global RNG; dit-run uses its own generator: same numbers on the same device.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        expected = [torch.randn(3, 4, L, L), torch.randn(6, 4, L, L), torch.randint(0, 1000, (3,))]
    noise = OfficialNoise(7, "cpu")
    ours = [noise.initial(3, LATENT_SHAPE), torch.randn(6, 4, L, L, generator=noise.generator),
            noise.labels(3, 1000)]
    for a, b in zip(ours, expected):
        assert torch.equal(a, b)


def test_sampler_reproduces_sample_py_literally(tiny_model, reference):
    model, labels, seed, cfg_scale, steps = tiny_model("S/8", 256, 0), [207, 360, 387], 3, 4.0, 6
    with torch.random.fork_rng(devices=[]), torch.inference_mode():
        torch.manual_seed(seed)
        z = torch.randn(len(labels), 4, L, L)
        z2, y2 = double_for_cfg(z, torch.tensor(labels))
        official, _ = official_p_sample_loop(model, z2, y2, cfg_scale, steps).chunk(2, dim=0)
    sampler, out = sampler_from_name("ddpm", steps), ListOutput()
    with torch.inference_mode():
        sample_all(reference, sampler, labels, len(labels), seed, cfg_scale, out)
    ours = torch.from_numpy(out.batches[0])
    error = (ours - official).abs().max().item()
    print(f"dit-run vs sample.py literal, {steps} DDPM steps: max abs diff {error:.3e} "
          f"(latents up to {official.abs().max():.1f}), bitwise equal: {torch.equal(ours, official)}")
    assert torch.equal(ours, official)  # bitwise, as the README says


def test_random_labels_and_batches_follow_sample_ddp(tiny_model, reference):
    # sample_ddp.py, one process: torch.manual_seed(seed); per batch z = randn(n, ...), y = randint(0, 1000, (n,)).
    model, seed, cfg_scale, steps, n = tiny_model("S/8", 256, 0), 11, 1.5, 4, 2
    official = []
    with torch.random.fork_rng(devices=[]), torch.inference_mode():
        torch.manual_seed(seed)
        for _ in range(2):
            z = torch.randn(n, 4, L, L)
            y = torch.randint(0, 1000, (n,))
            z2, y2 = double_for_cfg(z, y)
            official.append(official_p_sample_loop(model, z2, y2, cfg_scale, steps)[:n])
    out = ListOutput()
    with torch.inference_mode():
        sample_all(reference, sampler_from_name("ddpm", steps), [None] * 2 * n, n, seed, cfg_scale, out)
    error = (torch.from_numpy(np.concatenate(out.batches)) - torch.cat(official)).abs().max().item()
    print(f"dit-run vs sample_ddp.py literal, 2 batches of {n}: max abs diff {error:.3e}")
    assert torch.equal(torch.from_numpy(np.concatenate(out.batches)), torch.cat(official))  # bitwise


def test_ddim_is_deterministic(reference):
    x = OfficialNoise(0).initial(2, LATENT_SHAPE)
    y, scale = torch.tensor([1, 2]), torch.full((2,), 4.0)
    schedule = schedule_from_timesteps(ddim_timesteps(10))
    runs = [sample_ddim(reference, x, schedule, y, scale, OfficialNoise(seed)) for seed in (1, 1, 2)]
    print(f"DDIM eta 0, 10 steps: runs equal {torch.equal(runs[0], runs[1])}, other noise seed equal "
          f"{torch.equal(runs[0], runs[2])}")
    assert torch.equal(runs[0], runs[1]) and torch.equal(runs[0], runs[2])


def test_ddim_steps_use_ddimN_respacing_when_a_stride_exists():
    # guided-diffusion README: DDIM runs use --timestep_respacing ddim25 (stride 40: 0, 40, ..., 960).
    assert ddim_timesteps(25) == list(range(0, 1000, 40))
    assert ddim_timesteps(600) == respaced_timesteps(600)  # no integer stride gives 600 steps


def test_nan_names_the_step_and_timestep(reference):
    schedule, at = schedule_from_spec(10), 3
    expected_t = int(schedule.timesteps[::-1][at])
    for value in (float("nan"), float("inf")):
        denoiser = ScriptedDenoiser(reference, at=at, value=value)
        with pytest.raises(DiTError) as caught:
            sample_ddpm(denoiser, OfficialNoise(0).initial(2, LATENT_SHAPE), schedule, torch.tensor([1, 2]),
                        torch.full((2,), 4.0), OfficialNoise(1))
        print(caught.value)
        assert f"step {at + 1} of 10 (step index {at}, timestep {expected_t})" in str(caught.value)
        assert denoiser.calls == at + 1  # stopped there


def test_deferred_watch_finds_the_first_bad_step():
    # The GPU path: no host sync per step, the first bad step is remembered and reported at a check.
    watch = FiniteWatch(torch.device("cpu"), [999, 666, 333, 0], "test", check_every=4, eager=False)
    good, bad = torch.zeros(2), torch.tensor([0.0, float("nan")])
    watch.update(0, good)
    watch.update(1, bad)
    watch.update(2, bad)
    with pytest.raises(DiTError, match=r"step 2 of 4 \(step index 1, timestep 666\)"):
        watch.update(3, good)


def test_callback_sees_every_step(reference):
    seen = []
    sampler = sampler_from_name("ddpm", 5)
    sampler(reference, OfficialNoise(0).initial(1, LATENT_SHAPE), torch.tensor([3]), torch.full((1,), 4.0),
            OfficialNoise(0), callback=lambda info: seen.append((info["i"], info["t"], info["total"])))
    assert seen == [(k, t, 5) for k, t in enumerate(respaced_timesteps(5)[::-1])]


def test_diffusers_schedulers_get_the_dit_schedule():
    solver = diffusers_scheduler("dpm++", 20)
    error = np.abs(solver.betas.double().numpy() - linear_betas()).max()
    print(f"diffusers betas vs dit_ref linear betas: {error:.2e}")
    assert error < 1e-8 and solver.config.prediction_type == "epsilon"
    timesteps = [int(t) for t in solver.timesteps]
    assert len(timesteps) == 20 and timesteps[0] == 999 and all(float(t) == int(t) for t in solver.timesteps)
    with pytest.raises(DiTError, match="unknown sampler"):
        sampler_from_name("nope")
    with pytest.raises(DiTError, match="does not take eps"):
        sampler_from_name("FlowMatchEulerDiscreteScheduler")


def test_diffusers_ddim_matches_our_ddim(reference):
    # The same DDIM update through diffusers' stateful scheduler and through dit_ref's pure step:
    # a check that sample_diffusers drives schedulers correctly (diffusers' schedule is float32).
    x, y, scale = OfficialNoise(0).initial(2, LATENT_SHAPE), torch.tensor([5, 6]), torch.full((2,), 1.5)
    theirs = sample_diffusers(reference, x, 10, y, scale, OfficialNoise(1), scheduler="ddim-diffusers")
    trailing = [int(t) for t in diffusers_scheduler("ddim-diffusers", 10).timesteps]
    ours = sample_ddim(reference, x, schedule_from_timesteps(sorted(trailing)), y, scale)
    error = ((theirs - ours).abs().max() / ours.abs().max()).item()
    print(f"diffusers DDIMScheduler vs sample_ddim, 10 steps: max rel err {error:.2e}")
    assert error < 1e-4


@pytest.mark.parametrize("name", ["dpm++", "euler", "euler-ancestral", "heun", "unipc"])
def test_diffusers_samplers_run(reference, name):
    sampler = sampler_from_name(name, 4)
    calls = []
    x = sampler(reference, OfficialNoise(0).initial(2, LATENT_SHAPE), torch.tensor([1, 2]), torch.full((2,), 4.0),
                OfficialNoise(1), callback=calls.append)
    print(f"{name}: {sampler.num_calls} denoiser calls, |x| max {x.abs().max():.2f}")
    assert x.shape == (2, 4, L, L) and x.dtype == torch.float32 and torch.isfinite(x).all()
    assert len(calls) == sampler.num_calls


class SmoothDenoiser(Denoiser):
    """eps = 0.9 tanh(x): a cheap field that moves the latents, for what does not need a model."""

    name = "smooth"

    def __call__(self, x, t, y, cfg_scale):
        return 0.9 * torch.tanh(x), None


@pytest.mark.parametrize("name", ["ddpm", "ddim", *DIFFUSERS_SCHEDULERS, "DDPMScheduler", "LCMScheduler",
                                  "DPMSolverSinglestepScheduler", "LMSDiscreteScheduler"])
def test_a_sampler_is_stochastic_exactly_when_its_pictures_depend_on_the_step_noise(name):
    sampler = sampler_from_name(name, 6)
    x, y, scale = OfficialNoise(0).initial(2, (4, 8, 8)), torch.tensor([1, 2]), torch.full((2,), 4.0)
    runs = [sampler(SmoothDenoiser(), x, y, scale, PerSampleNoise(seed, [0, 1])) for seed in (1, 2)]
    moved = (runs[0] - runs[1]).abs().max().item()
    print(f"{name}: stochastic {sampler.stochastic}, max difference between two noise seeds {moved:.2e}")
    assert sampler.stochastic == (moved > 0)


def test_sde_variants_of_deterministic_schedulers_are_stochastic():
    import diffusers

    assert not is_stochastic(diffusers.DPMSolverMultistepScheduler(algorithm_type="dpmsolver++"))
    assert is_stochastic(diffusers.DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++"))
    assert is_stochastic(diffusers.TCDScheduler())  # not known to be deterministic: population metrics only
    assert ddim_sampler(6, eta=1.0).stochastic and not ddim_sampler(6).stochastic


def test_trajectories_at_different_steps_share_a_denoiser_call(reference):
    """The step API: a DDPM group and a DDIM group that joins two calls later, stepped in shared calls, give
    what each gives alone (the same rows in a bigger batch; bound 1e-5 relative, as per-sample seeding's)."""
    from runtime.sampling import step
    from runtime.sampling.noise import PerSampleNoise

    ddpm, ddim = sampler_from_name("ddpm", 6), sampler_from_name("dpm++", 4)
    groups = [(ddpm, [1, 2], 0), (ddim, [3], 2)]  # (sampler, labels, the shared call it joins at)

    def begin(sampler, labels, first):
        noise = PerSampleNoise(5, range(first, first + len(labels)))
        x, y = noise.draw_batch(labels, LATENT_SHAPE, 1000)
        return sampler.begin(x, y, torch.full((len(labels),), 4.0), noise)

    def alone(sampler, labels, first):
        trajectory = begin(sampler, labels, first)
        while not trajectory.done:
            step(reference, [trajectory])
        return trajectory.result()

    trajectories, pending, calls = [], list(groups), 0
    while pending or not all(t.done for t in trajectories):
        while pending and pending[0][2] <= calls:
            trajectories.append(begin(*pending.pop(0)))
        step(reference, [t for t in trajectories if not t.done])
        calls += 1
    together = [t.result() for t in trajectories]
    errors = [max_rel_error(a, alone(*group)) for a, group in zip(together, groups)]
    print(f"shared calls: {calls} for {ddpm.num_calls + ddim.num_calls} trajectory steps; errors vs alone {errors}")
    assert calls == max(ddpm.num_calls, 2 + ddim.num_calls) and max(errors) < 1e-5
