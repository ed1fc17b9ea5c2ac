"""The Stable Diffusion VAE the paper's models decode with (diffusers AutoencoderKL): where it comes from, as
export (the decoder graph) and runtime (the PyTorch decoder) load it.

    loaded = load_autoencoder("mse")          # ema | mse (the hub), a local diffusers folder, random
    loaded.model, loaded.source, loaded.files  # AutoencoderKL (float32, eval), hub id or path, weight files

DiT was trained on latents scaled by SCALING_FACTOR: a decoder divides by it before AutoencoderKL.decode
(sample.py: vae.decode(samples / 0.18215)).
"""

import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from dit_ref.errors import DiTError

SCALING_FACTOR = 0.18215  # the latent scale DiT was trained with (sample.py divides by it)
HUB_VAES = {"ema": "stabilityai/sd-vae-ft-ema", "mse": "stabilityai/sd-vae-ft-mse"}
# The architecture of stabilityai/sd-vae-ft-ema / -mse (their config.json), for the random VAE.
SD_VAE_CONFIG = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "act_fn": "silu",
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512], "layers_per_block": 2, "norm_num_groups": 32,
    "sample_size": 256, "scaling_factor": SCALING_FACTOR,
}
# Output pixels per decoder call, at most: 8 images at 256 px, 2 at 512 px. It bounds the decoder's memory (the
# PyTorch VAE's peak for one such call, docs/sampling.md) in the runtime's chunks and a decoder engine's profile.
DECODE_PIXELS = 8 * 256 * 256
RANDOM_VAE_SEED = 0
RANDOM_SOURCE = "random weights (sd-vae config, seed 0)"
WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


@dataclass(frozen=True)
class LoadedVae:
    """An AutoencoderKL (float32, eval, no grad) and where it came from."""

    model: object
    source: str  # hub id, absolute directory, or RANDOM_SOURCE
    files: tuple[Path, ...]  # the weight file it was read from (its sha256 goes into a decoder's manifest); ()
    random_weights: bool


def chunk_size(image_size: int, batch_max: int | None = None) -> int:
    """Images per decoder call: as many as DECODE_PIXELS allows (at least one), and at most batch_max."""
    size = max(1, DECODE_PIXELS // (image_size * image_size))
    return min(size, batch_max) if batch_max else size


def vae_identity(spec: str) -> str:
    """The hub id of ema | mse, "random", or a directory's absolute path; DiTError for anything else."""
    if spec in HUB_VAES:
        return HUB_VAES[spec]
    if spec == "random":
        return "random"
    path = Path(spec).expanduser()
    if not path.is_dir():
        raise DiTError(f"--vae {spec!r} is neither ema, mse, random nor a directory; pass a local diffusers VAE "
                       f"directory or one of those")
    return str(path.resolve())


def load_autoencoder(spec: str) -> LoadedVae:
    """ema | mse (the hub), a local diffusers directory (or a pipeline folder with vae/), or random."""
    identity = vae_identity(spec)
    if identity == "random":
        return LoadedVae(prepared(random_vae()), RANDOM_SOURCE, (), True)
    hub = spec in HUB_VAES
    model, folder = from_pretrained(identity, hub)
    files = tuple(folder / name for name in WEIGHT_FILES if (folder / name).is_file())[:1]
    return LoadedVae(prepared(model), identity, files, False)


def prepared(model):
    return model.float().eval().requires_grad_(False)


def random_vae(seed: int = RANDOM_VAE_SEED, config: dict | None = None, every_tensor: bool = False):
    """An AutoencoderKL with the SD VAE architecture (or config) and seeded random weights: pictures of nothing.

    every_tensor: every parameter drawn from the seed (norm scales around 1, biases around 0, weights of
    variance 1 / fan-in), not diffusers' init, whose identity norms and zero biases would let a graph that
    drops them pass a parity check.
    """
    from diffusers import AutoencoderKL

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoencoderKL(**(config or SD_VAE_CONFIG))
        if every_tensor:
            randomise_every_tensor(model, torch.Generator().manual_seed(seed))
    return model


def randomise_every_tensor(model, generator: torch.Generator) -> None:
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator)
            if parameter.dim() == 1 and "norm" in name and name.endswith("weight"):
                parameter.copy_(1 + 0.25 * noise)  # GroupNorm scales
            elif parameter.dim() == 1:
                parameter.copy_(0.1 * noise)  # biases
            else:
                parameter.copy_(noise / math.sqrt(parameter[0].numel()))  # conv and linear weights


def from_pretrained(where: str, hub: bool):
    """(AutoencoderKL.from_pretrained, the folder its weights came from) with one-line errors; a pipeline
    folder's vae/ is found too."""
    from diffusers import AutoencoderKL

    from dit_ref.download import hub_offline_reason

    subfolder = None
    if not hub and not (Path(where) / "config.json").is_file() and (Path(where) / "vae" / "config.json").is_file():
        subfolder = "vae"
    offline = hub_offline_reason() if hub else None  # then the Hugging Face cache only, without retries
    try:
        with warnings.catch_warnings():  # deprecation chatter from diffusers' hub calls
            warnings.simplefilter("ignore")
            model = AutoencoderKL.from_pretrained(str(where), subfolder=subfolder, low_cpu_mem_usage=False,
                                                  local_files_only=offline is not None)
            return model, hub_folder(where) if hub else Path(where) / (subfolder or "")
    except Exception as error:  # hub/network/file errors come in many types (OSError, HfHubHTTPError, ...)
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        if offline:
            reason = f"{offline} and it is not in the Hugging Face cache"
        if hub:
            raise DiTError(f"cannot load the VAE {where} from the Hugging Face hub ({reason}); pass a local "
                           f"directory (--vae /path/to/sd-vae-ft-ema) or --vae none to write latents") from None
        raise DiTError(f"cannot load a diffusers VAE from {where} ({reason}); it needs config.json and "
                       f"diffusion_pytorch_model.safetensors") from None


def hub_folder(repo: str) -> Path:
    """The cached snapshot folder of a hub VAE that from_pretrained has just fetched."""
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(repo, local_files_only=True))
