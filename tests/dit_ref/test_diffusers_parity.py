"""dit_ref against diffusers' own DiTTransformer2DModel, and the official <-> diffusers conversion."""

import math

import pytest
import torch
from testing_utils import max_rel_error

from dit_ref import DiT, DiTError, randomize_weights_
from dit_ref.configs import DiTConfig
from dit_ref.diffusers_format import (
    diffusers_config,
    diffusers_from_official,
    official_from_diffusers,
    write_diffusers_dir,
)
from dit_ref.model import sincos_pos_embed

diffusers = pytest.importorskip("diffusers")

# Two blocks of width 64 at 256 px (latent 32, patch 2: 256 tokens): small but every code path.
TINY = DiTConfig(family="S", depth=2, hidden_size=64, num_heads=4, patch_size=2)
IMAGE_SIZE, LATENT = 256, 32
PARITY_TOLERANCE = 1e-5  # relative to the output's scale; float32 with different op orders


def diffusers_model(config=TINY, image_size=IMAGE_SIZE):
    """A diffusers DiTTransformer2DModel built from our config.json for this config."""
    kwargs = {k: v for k, v in diffusers_config(config, image_size).items() if not k.startswith("_")}
    return diffusers.DiTTransformer2DModel(**kwargs).eval()


@pytest.fixture(scope="module")
def random_diffusers():
    """Tiny diffusers DiT, every tensor random (its zero-initialised ones too), embedders shared."""
    model = diffusers_model()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for tensor in model.parameters():
            fan_in = tensor[0].numel() if tensor.ndim > 1 else 1
            scale = 1 / math.sqrt(fan_in) if tensor.ndim > 1 else 0.1
            tensor.copy_(torch.randn(tensor.shape, generator=generator) * scale)
        shared = model.transformer_blocks[0].norm1.emb.state_dict()
        for block in model.transformer_blocks[1:]:  # the hub weights have one embedder, copied
            block.norm1.emb.load_state_dict(shared)
    return model.requires_grad_(False)


def inputs(batch=4):
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(batch, 4, LATENT, LATENT, generator=generator)
    t = torch.tensor([0, 17, 500, 999])[:batch]
    y = torch.tensor([0, 207, 999, 1000])[:batch]  # 1000: the null class
    return x, t, y


def converted(diffusers_state, numerics):
    model = DiT(TINY, IMAGE_SIZE, numerics)
    model.load_state_dict(official_from_diffusers(diffusers_state, sample_size=LATENT), strict=True)
    return model.eval()


def test_diffusers_pos_embed_buffer_is_the_official_table(random_diffusers):
    """diffusers recomputes pos_embed (non-persistent buffer); it is bitwise our sin-cos table."""
    assert "pos_embed.pos_embed" not in random_diffusers.state_dict()
    assert torch.equal(random_diffusers.pos_embed.pos_embed, sincos_pos_embed(TINY.hidden_size, 16))


def test_converted_diffusers_model_matches_diffusers(random_diffusers):
    x, t, y = inputs()
    with torch.no_grad():
        expected = random_diffusers(x, timestep=t, class_labels=y).sample  # (4, 8, 32, 32)
        ours = converted(random_diffusers.state_dict(), "diffusers")(x, t, y)
        official = converted(random_diffusers.state_dict(), "official")(x, t, y)
    error = max_rel_error(ours, expected)
    official_error = max_rel_error(official, expected)
    print(f"diffusers numerics vs diffusers: {error:.2e}; official vs diffusers: {official_error:.2e}")
    assert expected.abs().max() > 0.1  # not a vacuous comparison
    assert error < PARITY_TOLERANCE
    assert official_error > PARITY_TOLERANCE  # the numerics switch matters


def test_written_diffusers_dir_loads_in_diffusers(tmp_path):
    """Our writer's folder loads with from_pretrained and computes what dit_ref computes."""
    ours = randomize_weights_(DiT(TINY, IMAGE_SIZE, "diffusers"), seed=3).eval()
    write_diffusers_dir(tmp_path, ours.state_dict(), TINY, IMAGE_SIZE)
    theirs = diffusers.DiTTransformer2DModel.from_pretrained(tmp_path, low_cpu_mem_usage=False).eval()
    x, t, y = inputs()
    with torch.no_grad():
        error = max_rel_error(ours(x, t, y), theirs(x, timestep=t, class_labels=y).sample)
    print(f"dit_ref -> diffusers folder -> diffusers: {error:.2e}")
    assert error < PARITY_TOLERANCE


@pytest.mark.parametrize("name", ["tiny", "S/8"])
def test_official_diffusers_official_round_trip_is_lossless(name, tiny_model):
    if name == "tiny":
        config, state = TINY, randomize_weights_(DiT(TINY, IMAGE_SIZE), seed=4).state_dict()
    else:
        model = tiny_model(name, IMAGE_SIZE)
        config, state = model.config, model.state_dict()
    back = official_from_diffusers(diffusers_from_official(state, config), sample_size=LATENT)
    assert set(back) == set(state)
    unequal = [key for key in state if not torch.equal(back[key], state[key])]
    print(f"{len(state)} tensors round-tripped, {len(unequal)} differ")
    assert not unequal


def test_differing_per_block_embedders_are_refused(random_diffusers):
    state = dict(random_diffusers.state_dict())
    key = "transformer_blocks.1.norm1.emb.timestep_embedder.linear_1.bias"
    state[key] = state[key] + 1
    with pytest.raises(DiTError, match=r"transformer_blocks\.1\.norm1\.emb\.timestep_embedder"):
        official_from_diffusers(state)


def test_missing_diffusers_key_is_named(random_diffusers):
    state = dict(random_diffusers.state_dict())
    del state["transformer_blocks.0.attn1.to_k.weight"]
    with pytest.raises(DiTError, match=r"transformer_blocks\.0\.attn1\.to_k\.weight"):
        official_from_diffusers(state)


def test_non_table_pos_embed_is_refused():
    state = randomize_weights_(DiT(TINY, IMAGE_SIZE), seed=5).state_dict()
    state["pos_embed"] = state["pos_embed"] + 0.01
    with pytest.raises(DiTError, match="pos_embed differs from the sin-cos table"):
        diffusers_from_official(state, TINY)
