"""The module that becomes the graph: the guided forward with a fixed number of guided channels."""

import torch
from torch import nn

from dit_ref import DiT, configs


class GuidedDiT(nn.Module):
    """(x, t, y, cfg_scale, guided) -> (eps[, var_values]): the null-class pass of the guided rows, guidance and
    the learned-sigma split inside."""

    def __init__(self, model: DiT, cfg_channels: int = 3):
        super().__init__()
        self.model = model
        self.cfg_channels = cfg_channels  # a Python int, so it is baked into the graph

    def forward(self, x, t, y, cfg_scale, guided):  # x (B, C, L, L), t, y, cfg_scale (B,), guided (U,)
        return self.model.guided_forward(x, t, y, cfg_scale, self.cfg_channels, guided)  # 1 or 2 x (B, C, L, L)


def example_inputs(model: DiT, batch: int = 2, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random per-image graph inputs (x, t, y, cfg_scale) for tracing and checks; labels avoid the null class."""
    generator = torch.Generator().manual_seed(seed)
    size, channels = model.latent_size, model.config.latent_channels
    x = torch.randn(batch, channels, size, size, generator=generator)
    t = torch.randint(0, configs.NUM_TIMESTEPS, (batch,), generator=generator)
    y = torch.randint(0, model.config.num_classes, (batch,), generator=generator)
    cfg_scale = 1.0 + 4.0 * torch.rand(batch, generator=generator)  # (B,) in [1, 5)
    return x, t, y, cfg_scale
