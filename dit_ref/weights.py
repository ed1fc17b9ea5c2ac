"""Loading DiT weights from every format, safely and strictly: load_dit -> LoadedDiT.

Formats: the released plain state dicts (.pt), training checkpoints (a dict whose "ema" holds the
weights), .safetensors files, and diffusers DiTTransformer2DModel folders or hub repos ("hf:ID").
Pickles are read with torch's weights-only unpickler: a file that would run code is refused.
Before the strict key check, the checkpoint's own config is recognised from its shapes, so a file
of another model or image size is named instead of reported as a pile of shape mismatches. The
shapes also tell the latent channels, the class count and whether sigma is learned: a train.py
checkpoint made with --num-classes 10 loads as the named config with 10 classes, no extra flag.
"""

import argparse
import math
import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from dit_ref import configs, diffusers_format, download
from dit_ref.configs import DiTConfig
from dit_ref.errors import DiTError
from dit_ref.files import sha256_of_files
from dit_ref.model import NUMERICS, DiT, randomize_weights_, sincos_pos_embed

EXPECTED = (
    "expected a DiT checkpoint: a .pt/.pth/.bin state dict, a training checkpoint with 'ema', "
    ".safetensors, or a diffusers folder"
)
CKPT_FORMS = ("a .pt/.safetensors file, a diffusers folder, 'auto' (official XL/2, or the shipped weights "
              "of a shipped model such as fashion) or 'hf:ORG/NAME'")
SHIPPED_DIR = Path(__file__).parent / "shipped"  # weights trained here, shipped in the package
MAX_KEYS_SHOWN = 3


@dataclass(frozen=True)
class LoadedDiT:
    """A DiT ready to run (eval, float32) and where its weights came from, for the manifest."""

    model: DiT
    source: str  # a path, URL, "hf:ORG/NAME" or "random init (seed N)"
    sha256: str | None  # of the checkpoint file(s); None for random init
    random_weights: bool  # True when the weights are random: outputs are noise, not images


def load_dit(
    model: str,
    image_size: int | None = None,
    ckpt: str | None = None,
    random_init: int | None = None,
    numerics: str = "official",
    num_classes: int | None = None,
) -> LoadedDiT:
    """Build the named DiT and fill it from ckpt (path, "auto", "hf:ID") or seeded random weights.

    image_size None: the config's first size (256 for the paper's models, 28 for fashion).
    num_classes: the class count of a checkpoint that does not say (a bare state dict; a train.py
    checkpoint's args say it, and otherwise the config's count is assumed), or of a random model.
    """
    config = configs.get_config(model)
    image_size = config.image_sizes[0] if image_size is None else image_size
    config.check_image_size(image_size)
    if numerics not in NUMERICS:
        raise DiTError(f"unknown numerics {numerics!r}; choose one of {', '.join(NUMERICS)}")
    if (ckpt is None) == (random_init is None):
        raise DiTError(f"pass exactly one of --ckpt ({CKPT_FORMS}) or --random-init SEED")
    if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)
                                    or num_classes < 1):
        raise DiTError(f"--num-classes must be a positive integer, not {num_classes!r}")
    if random_init is not None:
        shape = {} if num_classes is None else {"num_classes": num_classes}
        return _random_model(configs.with_shape(config, **shape), image_size, random_init, numerics)
    state_dict, args, source, files = read_checkpoint(str(ckpt), config, image_size)
    if num_classes is not None:
        args = {**args, "num_classes": num_classes}
    check_config(state_dict, config, image_size, source)
    config = configs.with_shape(config, **checkpoint_shape(state_dict, config, args))
    dit = _uninitialised_model(config, image_size, numerics)
    if "pos_embed" not in state_dict:  # the fixed sin-cos table; official files carry it, diffusers not
        state_dict["pos_embed"] = sincos_pos_embed(config.hidden_size, dit.grid_size)
    load_state_dict_strict(dit, state_dict, source)
    dit = dit.float().eval().requires_grad_(False)
    return LoadedDiT(dit, source, sha256_of_files(*files), random_weights=False)


def _uninitialised_model(config, image_size, numerics) -> DiT:
    """A DiT with allocated but unset memory (random init of XL/2 takes seconds; all is overwritten).

    Safe because the strict load then fills every tensor: the model has no non-persistent buffer.
    """
    with torch.device("meta"):
        dit = DiT(config, image_size, numerics)
    tensors = {name for name, _ in dit.named_parameters()} | {name for name, _ in dit.named_buffers()}
    if tensors != set(dit.state_dict()):  # a buffer the state dict would not fill: init normally
        return DiT(config, image_size, numerics)
    return dit.to_empty(device="cpu")


def _random_model(config, image_size, seed, numerics) -> LoadedDiT:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise DiTError(f"--random-init takes a seed, a non-negative integer, not {seed!r}")
    dit = randomize_weights_(DiT(config, image_size, numerics), seed)
    dit = dit.eval().requires_grad_(False)
    return LoadedDiT(dit, f"random init (seed {seed})", sha256=None, random_weights=True)


def read_checkpoint(ckpt: str, config: DiTConfig, image_size: int) -> tuple[dict, dict, str, list[Path]]:
    """(official-layout state dict, training args, source text, files read) for any ckpt form."""
    if ckpt == "auto" and config.name in configs.SHIPPED:
        path = shipped_weights(config)
        return *read_state_dict_file(path), f"shipped:{config.name} ({path.name})", [path]
    if ckpt == "auto":
        path, url = download.fetch_official(config, image_size)
        return *read_state_dict_file(path), url, [path]
    if ckpt.startswith("hf:"):
        model_dir = download.fetch_hub(ckpt[len("hf:"):])
        state_dict, files = read_diffusers_dir(model_dir, config)
        return state_dict, {}, ckpt, files
    path = Path(ckpt).expanduser()
    if path.is_dir():
        state_dict, files = read_diffusers_dir(path, config)
        return state_dict, {}, str(path), files
    if not path.is_file():
        raise DiTError(f"checkpoint {ckpt} not found; pass {CKPT_FORMS}")
    return *read_state_dict_file(path), str(path), [path]


def shipped_weights(config: DiTConfig) -> Path:
    """The weights of a shipped model, in the package (dit_ref/shipped/NAME.safetensors)."""
    path = SHIPPED_DIR / f"{config.file_stem}.safetensors"
    if not path.is_file():
        raise DiTError(f"the shipped weights {path} are missing; reinstall dit-deploy, or train them with "
                       f"python -m dit_ref.training --out {SHIPPED_DIR}")
    return path


def read_state_dict_file(path: Path) -> tuple[dict, dict]:
    """(official-layout state dict, training args) from one file (plain, training checkpoint, or
    diffusers keys); the args are a train.py checkpoint's "args" as a dict, else {}."""
    obj = read_tensors_file(path)
    state_dict = unwrap_checkpoint(obj, path)
    if diffusers_format.is_diffusers_layout(state_dict):  # a lone diffusion_pytorch_model file
        return diffusers_format.official_from_diffusers(state_dict), {}
    return state_dict, training_args(obj)


def read_diffusers_dir(path: Path, expected: DiTConfig | None = None) -> tuple[dict, list[Path]]:
    """Official-layout state dict and weight files of a diffusers folder (or its transformer/)."""
    model_dir = diffusers_format.find_model_dir(path)
    config = diffusers_format.read_config(model_dir)
    heads = config.get("num_attention_heads")
    if expected is not None and heads not in (None, expected.num_heads):
        raise DiTError(f"{model_dir} has {heads} attention heads, {expected.name} has {expected.num_heads}")
    files = diffusers_format.weight_files(model_dir)
    state_dict = {}
    for file in files:
        state_dict.update(unwrap_checkpoint(read_tensors_file(file), file))
    sample_size = config.get("sample_size")
    sample_size = sample_size if isinstance(sample_size, int) else None
    return diffusers_format.official_from_diffusers(state_dict, sample_size), files


def read_tensors_file(path: Path):
    """The object stored in a .pt/.pth/.bin (weights-only unpickling) or .safetensors file."""
    kind = sniff_format(path)
    if kind == "safetensors":
        return _read_safetensors(path)
    if kind == "torch-zip" and not zipfile.is_zipfile(path):
        raise DiTError(f"{path} is truncated or corrupt (incomplete zip archive); download it again")
    if kind is None:
        raise DiTError(f"{path} is not a DiT checkpoint (not a PyTorch or safetensors file); {EXPECTED}")
    return _torch_load(path, mmap=kind == "torch-zip")


def sniff_format(path: Path) -> str | None:
    """"torch-zip", "torch-legacy", "safetensors" or None, from the file's first bytes."""
    try:
        with open(path, "rb") as file:
            head = file.read(9)
    except OSError as error:
        raise DiTError(f"cannot read {path}: {error.strerror or error}") from error
    if head.startswith(b"PK\x03\x04"):
        return "torch-zip"  # torch.save since PyTorch 1.6
    if head.startswith(b"\x80"):
        return "torch-legacy"  # a pickle (protocol 2+), the pre-1.6 torch.save format
    if len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") > 1:
        return "safetensors"  # 8-byte little-endian header length, then a JSON header
    return None


def _read_safetensors(path: Path) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except SafetensorError as error:
        raise DiTError(f"{path} is truncated or corrupt (safetensors: {error}); download it again") from error


def _torch_load(path: Path, mmap: bool):
    """torch.load with weights_only=True; argparse.Namespace (training checkpoints' "args") allowed."""
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as error:
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        if refused or "Weights only load failed" in str(error):
            what = refused.group(1) if refused else "non-tensor objects"
            raise DiTError(
                f"refusing to load {path}: it would unpickle {what}, which can run code; a DiT "
                "checkpoint holds only tensors (convert it to .safetensors where you trust it)"
            ) from error
        raise DiTError(f"{path} is not a DiT checkpoint or is corrupt ({error}); {EXPECTED}") from error
    except (RuntimeError, EOFError, KeyError, ValueError, OSError) as error:
        reason = str(error).strip().split(".")[0] or type(error).__name__
        raise DiTError(f"{path} is truncated or corrupt ({reason}); {EXPECTED}") from error


def unwrap_checkpoint(obj, path: Path) -> dict:
    """The weights of a loaded object: the dict itself, or a training checkpoint's "ema"."""
    if isinstance(obj, dict) and isinstance(obj.get("ema"), dict):
        obj = obj["ema"]  # train.py saves {"model", "ema", "opt", "args"}; sampling uses the EMA
    elif isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not obj:
        raise DiTError(f"{path} holds a {type(obj).__name__}, not a DiT state dict; {EXPECTED}")
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            raise DiTError(f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor; {EXPECTED}")
    return dict(obj)


def recognise(state_dict, asked: DiTConfig) -> tuple[str, int | None] | None:
    """(config name or a shape description, image size or None) read off an official state dict.

    The asked-for config is named when depth, width and patch agree with it (a train.py model with
    other classes or channels is still that config); otherwise any known config that agrees.
    """
    patch_weight = state_dict.get("x_embedder.proj.weight")
    if not isinstance(patch_weight, torch.Tensor) or patch_weight.ndim != 4:
        return None
    hidden, patch = patch_weight.shape[0], patch_weight.shape[-1]
    depth = diffusers_format.count_blocks(state_dict, "blocks.")
    image_size = None
    pos_embed = state_dict.get("pos_embed")
    if isinstance(pos_embed, torch.Tensor) and pos_embed.ndim == 3:
        grid = math.isqrt(pos_embed.shape[1])
        if grid * grid == pos_embed.shape[1]:
            image_size = grid * patch * (1 if asked.pixel_space else configs.VAE_DOWNSAMPLE)
    for config in [asked, *configs.all_configs()]:
        if (depth, hidden, patch) == (config.depth, config.hidden_size, config.patch_size):
            return config.name, image_size
    return f"an unknown DiT (depth {depth}, hidden size {hidden}, patch {patch})", image_size


def checkpoint_shape(state_dict, config: DiTConfig, args: dict) -> dict:
    """The latent channels, learned sigma and class count of a checkpoint, where they differ from config.

    Channels and learned sigma come from the tensors (the patch embedding's input channels; the
    final layer's p*p values per output channel, 2C with learned sigma). The class count comes from
    a train.py checkpoint's args (--num-classes), not from the label table: a table that lost its
    null-class row must be reported, not read as a model with one class fewer.
    """
    try:
        channels = int(state_dict["x_embedder.proj.weight"].shape[1])
        outputs = int(state_dict["final_layer.linear.weight"].shape[0]) // config.patch_size**2
    except (KeyError, AttributeError, IndexError):
        return {}  # incomplete: the strict key check names what is missing
    shape = {"latent_channels": channels, "learn_sigma": outputs == 2 * channels,
             "num_classes": int(args.get("num_classes", config.num_classes))}
    return {key: value for key, value in shape.items() if getattr(config, key) != value}


def training_args(obj) -> dict:
    """The "args" of a training checkpoint (train.py saves an argparse.Namespace), as a dict; {} if none."""
    args = obj.get("args") if isinstance(obj, dict) else None
    return dict(vars(args)) if isinstance(args, argparse.Namespace) else dict(args) if isinstance(args, dict) else {}


def check_config(state_dict, config: DiTConfig, image_size: int, source: str) -> None:
    """DiTError naming the checkpoint's own config when it is not the one asked for."""
    found = recognise(state_dict, config)
    if found is None:
        return  # no x_embedder: the strict key check names what is missing
    name, found_size = found
    if name == config.name and found_size in (None, image_size):
        return
    size = found_size if found_size is not None else image_size
    if name.startswith("an unknown"):
        raise DiTError(
            f"{source} is {name} at {size}, not one of the DiT configs; cannot load it as {config.name}"
        )
    raise DiTError(
        f"this checkpoint is {name} at {size}, you asked for {config.name} at {image_size}; "
        f"pass --model {configs.get_config(name).short_name} --image-size {size}"
    )


LABEL_TABLE = "y_embedder.embedding_table.weight"  # (num_classes + 1, D): the last row is the null class


def load_state_dict_strict(model: DiT, state_dict: dict, source: str) -> None:
    """Copy every tensor; a missing, extra or wrongly shaped key is a DiTError naming it."""
    expected = model.state_dict()
    missing = [key for key in expected if key not in state_dict]
    extra = [key for key in state_dict if key not in expected]
    wrong = [key for key in expected if key in state_dict and state_dict[key].shape != expected[key].shape]
    what = f"{model.config.name} at {model.image_size}"
    if missing:
        raise DiTError(f"{source} lacks {_keys(missing)} that {what} needs; is it a complete DiT checkpoint?")
    if extra:
        raise DiTError(f"{source} has {_keys(extra)} that {what} does not have; is it a DiT checkpoint?")
    if wrong:
        key, more = wrong[0], f" (and {len(wrong) - 1} more keys differ)" if len(wrong) > 1 else ""
        hint = ""
        if key == LABEL_TABLE and len(wrong) == 1 and state_dict[key].shape[0] > 1:
            classes = state_dict[key].shape[0] - 1  # the table holds a row per class and the null class
            hint = f"; if the model has {classes} classes (the checkpoint does not say), pass --num-classes {classes}"
        raise DiTError(
            f"{source}: {key!r} has shape {tuple(state_dict[key].shape)}, {what} expects "
            f"{tuple(expected[key].shape)}{more}{hint}"
        )
    model.load_state_dict(state_dict, strict=True)


def _keys(keys) -> str:
    shown = ", ".join(repr(key) for key in keys[:MAX_KEYS_SHOWN])
    more = f" and {len(keys) - MAX_KEYS_SHOWN} more" if len(keys) > MAX_KEYS_SHOWN else ""
    return f"{len(keys)} key{'s' if len(keys) > 1 else ''} ({shown}{more})"
