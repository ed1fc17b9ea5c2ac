import numpy as np
import pytest
import torch

from testing_utils import max_rel_error
from dit_ref import DiTError
from dit_ref.model import guide, sincos_pos_embed, timestep_features


def official_pos_embed(dim, grid):
    """facebookresearch/DiT models.py get_2d_sincos_pos_embed, restated with numpy (float64)."""
    def one_d(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)
    w_first = np.meshgrid(np.arange(grid, dtype=np.float32), np.arange(grid, dtype=np.float32))
    return np.concatenate([one_d(dim // 2, w_first[0]), one_d(dim // 2, w_first[1])], axis=1)


def test_pos_embed_matches_official_construction():
    ours = sincos_pos_embed(384, 16)[0].double().numpy()
    err = np.abs(ours - official_pos_embed(384, 16)).max()
    print(f"pos_embed max abs err vs official construction: {err:.2e}")
    assert ours.shape == (256, 384) and err < 1e-7  # float64 table stored as float32


@pytest.mark.parametrize("shift", [0, 1])
def test_timestep_features_match_diffusers(shift):
    # diffusers get_timestep_embedding with flip_sin_to_cos=True is [cos, sin]; shift 0 is the
    # official frequency layout, shift 1 diffusers' DiT (CombinedTimestepLabelEmbeddings).
    from diffusers.models.embeddings import get_timestep_embedding

    t = torch.tensor([0, 1, 250, 999])
    theirs = get_timestep_embedding(t, 256, flip_sin_to_cos=True, downscale_freq_shift=shift)
    err = (timestep_features(t, shift) - theirs).abs().max().item()
    print(f"timestep features (shift {shift}) vs diffusers: {err:.2e}")
    assert err < 1e-6
    assert (timestep_features(t, 0) - timestep_features(t, 1)).abs().max() > 1e-3


def test_random_model_has_no_zero_tensor(tiny_model):
    model = tiny_model("S/8", 256)
    zero = [name for name, p in model.named_parameters() if not p.abs().sum() > 0]
    assert zero == []


def inputs(batch, latent, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, latent, latent, generator=gen)
    t = torch.randint(0, 1000, (batch,), generator=gen)
    y = torch.randint(0, 1000, (batch,), generator=gen)
    return x, t, y


@pytest.mark.parametrize("cfg_channels", [3, 4])
def test_guided_forward_is_conditional_half_of_official_cfg(tiny_model, cfg_channels):
    model = tiny_model("S/8", 256)
    x, t, y = inputs(3, 32)
    scale = torch.tensor([4.0, 1.5, 1.0])
    eps, var_values = model.guided_forward(x, t, y, scale, cfg_channels)
    official = model.forward_with_cfg(
        torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, torch.full_like(y, 1000)]),
        scale.reshape(-1, 1, 1, 1), cfg_channels,
    )
    assert torch.equal(torch.cat([eps, var_values], dim=1), official[:3])
    # Channels not guided keep each half's own output, as sample.py's forward_with_cfg does.
    plain = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, torch.full_like(y, 1000)]))
    assert torch.equal(official[3:, cfg_channels:], plain[3:, cfg_channels:])
    assert torch.equal(official[:3, :cfg_channels], official[3:, :cfg_channels])


def test_guidance_formula():
    out = torch.randn(4, 8, 2, 2)
    scale = torch.tensor([2.0, 0.5])
    cond, uncond = out[:2], out[2:]
    guided = guide(cond, uncond, scale, 3)
    expected = uncond[:, :3] + scale.view(-1, 1, 1, 1) * (cond[:, :3] - uncond[:, :3])
    assert torch.allclose(guided[:, :3], expected) and torch.equal(guided[:, 3:], cond[:, 3:])
    with pytest.raises(DiTError, match="cfg_channels must be 3"):
        guide(cond, uncond, scale, 5)


def test_scale_one_guidance_is_conditional_output(tiny_model):
    model = tiny_model("S/8", 256)
    x, t, y = inputs(2, 32)
    eps, var_values = model.guided_forward(x, t, y, torch.ones(2), 4)
    cond = model(x, t, y)
    err = max_rel_error(torch.cat([eps, var_values], 1), cond)
    print(f"cfg 1.0 vs conditional forward: rel err {err:.2e}")
    assert err < 1e-5


def test_float16_model_keeps_float32_islands_and_io(tiny_model):
    model = tiny_model("S/4", 256)
    half = type(model)(model.config, 256).eval()
    half.load_state_dict(model.state_dict())
    half = half.half()
    x, t, y = inputs(2, 32)
    scale = torch.tensor([4.0, 4.0])
    with torch.no_grad():
        ref = model.guided_forward(x, t, y, scale)
        out = half.guided_forward(x, t, y, scale)
    for name, a, b in zip(("eps", "var_values"), out, ref):
        err = max_rel_error(a, b)
        print(f"fp16 module {name}: rel err {err:.2e}")
        assert a.dtype == torch.float32 and torch.isfinite(a).all() and err < 1e-2


def test_diffusers_numerics_switch_changes_output(tiny_model):
    official, diffusers = tiny_model("S/8", 256), tiny_model("S/8", 256, numerics="diffusers")
    x, t, y = inputs(2, 32)
    assert torch.equal(official.state_dict()["blocks.0.attn.qkv.weight"],
                       diffusers.state_dict()["blocks.0.attn.qkv.weight"])
    diff = (official(x, t, y) - diffusers(x, t, y)).abs().max().item()
    print(f"official vs diffusers numerics, same weights: max diff {diff:.2e}")
    assert diff > 1e-5
    with pytest.raises(DiTError, match="unknown numerics"):
        type(official)(official.config, 256, numerics="jax")
