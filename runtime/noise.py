"""Seeded randomness drawn in the order the official sample.py / sample_ddp.py draw it.

sample.py calls torch.manual_seed(seed), draws z = randn(n, 4, L, L), doubles the batch for
guidance, and p_sample draws randn_like(x) on the doubled batch (2n, 4, L, L) after every model
call, the last step included. sample_ddp.py draws z, then the labels randint(0, 1000, (n,)), per
batch, from the same global generator. A dedicated torch.Generator seeded with S on the sampling
device yields the same numbers as the global one after torch.manual_seed(S) on that device, so
drawing the same shapes in the same order gives sample.py's latents. (sample_ddp.py with
--cfg-scale 1.0 skips guidance and draws un-doubled step noise; dit-run always guides, as sample.py.)
"""

import torch


class OfficialNoise:
    """One generator on the sampling device; every draw has the official shape and order."""

    def __init__(self, seed: int, device="cpu"):
        self.device = torch.device(device)
        self.generator = torch.Generator(self.device).manual_seed(seed)

    def initial(self, n: int, latent_shape: tuple[int, int, int]) -> torch.Tensor:
        """Initial latents z ~ N(0, I), (n, C, L, L) float32."""
        return torch.randn((n, *latent_shape), generator=self.generator, device=self.device)

    def labels(self, n: int, num_classes: int) -> torch.Tensor:
        """Random class labels as sample_ddp.py draws them, (n,) int64."""
        return torch.randint(0, num_classes, (n,), generator=self.generator, device=self.device)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Step noise like x (n, ...): drawn for the doubled batch (2n, ...), first n rows used."""
        doubled = torch.randn((2 * x.shape[0], *x.shape[1:]), generator=self.generator, device=self.device)
        return doubled[: x.shape[0]]  # (n, C, L, L)
