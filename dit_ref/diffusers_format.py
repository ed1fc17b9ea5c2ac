"""The diffusers layout of DiT weights (DiTTransformer2DModel): key mapping both ways, and its files.

diffusers splits the official qkv Linear into to_q / to_k / to_v (thirds along the output dim),
copies the timestep and class embedders into every block's norm1.emb, and does not store pos_embed
(its PatchEmbed buffer is non-persistent and recomputed from the sin-cos formula). Everything else
is a rename. See ../shared/reference/dit_numerics.md, "Where Hugging Face diffusers differs".
"""

import importlib.metadata
import json
import re
from pathlib import Path

import torch

from dit_ref import configs, files
from dit_ref.configs import DiTConfig
from dit_ref.errors import DiTError
from dit_ref.model import sincos_pos_embed

CLASS_NAME = "DiTTransformer2DModel"
CONFIG_FILE = "config.json"
WEIGHTS_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
INDEX_FILES = tuple(name + ".index.json" for name in WEIGHTS_FILES)  # sharded checkpoints
PIPELINE_SUBFOLDER = "transformer"  # where a DiTPipeline keeps its DiTTransformer2DModel
DIFFUSERS_POS_EMBED = "pos_embed.pos_embed"  # only present if someone saved the buffer anyway
POS_EMBED_TOLERANCE = 1e-6  # the released table is this formula computed in numpy float64

# official name -> diffusers name, for keys that are plain renames (per block: "{i}" is the index)
_EMBEDDERS = {
    "t_embedder.mlp.0": "timestep_embedder.linear_1",
    "t_embedder.mlp.2": "timestep_embedder.linear_2",
    "y_embedder.embedding_table": "class_embedder.embedding_table",
}
_RENAMES = {
    "x_embedder.proj": "pos_embed.proj",
    "final_layer.adaLN_modulation.1": "proj_out_1",
    "final_layer.linear": "proj_out_2",
    "blocks.{i}.adaLN_modulation.1": "transformer_blocks.{i}.norm1.linear",
    "blocks.{i}.attn.proj": "transformer_blocks.{i}.attn1.to_out.0",
    "blocks.{i}.mlp.fc1": "transformer_blocks.{i}.ff.net.0.proj",
    "blocks.{i}.mlp.fc2": "transformer_blocks.{i}.ff.net.2",
}
_QKV = ("to_q", "to_k", "to_v")
_PARAMS = ("weight", "bias")


def is_diffusers_layout(state_dict) -> bool:
    """True when the keys are diffusers' (transformer_blocks.*), not the official ones (blocks.*)."""
    return any(key.startswith("transformer_blocks.") for key in state_dict)


def count_blocks(state_dict, prefix: str) -> int:
    """Number of transformer blocks: 1 + the largest index i of keys "{prefix}{i}."."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    indices = [int(m.group(1)) for key in state_dict if (m := pattern.match(key))]
    return max(indices) + 1 if indices else 0


def _block_renames(depth):
    """Every (official prefix, diffusers prefix) pair of plain renames, blocks expanded."""
    pairs = []
    for official, diffusers in _RENAMES.items():
        indices = range(depth) if "{i}" in official else [None]
        pairs += [(official.format(i=i), diffusers.format(i=i)) for i in indices]
    return pairs


def _take(state_dict, key, used):
    """state_dict[key], remembering it was consumed; a missing key is a DiTError naming it."""
    if key not in state_dict:
        raise DiTError(f"diffusers checkpoint is missing {key!r}; is it a complete {CLASS_NAME}?")
    used.add(key)
    return state_dict[key]


def official_from_diffusers(state_dict, sample_size: int | None = None) -> dict:
    """Official-layout state dict from a DiTTransformer2DModel one.

    The per-block embedder copies must all be equal (as in the converted hub weights); block 0's
    become the official embedders. pos_embed comes from the state dict if it carries the buffer,
    else from the sin-cos formula when sample_size (the latent side) is given, else it is left out.
    Keys that map to nothing are kept unchanged so that strict loading names them.
    """
    depth = count_blocks(state_dict, "transformer_blocks.")
    out, used = {}, set()
    for official, diffusers in _block_renames(depth):
        for param in _PARAMS:
            out[f"{official}.{param}"] = _take(state_dict, f"{diffusers}.{param}", used)
    for official, diffusers in _EMBEDDERS.items():
        for param in _PARAMS if "embedding_table" not in official else ("weight",):
            copies = [
                _take(state_dict, f"transformer_blocks.{i}.norm1.emb.{diffusers}.{param}", used)
                for i in range(depth)
            ]
            _check_copies_equal(copies, f"norm1.emb.{diffusers}.{param}")
            out[f"{official}.{param}"] = copies[0]
    for i in range(depth):
        for param in _PARAMS:
            q, k, v = (_take(state_dict, f"transformer_blocks.{i}.attn1.{n}.{param}", used) for n in _QKV)
            out[f"blocks.{i}.attn.qkv.{param}"] = torch.cat([q, k, v], dim=0)  # (3D, ...)
    if DIFFUSERS_POS_EMBED in state_dict:
        out["pos_embed"] = _take(state_dict, DIFFUSERS_POS_EMBED, used)
    elif sample_size is not None:
        hidden, _, patch, _ = out["x_embedder.proj.weight"].shape
        out["pos_embed"] = sincos_pos_embed(hidden, sample_size // patch)
    out.update({key: value for key, value in state_dict.items() if key not in used})
    return out


def _check_copies_equal(copies, name):
    for i, copy in enumerate(copies[1:], start=1):
        if not torch.equal(copy, copies[0]):
            raise DiTError(
                f"transformer_blocks.{i}.{name} differs from block 0's; the official DiT has one "
                "shared timestep/class embedder, so this diffusers model cannot be converted"
            )


def diffusers_from_official(state_dict, config: DiTConfig) -> dict:
    """DiTTransformer2DModel state dict from an official-layout one (new tensors, no shared memory).

    pos_embed is dropped because diffusers recomputes it; a checkpoint whose pos_embed is not the
    sin-cos table cannot be represented and is refused.
    """
    _check_pos_embed_is_table(state_dict, config)
    out = {}
    for official, diffusers in _block_renames(config.depth):
        for param in _PARAMS:
            out[f"{diffusers}.{param}"] = state_dict[f"{official}.{param}"].clone()
    for i in range(config.depth):
        for official, diffusers in _EMBEDDERS.items():
            for param in _PARAMS if "embedding_table" not in official else ("weight",):
                out[f"transformer_blocks.{i}.norm1.emb.{diffusers}.{param}"] = (
                    state_dict[f"{official}.{param}"].clone()
                )
        for param in _PARAMS:
            qkv = state_dict[f"blocks.{i}.attn.qkv.{param}"].chunk(3, dim=0)  # 3 x (D, ...)
            for name, part in zip(_QKV, qkv):
                out[f"transformer_blocks.{i}.attn1.{name}.{param}"] = part.clone()
    return out


def _check_pos_embed_is_table(state_dict, config):
    pos_embed = state_dict["pos_embed"]
    grid = round(pos_embed.shape[1] ** 0.5)
    table = sincos_pos_embed(config.hidden_size, grid)
    error = (pos_embed.float() - table).abs().max().item()
    if error > POS_EMBED_TOLERANCE:
        raise DiTError(
            f"this checkpoint's pos_embed differs from the sin-cos table by {error:.3g}; diffusers "
            "recomputes pos_embed, so it cannot hold this model (keep the official format)"
        )


def diffusers_config(config: DiTConfig, image_size: int) -> dict:
    """The DiTTransformer2DModel config.json of a DiT config at an image size."""
    return {
        "_class_name": CLASS_NAME,
        "_diffusers_version": importlib.metadata.version("diffusers"),
        "num_attention_heads": config.num_heads,
        "attention_head_dim": config.hidden_size // config.num_heads,
        "in_channels": config.in_channels,
        "out_channels": config.out_channels,
        "num_layers": config.depth,
        "dropout": 0.0,
        "norm_num_groups": 32,
        "attention_bias": True,
        "sample_size": configs.latent_size(image_size),
        "patch_size": config.patch_size,
        "activation_fn": "gelu-approximate",
        "num_embeds_ada_norm": configs.NUM_CLASSES,
        "upcast_attention": False,
        "norm_type": "ada_norm_zero",
        "norm_elementwise_affine": False,
        "norm_eps": 1e-5,
    }


def write_diffusers_dir(directory, state_dict, config: DiTConfig, image_size: int) -> Path:
    """Write config.json and diffusion_pytorch_model.safetensors, each atomically; returns the dir.

    state_dict is official-layout; the result loads with DiTTransformer2DModel.from_pretrained.
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.contiguous() for k, v in diffusers_from_official(state_dict, config).items()}
    with files.atomic_path(directory / WEIGHTS_FILES[0]) as temporary:
        save_file(tensors, str(temporary), metadata={"format": "pt"})
    files.write_text_atomic(directory / CONFIG_FILE, json.dumps(diffusers_config(config, image_size), indent=2) + "\n")
    return directory


def find_model_dir(path) -> Path:
    """The folder holding a DiTTransformer2DModel: path itself, or its transformer/ subfolder."""
    path = Path(path)
    for candidate in (path / PIPELINE_SUBFOLDER, path):
        if (candidate / CONFIG_FILE).is_file():
            return candidate
    raise DiTError(
        f"{path} is a directory but not a diffusers DiT model: expected {CONFIG_FILE} and "
        f"{WEIGHTS_FILES[0]} in it or in its {PIPELINE_SUBFOLDER}/ subfolder"
    )


def read_config(model_dir: Path) -> dict:
    """The model's config.json, checked to describe a learned-sigma DiTTransformer2DModel."""
    path = model_dir / CONFIG_FILE
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DiTError(f"cannot read {path}: {error}") from error
    if not isinstance(config, dict) or config.get("_class_name", CLASS_NAME) != CLASS_NAME:
        found = config.get("_class_name") if isinstance(config, dict) else type(config).__name__
        raise DiTError(f"{path} describes a {found}, not a {CLASS_NAME} (DiT transformer)")
    expected = {"in_channels": 4, "out_channels": 8, "norm_type": "ada_norm_zero"}
    for key, value in expected.items():
        if config.get(key, value) != value:
            raise DiTError(f"{path}: {key} is {config[key]!r}, a DiT with learned sigma has {value!r}")
    return config


def weight_files(model_dir: Path) -> list[Path]:
    """The weight file(s) of a model folder: one file, or the shards listed by an index json."""
    for name in WEIGHTS_FILES:
        if (model_dir / name).is_file():
            return [model_dir / name]
    for name in INDEX_FILES:
        index = model_dir / name
        if index.is_file():
            try:
                shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, AttributeError) as error:
                raise DiTError(f"cannot read the shard index {index}: {error}") from error
            return [model_dir / shard for shard in shards]
    raise DiTError(f"{model_dir} has a {CONFIG_FILE} but no weights ({' or '.join(WEIGHTS_FILES)})")
