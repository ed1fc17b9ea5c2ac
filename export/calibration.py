"""Calibration inputs for the Q/DQ graphs: the denoiser's inputs recorded along real sampling runs.

The float32 reference (dit_ref.DiT.guided_forward) samples with DDIM (dit_ref.diffusion) from seeded
noise, random labels and the guidance scales users sample with (sample.py's 4, the FID runs' 1.5); the
(x, t, y, cfg_scale) of every call is kept, so t covers 999..0 the way a sampler visits it and x has
the statistics real trajectories have (random inputs never show t near 999 with x near pure noise).
The reference runs on the GPU when torch sees one, else on the CPU; the feeds are kept as numpy.
"""

from dataclasses import asdict, dataclass

import numpy as np
import torch

from dit_ref import DiT
from dit_ref.diffusion import ddim_step, respaced_timesteps, schedule_from_timesteps


@dataclass(frozen=True)
class Calibration:
    """How the calibration inputs were recorded (written into the manifest)."""

    trajectories: int = 8  # samples, sampled together in one batch
    steps: int = 10  # DDIM steps of each trajectory ("ddimN" respacing): one recorded input per step
    cfg_scales: tuple[float, ...] = (4.0, 1.5)  # taken in turn by the trajectories
    seed: int = 0

    @property
    def inputs(self) -> int:
        """Denoiser inputs recorded (images)."""
        return self.trajectories * self.steps

    def record(self) -> dict:
        return {**asdict(self), "cfg_scales": list(self.cfg_scales), "sampler": f"ddim{self.steps}", "inputs": self.inputs}


def starts(model: DiT, calibration: Calibration) -> tuple[torch.Tensor, ...]:
    """(x, y, cfg_scale) the trajectories start from: seeded noise, random labels, the scales in turn."""
    generator = torch.Generator().manual_seed(calibration.seed)
    n, size, channels = calibration.trajectories, model.latent_size, model.config.latent_channels
    x = torch.randn(n, channels, size, size, generator=generator)  # (n, C, L, L)
    y = torch.randint(0, model.config.num_classes, (n,), generator=generator)  # (n,)
    scales = torch.tensor([calibration.cfg_scales[k % len(calibration.cfg_scales)] for k in range(n)])  # (n,)
    return x, y, scales


def ddim_sample(eps_of, x, y, cfg_scale, steps: int, on_call=None) -> torch.Tensor:
    """DDIM (eta 0) from x with eps_of(x, t, y, cfg_scale) -> eps; on_call(feed) sees every call's inputs."""
    schedule = schedule_from_timesteps(respaced_timesteps(f"ddim{steps}"))
    with torch.no_grad():
        for i in reversed(range(len(schedule))):
            t = torch.full((len(x),), int(schedule.timesteps[i]), dtype=torch.int64)  # CPU: on_call's feed
            if on_call is not None:  # every row guided (the calibration's cfg scales are not 1)
                on_call({"x": x.cpu().numpy().copy(), "t": t.numpy(), "y": y.cpu().numpy(),
                         "cfg_scale": cfg_scale.cpu().numpy(), "guided": np.arange(len(x), dtype=np.int64)})
            x = ddim_step(schedule, i, x, eps_of(x, t, y, cfg_scale))  # (n, C, L, L)
    return x


def trajectory_inputs(model: DiT, cfg_channels: int, calibration: Calibration) -> list[dict]:
    """One feed {x, t, y, cfg_scale} (numpy, a batch of calibration.trajectories) per DDIM step, recorded on
    the GPU when torch has one (the model is moved there and back)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    feeds = []

    def reference_eps(x, t, y, cfg_scale):
        return model.guided_forward(x, t.to(device), y, cfg_scale, cfg_channels)[0]

    model.to(device)
    try:
        x, y, scales = (tensor.to(device) for tensor in starts(model, calibration))
        ddim_sample(reference_eps, x, y, scales, calibration.steps, feeds.append)
    finally:
        model.to("cpu")
    return feeds
