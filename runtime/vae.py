"""Latents to pixels with the Stable Diffusion VAE (diffusers AutoencoderKL), as sample_ddp.py does."""

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
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
RANDOM_VAE_SEED = 0


@dataclass
class Vae:
    """A loaded VAE and where it came from."""

    model: object  # diffusers AutoencoderKL, eval, float32
    source: str  # hub id, directory, or "random weights"
    random_weights: bool

    channels = 3  # of the decoded images

    def to(self, device) -> "Vae":
        self.model.to(device)
        return self

    def __call__(self, x: torch.Tensor) -> np.ndarray:
        """Latents (N, 4, L, L) -> uint8 images (N, 8L, 8L, 3)."""
        return decode(self, x)


@dataclass
class PixelDecoder:
    """For pixel-space models: samples in [-1, 1], (N, C, L, L) -> uint8 images (N, L, L, C)."""

    channels: int
    source: str = "pixels (no VAE)"
    random_weights: bool = False

    def to(self, device) -> "PixelDecoder":
        return self

    def __call__(self, x: torch.Tensor) -> np.ndarray:
        return pixels_from_images(x)


def check_decoder_spec(spec: str, decoder: str) -> str:
    """What decodes the samples of a model whose manifest says decoder "vae" or "pixels", without loading
    anything: "none", "pixels", a hub id, "random" or a directory's absolute path; DiTError for a --vae this
    model cannot use (the one place --vae's grammar is checked)."""
    if spec == "none":
        return "none"
    if decoder == "pixels":
        if spec not in ("auto", "pixels"):
            raise DiTError(f"--vae {spec}: this model makes pixels, not latents; drop --vae (or --vae none for "
                           "the raw samples as .npy)")
        return "pixels"
    if spec == "pixels":
        raise DiTError("--vae pixels is for pixel-space models; this model makes latents: use ema, mse, a "
                       "directory, random or none")
    if spec in ("auto", *HUB_VAES):
        return HUB_VAES["mse" if spec == "auto" else spec]
    if spec == "random":
        return "random"
    path = Path(spec).expanduser()
    if not path.is_dir():
        raise DiTError(f"--vae {spec!r} is neither ema, mse, random, none nor a directory; "
                       f"pass a local diffusers VAE directory or one of those")
    return str(path.resolve())


def load_decoder(spec: str, decoder: str, channels: int, device="cpu"):
    """The decoder for a model whose manifest says decoder "vae" or "pixels"; None for --vae none.

    spec: auto (mse for VAE models, pixels for pixel-space ones), ema | mse | PATH | random | none.
    """
    identity = check_decoder_spec(spec, decoder)
    if identity == "none":
        return None
    if identity == "pixels":
        return PixelDecoder(channels)
    return load_vae("mse" if spec == "auto" else spec, device)


def load_vae(spec: str, device="cpu") -> Vae | None:
    """ema | mse (hub), a local diffusers directory, random (random weights, offline demo), or none."""
    if spec == "none":
        return None
    check_decoder_spec(spec, "vae")
    if spec == "random":
        model, source, random_weights = random_vae(), "random weights (sd-vae config, seed 0)", True
    elif spec in HUB_VAES:
        model, source, random_weights = _from_pretrained(HUB_VAES[spec], hub=True), HUB_VAES[spec], False
    else:
        model, source, random_weights = _from_pretrained(Path(spec).expanduser(), hub=False), spec, False
    return Vae(model.to(device).float().eval().requires_grad_(False), source, random_weights)


def random_vae(seed: int = RANDOM_VAE_SEED):
    """An AutoencoderKL with the SD VAE architecture and seeded random weights: pictures of nothing."""
    from diffusers import AutoencoderKL

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoencoderKL(**SD_VAE_CONFIG)


def _from_pretrained(where, hub: bool):
    """AutoencoderKL.from_pretrained with one-line errors; a pipeline folder's vae/ is found too."""
    from diffusers import AutoencoderKL

    from dit_ref.download import hub_offline_reason

    subfolder = None
    if not hub and not (Path(where) / "config.json").is_file() and (Path(where) / "vae" / "config.json").is_file():
        subfolder = "vae"
    offline = hub_offline_reason() if hub else None  # then the Hugging Face cache only, without retries
    try:
        with warnings.catch_warnings():  # deprecation chatter from diffusers' hub calls
            warnings.simplefilter("ignore")
            return AutoencoderKL.from_pretrained(str(where), subfolder=subfolder, low_cpu_mem_usage=False,
                                                 local_files_only=offline is not None)
    except Exception as error:  # hub/network/file errors come in many types (OSError, HfHubHTTPError, ...)
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        if offline:
            reason = f"{offline} and it is not in the Hugging Face cache"
        if hub:
            raise DiTError(f"cannot load the VAE {where} from the Hugging Face hub ({reason}); pass a local "
                           f"directory (--vae /path/to/sd-vae-ft-ema) or --vae none to write latents") from None
        raise DiTError(f"cannot load a diffusers VAE from {where} ({reason}); it needs config.json and "
                       f"diffusion_pytorch_model.safetensors") from None


def pixels_from_images(images: torch.Tensor) -> np.ndarray:
    """Decoder output in [-1, 1], (N, C, H, W) -> uint8 (N, H, W, C): clamp(127.5 x + 128, 0, 255)."""
    pixels = torch.clamp(127.5 * images.float() + 128.0, 0, 255)  # as sample_ddp.py; the cast truncates
    return pixels.permute(0, 2, 3, 1).to("cpu", dtype=torch.uint8).numpy()


def decode(vae: Vae, x: torch.Tensor, batch_size: int = 8) -> np.ndarray:
    """Latents (N, 4, L, L) -> uint8 images (N, 8L, 8L, 3), decoded in batches."""
    device = next(vae.model.parameters()).device
    chunks = []
    with torch.inference_mode():
        for start in range(0, len(x), batch_size):
            latents = x[start:start + batch_size].to(device, torch.float32) / SCALING_FACTOR
            chunks.append(pixels_from_images(vae.model.decode(latents).sample))  # (n, H, W, 3)
    return np.concatenate(chunks)
