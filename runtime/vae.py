"""Latents to pixels: the Stable Diffusion VAE in PyTorch (diffusers AutoencoderKL, as sample_ddp.py does), or its
decoder as a graph or engine made by `dit-export --vae` (run by a dit_ref.runners runner), or pixels as they are.

Every decoder decodes in chunks of at most DECODE_PIXELS output pixels per call (dit_ref.vae), which bounds its
memory whatever the batch (docs/sampling.md gives the PyTorch VAE's measured peak).
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dit_ref.contract import DECODER_INPUT, DECODER_OUTPUT, DecoderManifest, read_decoder_manifest
from dit_ref.errors import DiTError
from dit_ref.runners import ENGINE_SUFFIXES, Runner
from dit_ref.vae import (  # noqa: F401 (DECODE_PIXELS, SD_VAE_CONFIG, random_vae: part of this module's API)
    DECODE_PIXELS, HUB_VAES, SCALING_FACTOR, SD_VAE_CONFIG, chunk_size, load_autoencoder, random_vae, vae_identity,
)

DECODER_SUFFIXES = (".onnx", *ENGINE_SUFFIXES)  # a decoder graph (ONNX Runtime, OpenVINO) or engine (TensorRT)


@dataclass
class Vae:
    """A loaded VAE and where it came from."""

    model: object  # diffusers AutoencoderKL, eval, float32
    source: str  # hub id, directory, or "random weights"
    random_weights: bool

    channels = 3  # of the decoded images
    runs_on = None  # a decoder graph's precision and runtime (GraphDecoder); the PyTorch VAE says none

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
    runs_on = None  # nothing runs: the samples are the pictures

    def to(self, device) -> "PixelDecoder":
        return self

    def __call__(self, x: torch.Tensor) -> np.ndarray:
        return pixels_from_images(x)


class GraphDecoder:
    """A decoder graph or engine (dit-export --vae) in its runner: latents (N, C, L, L) -> uint8 images (N, 8L, 8L, 3)."""

    channels = 3

    def __init__(self, path: Path, manifest: DecoderManifest, runner: Runner):
        self.path, self.manifest, self.runner = path, manifest, runner
        self.backend = f"{runner.runtime}-{runner.device.type}"
        self.chunk = chunk_size(manifest.image_size, manifest.batch.max)
        self.source = f"{manifest.vae.source} decoder ({path.name}, {manifest.precision}, {self.backend})"
        self.random_weights = manifest.random_weights

    @property
    def runs_on(self) -> str:
        """"fp16 on onnxruntime-cpu": what dit-run's closing line says of it."""
        return f"{self.manifest.precision} on {self.backend}"

    def to(self, device) -> "GraphDecoder":
        return self

    def images(self, x: torch.Tensor) -> torch.Tensor:
        """One call: latents (n, C, L, L) -> images (n, 3, 8L, 8L) float32 in about [-1, 1], on the runner's device."""
        self.manifest.batch.check(len(x), f"{self.path.name}'s", "re-export the decoder with --vae-batch")
        return self.runner.run({DECODER_INPUT: x})[DECODER_OUTPUT]

    def __call__(self, x: torch.Tensor) -> np.ndarray:
        return decode_in_chunks(self.images, x, self.chunk)

    def close(self) -> None:
        self.runner.close()


def open_decoder(path: Path, manifest: DecoderManifest, device="cpu", threads: int | None = None) -> Runner:
    """The runner of a decoder file next to a denoiser on `device`: an engine in TensorRT on a CUDA GPU, a graph in
    ONNX Runtime on a GPU where its CUDA provider is, else in the CPU runtime of its precision
    (dit_ref.runners.CPU_CHOICE)."""
    from dit_ref.machine.tensorrt_stack import engine_unavailable_reason
    from dit_ref.runners import choose_runtime, open_runner, runtime_device

    runtime, _ = choose_runtime(path, "decoder", manifest.precision, torch.device(device))
    reason = engine_unavailable_reason() if runtime == "tensorrt" else None
    if reason:
        raise DiTError(f"cannot run {path.name}: {reason}; pass its graph instead: --vae {path.with_suffix('.onnx')}")
    return open_runner(path, runtime, runtime_device(runtime, torch.device(device)), threads, manifest)


def is_decoder_file(spec) -> bool:
    return Path(str(spec)).suffix.lower() in DECODER_SUFFIXES


def check_decoder_file(spec, latent_shape=None, batch_sizes=()) -> DecoderManifest:
    """The manifest of a decoder file; DiTError unless it decodes latents of latent_shape (C, L, L) and every
    chunk of the batch sizes given fits its batch range."""
    path = Path(spec).expanduser()
    if not path.is_file():
        raise DiTError(f"--vae {spec}: no such decoder graph or engine; export one with dit-export --vae mse "
                       f"--image-size N")
    manifest = read_decoder_manifest(path)
    if latent_shape is not None and tuple(latent_shape) != manifest.latent_shape:
        wanted = tuple(latent_shape)
        raise DiTError(f"{path.name} decodes latents (B, {', '.join(map(str, manifest.latent_shape))}) into "
                       f"{manifest.image_size} px images, but this model makes (B, {', '.join(map(str, wanted))}); "
                       f"export a decoder for it: dit-export --vae ... --image-size {8 * wanted[-1]}")
    size = chunk_size(manifest.image_size, manifest.batch.max)
    for batch in batch_sizes:
        for chunk in sorted(set(chunks(batch, size))):
            manifest.batch.check(chunk, f"{path.name}'s", "re-export the decoder with --vae-batch MIN:OPT:MAX")
    return manifest


def check_decoder_spec(spec: str, decoder: str, latent_shape=None, batch_sizes=()) -> str:
    """What decodes the samples of a model whose manifest says decoder "vae" or "pixels", without loading
    anything: "none", "pixels", a hub id, "random", or a directory's or decoder file's absolute path; DiTError
    for a --vae this model cannot use (the one place --vae's grammar is checked). A decoder file is checked
    against the model's latent_shape (C, L, L) and, chunk by chunk, the denoiser batch sizes given."""
    if spec == "none":
        return "none"
    if decoder == "pixels":
        if spec not in ("auto", "pixels"):
            raise DiTError(f"--vae {spec}: this model makes pixels, not latents; drop --vae (or --vae none for "
                           "the raw samples as .npy)")
        return "pixels"
    if spec == "pixels":
        raise DiTError("--vae pixels is for pixel-space models; this model makes latents: use ema, mse, a "
                       "directory, a decoder graph or engine, random or none")
    if spec == "auto":
        return HUB_VAES["mse"]
    if is_decoder_file(spec):
        check_decoder_file(spec, latent_shape, batch_sizes)
        return str(Path(spec).expanduser().absolute())  # not resolved: a link's own manifest is beside the link
    if spec not in (*HUB_VAES, "random") and not Path(spec).expanduser().is_dir():
        raise DiTError(f"--vae {spec!r} is neither ema, mse, random, none nor a directory, and not a decoder "
                       f"graph or engine ({', '.join(DECODER_SUFFIXES)}); pass a local diffusers VAE directory, "
                       f"a decoder made by dit-export --vae, or one of those")
    return vae_identity(spec)


def load_decoder(spec: str, decoder: str, channels: int, device="cpu", latent_size: int | None = None,
                 threads: int | None = None):
    """The decoder for a model whose manifest says decoder "vae" or "pixels"; None for --vae none.

    spec: auto (mse for VAE models, pixels for pixel-space ones), ema | mse | PATH | DECODER.onnx|.plan |
    random | none. latent_size: the model's, which a decoder file must take (None: not checked).
    """
    shape = None if latent_size is None else (channels, latent_size, latent_size)
    identity = check_decoder_spec(spec, decoder, shape)
    if identity == "none":
        return None
    if identity == "pixels":
        return PixelDecoder(channels)
    if is_decoder_file(identity):
        path = Path(identity)
        manifest = read_decoder_manifest(path)
        return GraphDecoder(path, manifest, open_decoder(path, manifest, device, threads))
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


def chunks(count: int, size: int) -> list[int]:
    """The sizes of the calls that decode count latents, size at a time."""
    return [min(size, count - start) for start in range(0, count, size)]


def decode_in_chunks(run, x: torch.Tensor, size: int) -> np.ndarray:
    """run(latents (n, C, L, L)) -> images (n, 3, H, W) in [-1, 1], size latents at a time -> uint8 (N, H, W, 3)."""
    with torch.inference_mode():
        return np.concatenate([pixels_from_images(run(x[start:start + size])) for start in range(0, len(x), size)])


def decode(vae: Vae, x: torch.Tensor, batch_size: int | None = None) -> np.ndarray:
    """Latents (N, 4, L, L) -> uint8 images (N, 8L, 8L, 3), decoded batch_size at a time (None: chunk_size's)."""
    device = next(vae.model.parameters()).device
    size = batch_size or chunk_size(8 * x.shape[-1])

    def run(latents):
        return vae.model.decode(latents.to(device, torch.float32) / SCALING_FACTOR).sample  # (n, 3, H, W)

    return decode_in_chunks(run, x, size)
