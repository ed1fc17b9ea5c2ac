"""The module that becomes the graph: the guided forward with a fixed number of guided channels."""

import torch
from torch import nn

from dit_ref import DiT, block_features, configs


class GuidedDiT(nn.Module):
    """(x, t, y, cfg_scale, guided) -> (eps[, var_values]): the null-class pass of the guided rows, guidance and
    the learned-sigma split inside."""

    def __init__(self, model: DiT, cfg_channels: int = 3):
        super().__init__()
        self.model = model
        self.cfg_channels = cfg_channels  # a Python int, so it is baked into the graph

    def forward(self, x, t, y, cfg_scale, guided):  # x (B, C, L, L), t, y, cfg_scale (B,), guided (U,)
        return self.model.guided_forward(x, t, y, cfg_scale, self.cfg_channels, guided)  # 1 or 2 x (B, C, L, L)


class RefreshDiT(GuidedDiT):
    """The guided forward that also gives every block's branch outputs: (..., features (B, ...), null_features (U, ...))."""

    def forward(self, x, t, y, cfg_scale, guided):
        *outputs, features = block_features.guided_refresh(self.model, x, t, y, cfg_scale, self.cfg_channels, guided)
        return (*outputs, features[:x.shape[0]], features[x.shape[0]:])  # conditional rows, null-class rows


class ReuseDiT(GuidedDiT):
    """The guided forward taking every block's branch outputs (features (B, ...), null_features (U, ...))."""

    def forward(self, x, t, y, cfg_scale, guided, features, null_features):
        return block_features.guided_reuse(self.model, x, t, y, cfg_scale, self.cfg_channels, guided,
                                   torch.cat([features, null_features], dim=0))


MODULES = {"guided": GuidedDiT, "refresh": RefreshDiT, "reuse": ReuseDiT}  # by manifest role


def example_inputs(model: DiT, batch: int = 2, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random per-image graph inputs (x, t, y, cfg_scale) for tracing and checks; labels avoid the null class."""
    generator = torch.Generator().manual_seed(seed)
    size, channels = model.latent_size, model.config.latent_channels
    x = torch.randn(batch, channels, size, size, generator=generator)
    t = torch.randint(0, configs.NUM_TIMESTEPS, (batch,), generator=generator)
    y = torch.randint(0, model.config.num_classes, (batch,), generator=generator)
    cfg_scale = 1.0 + 4.0 * torch.rand(batch, generator=generator)  # (B,) in [1, 5)
    return x, t, y, cfg_scale
