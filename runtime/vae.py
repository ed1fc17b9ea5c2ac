"""Latents to pixels with the Stable Diffusion VAE (diffusers AutoencoderKL), as sample_ddp.py does."""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dit_ref.errors import DiTError
from dit_ref.vae import (  # noqa: F401 (SD_VAE_CONFIG, random_vae: part of this module's API)
    HUB_VAES, SCALING_FACTOR, SD_VAE_CONFIG, load_autoencoder, random_vae,
)


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
    loaded = load_autoencoder(spec)
    source = loaded.source if loaded.random_weights or spec in HUB_VAES else spec
    return Vae(loaded.model.to(device), source, loaded.random_weights)


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
