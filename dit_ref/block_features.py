"""Cached steps: the guided forward that also gives every block's branch outputs (a refresh), and the one that
takes them instead of computing them (a reuse).

Adjacent denoising steps of a DiT compute nearly the same block features. A reuse step takes each
block's attention and MLP outputs from an earlier step (FORA, Selvaraju et al. 2024) or a forecast of
them (TaylorSeer, Liu et al. 2025: finite differences over the refreshed steps) and computes only what
depends on this step's t and y cheaply: the patch and timestep embeddings, every block's adaLN
modulation and gates, the residual sums and the final layer. Attention and MLP are almost all of a
DiT's work. The features of one row are (depth, 2, T, D) float32: [attention, MLP] of every block.
"""

import torch

from dit_ref.model import DiT


def feature_shape(model: DiT) -> tuple[int, int, int, int]:
    """(depth, 2, T, D): one row's cached features."""
    config = model.config
    return config.depth, 2, config.num_tokens(model.image_size), config.hidden_size


def forward_features(model: DiT, x, t, y):
    """The plain forward and its features: x (N, C, L, L), t, y (N,) -> (out (N, C_out, L, L), (N, depth, 2, T, D))."""
    h = (model.x_embedder(x.to(model.dtype)) + model.pos_embed.to(model.dtype)).float()  # (N, T, D) float32
    c = model.t_embedder(t) + model.y_embedder(y)  # (N, D)
    features = []
    for block in model.blocks:
        h, attention, mlp = block.forward_branches(h, c)  # (N, T, D) each
        features.append(torch.stack([attention.float(), mlp.float()], dim=1))  # (N, 2, T, D)
    out = model.unpatchify(model.final_layer(h, c)).float()  # (N, C_out, L, L)
    return out, torch.stack(features, dim=1)  # (N, depth, 2, T, D)


def forward_reusing(model: DiT, x, t, y, features):
    """The forward with every block's branches taken from features (N, depth, 2, T, D) -> (N, C_out, L, L)."""
    h = (model.x_embedder(x.to(model.dtype)) + model.pos_embed.to(model.dtype)).float()  # (N, T, D) float32
    c = model.t_embedder(t) + model.y_embedder(y)  # (N, D)
    for k, block in enumerate(model.blocks):
        h = block.forward_reusing(h, c, features[:, k, 0], features[:, k, 1])  # (N, T, D)
    return model.unpatchify(model.final_layer(h, c)).float()  # (N, C_out, L, L)


def guided_refresh(model: DiT, x, t, y, cfg_scale, cfg_channels, guided):
    """The guided forward over B + U rows and the rows' features: (eps[, var_values], features (B + U, ...))."""
    out, features = forward_features(model, *model.guided_batch(x, t, y, guided))
    return (*model.split_guided(out, x.shape[0], guided, cfg_scale, cfg_channels), features)


def guided_reuse(model: DiT, x, t, y, cfg_scale, cfg_channels, guided, features):
    """The guided forward reusing the B + U rows' features (laid out as guided_refresh gives them)."""
    out = forward_reusing(model, *model.guided_batch(x, t, y, guided), features)
    return model.split_guided(out, x.shape[0], guided, cfg_scale, cfg_channels)
