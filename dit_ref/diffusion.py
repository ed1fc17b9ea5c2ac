"""Diffusion math of the official DiT (diffusion/gaussian_diffusion.py, respace.py), as pure functions.

Ho et al., "Denoising Diffusion Probabilistic Models" (2020); Nichol & Dhariwal, "Improved DDPM"
(2021) for the learned-range variance and respacing; Song et al., "DDIM" (2021).

A schedule is fully determined by its list of original timesteps; every coefficient array is
derived from it in float64 and gathered, then cast to float32, as the official code does.
"""

from dataclasses import dataclass

import numpy as np
import torch

from dit_ref.configs import NUM_TIMESTEPS
from dit_ref.errors import DiTError

BETA_START, BETA_END = 1e-4, 0.02  # the linear schedule of DDPM at 1000 steps


def linear_betas(num_timesteps: int = NUM_TIMESTEPS) -> np.ndarray:
    """Linear betas in float64, scaled as the official code does for other step counts."""
    scale = 1000 / num_timesteps
    return np.linspace(scale * BETA_START, scale * BETA_END, num_timesteps, dtype=np.float64)


def respaced_timesteps(spec: str | int, num_timesteps: int = NUM_TIMESTEPS) -> list[int]:
    """The original timesteps kept by a respacing spec, ascending.

    "250" takes 250 evenly spaced steps with Python round() ([0, 4, 8, ..., 995, 999]);
    "10,15,20" splits the range into sections with that many steps each; "ddimN" takes the first
    integer stride that gives exactly N steps ("ddim25" -> 0, 40, ..., 960).
    """
    spec = str(spec).strip()
    if spec.startswith("ddim"):
        return _ddim_stride_timesteps(spec, num_timesteps)
    try:
        counts = [int(part) for part in spec.split(",")]
    except ValueError:
        raise DiTError(f"bad step spec {spec!r}: use a step count like 250, or ddimN like ddim50") from None
    size_per, extra = divmod(num_timesteps, len(counts))
    start, steps = 0, []
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if not 1 <= count <= size:
            raise DiTError(f"cannot take {count} steps from a section of {size} timesteps; use 1..{size}")
        stride = 1 if count <= 1 else (size - 1) / (count - 1)
        steps += [start + round(j * stride) for j in range(count)]
        start += size
    return sorted(set(steps))


def _ddim_stride_timesteps(spec: str, num_timesteps: int) -> list[int]:
    try:
        wanted = int(spec[len("ddim"):])
    except ValueError:
        raise DiTError(f"bad step spec {spec!r}: ddim must be followed by a step count, like ddim50") from None
    for stride in range(1, num_timesteps):
        if len(range(0, num_timesteps, stride)) == wanted:
            return list(range(0, num_timesteps, stride))
    raise DiTError(f"no integer stride gives exactly {wanted} steps out of {num_timesteps}; try ddim25 or ddim50")


@dataclass(frozen=True)
class Schedule:
    """Coefficients of a (respaced) schedule, float64 arrays indexed by step i = 0..N-1."""

    timesteps: np.ndarray  # (N,) original timestep of each step, the model's t input
    betas: np.ndarray  # (N,) respaced betas: 1 - abar[t_i] / abar[t_{i-1}]
    alphas_cumprod: np.ndarray
    alphas_cumprod_prev: np.ndarray
    sqrt_recip_alphas_cumprod: np.ndarray
    sqrt_recipm1_alphas_cumprod: np.ndarray
    posterior_log_variance_clipped: np.ndarray  # t=0 entry replaced by the t=1 entry
    posterior_mean_coef1: np.ndarray
    posterior_mean_coef2: np.ndarray

    def __len__(self) -> int:
        return len(self.timesteps)


def schedule_from_timesteps(timesteps, num_timesteps: int = NUM_TIMESTEPS) -> Schedule:
    """Respaced schedule for a list of original timesteps (ascending), as SpacedDiffusion builds it."""
    timesteps = np.asarray(sorted(timesteps), dtype=np.int64)
    base_alphas_cumprod = np.cumprod(1.0 - linear_betas(num_timesteps))
    kept = base_alphas_cumprod[timesteps]  # (N,)
    previous = np.append(1.0, kept[:-1])
    betas = 1.0 - kept / previous
    alphas_cumprod = np.cumprod(1.0 - betas)
    alphas_cumprod_prev = np.append(1.0, alphas_cumprod[:-1])
    posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
    # The t=0 posterior variance is 0; its log is replaced by the t=1 entry's (a one-step schedule
    # has none, and never uses it: the last step adds no noise).
    clipped = np.append(posterior_variance[1], posterior_variance[1:]) if len(betas) > 1 else betas
    return Schedule(
        timesteps=timesteps,
        betas=betas,
        alphas_cumprod=alphas_cumprod,
        alphas_cumprod_prev=alphas_cumprod_prev,
        sqrt_recip_alphas_cumprod=np.sqrt(1.0 / alphas_cumprod),
        sqrt_recipm1_alphas_cumprod=np.sqrt(1.0 / alphas_cumprod - 1),
        posterior_log_variance_clipped=np.log(clipped),
        posterior_mean_coef1=betas * np.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod),
        posterior_mean_coef2=(1.0 - alphas_cumprod_prev) * np.sqrt(1.0 - betas) / (1.0 - alphas_cumprod),
    )


def schedule_from_spec(spec: str | int) -> Schedule:
    return schedule_from_timesteps(respaced_timesteps(spec))


def gather(array: np.ndarray, i: int, like: torch.Tensor) -> torch.Tensor:
    """array[i] as a float32 scalar tensor on like's device (gathered in float64, then cast)."""
    return torch.tensor(array[i], dtype=torch.float64).to(device=like.device, dtype=torch.float32)


def predict_x0(schedule: Schedule, i: int, x, eps):
    """x0 = sqrt(1/abar) x - sqrt(1/abar - 1) eps; not clipped (sample.py uses clip_denoised=False)."""
    return gather(schedule.sqrt_recip_alphas_cumprod, i, x) * x - gather(
        schedule.sqrt_recipm1_alphas_cumprod, i, x
    ) * eps


def learned_range_log_variance(schedule: Schedule, i: int, var_values):
    """Interpolate log variance between the clipped posterior and beta_t: frac = (v + 1) / 2."""
    min_log = gather(schedule.posterior_log_variance_clipped, i, var_values)
    max_log = gather(np.log(schedule.betas), i, var_values)
    frac = (var_values + 1) / 2
    return frac * max_log + (1 - frac) * min_log


def fixed_large_log_variance(schedule: Schedule, i: int, like):
    """log(append(posterior_variance[1], betas[1:]))[i] as a float32 scalar on like's device.

    guided-diffusion's ModelVarType.FIXED_LARGE, what create_diffusion(learn_sigma=False) uses: the
    respaced beta_i (Ho et al.'s sigma^2 = beta), with step 0's entry the posterior variance of step 1.
    """
    # posterior_log_variance_clipped[0] is log(posterior_variance[1]) (log(betas[0]) for one step).
    log_variance = np.append(schedule.posterior_log_variance_clipped[0], np.log(schedule.betas[1:]))  # (N,)
    return gather(log_variance, i, like)


def ddpm_step(schedule: Schedule, i: int, x, eps, var_values, noise):
    """One ancestral step x_i -> x_{i-1}; noise unused at i == 0.

    The variance is the learned range of var_values, or the fixed-large one when var_values is None
    (a model without learned sigma).
    """
    x0 = predict_x0(schedule, i, x, eps)
    mean = gather(schedule.posterior_mean_coef1, i, x) * x0 + gather(schedule.posterior_mean_coef2, i, x) * x
    if i == 0:
        return mean  # the official code adds 0 * sigma * noise here
    if var_values is None:
        log_variance = fixed_large_log_variance(schedule, i, x)
    else:
        log_variance = learned_range_log_variance(schedule, i, var_values)
    return mean + torch.exp(0.5 * log_variance) * noise


def ddim_step(schedule: Schedule, i: int, x, eps, noise=None, eta: float = 0.0):
    """One DDIM step x_i -> x_{i-1}; eta 0 is deterministic. eps is re-derived from x0 as the official code does."""
    x0 = predict_x0(schedule, i, x, eps)
    eps = (gather(schedule.sqrt_recip_alphas_cumprod, i, x) * x - x0) / gather(
        schedule.sqrt_recipm1_alphas_cumprod, i, x
    )
    alpha_bar = gather(schedule.alphas_cumprod, i, x)
    alpha_bar_prev = gather(schedule.alphas_cumprod_prev, i, x)
    sigma = eta * torch.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar)) * torch.sqrt(1 - alpha_bar / alpha_bar_prev)
    mean = x0 * torch.sqrt(alpha_bar_prev) + torch.sqrt(1 - alpha_bar_prev - sigma**2) * eps
    if eta == 0 or i == 0:
        return mean
    return mean + sigma * noise


# Training: the official GaussianDiffusion.training_losses for learned sigma with LossType.MSE
# (what DiT's train.py uses): MSE on eps plus the variational bound term with a frozen mean.


def gather_per_sample(array: np.ndarray, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """array[t] for a batch of timesteps t (N,), float32, shaped (N, 1, 1, 1) to broadcast over like."""
    values = torch.from_numpy(array).to(like.device)[t].float()  # gathered in float64, then cast
    return values.reshape(-1, *([1] * (like.ndim - 1)))


def q_sample(schedule: Schedule, x0, t, noise):
    """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise, t (N,) original timesteps of a full schedule."""
    return (gather_per_sample(np.sqrt(schedule.alphas_cumprod), t, x0) * x0
            + gather_per_sample(np.sqrt(1.0 - schedule.alphas_cumprod), t, x0) * noise)


def normal_kl(mean1, logvar1, mean2, logvar2):
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)), elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _standard_normal_cdf(x):
    """A fast approximation of the standard normal CDF (as guided-diffusion uses)."""
    return 0.5 * (1.0 + torch.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def discretized_gaussian_log_likelihood(x, means, log_scales):
    """Log-likelihood of x in [-1, 1] (8-bit bins of width 2/255) under N(means, e^(2 log_scales))."""
    centered = x - means
    inv_stdv = torch.exp(-log_scales)
    cdf_plus = _standard_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
    cdf_min = _standard_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_cdf_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta))


def training_losses(schedule: Schedule, output, x0, x_t, t, noise) -> dict:
    """Per-sample losses {"mse", "vb", "loss"} (N,) of a learned-sigma model's output (N, 2C, L, L).

    mse: mean squared error of eps. vb: the variational bound term in bits per dimension, computed
    with the eps prediction detached so it trains only the variance (Nichol & Dhariwal 2021); the
    decoder's discretized likelihood at t == 0, the KL to the true posterior elsewhere.
    """
    eps, var_values = output.split(x0.shape[1], dim=1)  # each (N, C, L, L)
    frozen_eps = eps.detach()
    x0_pred = (gather_per_sample(schedule.sqrt_recip_alphas_cumprod, t, x_t) * x_t
               - gather_per_sample(schedule.sqrt_recipm1_alphas_cumprod, t, x_t) * frozen_eps)
    coef1, coef2 = (gather_per_sample(c, t, x_t) for c in (schedule.posterior_mean_coef1, schedule.posterior_mean_coef2))
    model_mean = coef1 * x0_pred + coef2 * x_t
    min_log = gather_per_sample(schedule.posterior_log_variance_clipped, t, x_t)
    max_log = gather_per_sample(np.log(schedule.betas), t, x_t)
    frac = (var_values + 1) / 2
    model_log_variance = frac * max_log + (1 - frac) * min_log
    true_mean = coef1 * x0 + coef2 * x_t
    kl = normal_kl(true_mean, min_log, model_mean, model_log_variance).mean(dim=(1, 2, 3)) / np.log(2.0)
    nll = -discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_log_variance)
    nll = nll.mean(dim=(1, 2, 3)) / np.log(2.0)
    vb = torch.where(t == 0, nll, kl)
    mse = ((noise - eps) ** 2).mean(dim=(1, 2, 3))
    return {"mse": mse, "vb": vb, "loss": mse + vb}
