"""What every denoiser backend is: a callable (x, t, y, cfg_scale) -> (eps, var_values) and its facts.

Backends (runtime/backends/) subclass Denoiser; the sampling loop, generate(), the CLI and the
benchmarks see only this. var_values is None for models without learned sigma.
"""

from dataclasses import dataclass

import torch

from dit_ref.contract import BatchRange, Manifest


@dataclass(frozen=True)
class Provenance:
    """What a denoiser computes and where its weights came from (printed, and written into outputs)."""

    model: str  # config name, "DiT-XL/2" or "fashion"
    image_size: int
    latent_channels: int
    latent_size: int
    num_classes: int
    learn_sigma: bool
    decoder: str  # "vae" or "pixels"
    cfg_channels: int
    source: str  # the checkpoint's path, URL, hub id, "shipped:fashion" or "random init (seed N)"
    random_weights: bool  # True: outputs are noise, not images

    @classmethod
    def from_manifest(cls, manifest: Manifest) -> "Provenance":
        return cls(manifest.model, manifest.image_size, manifest.latent_channels, manifest.latent_size,
                   manifest.num_classes, manifest.learn_sigma, manifest.decoder, manifest.cfg_channels,
                   manifest.checkpoint.source, manifest.random_weights)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(C, L, L) of x."""
        return (self.latent_channels, self.latent_size, self.latent_size)


class Denoiser:
    """Base of the backends: name, device, provenance, batch range, __call__, close / context manager."""

    name: str  # "onnxruntime-cpu fp16", "tensorrt fp16", "torch-cuda float16", ...
    device: torch.device  # where inputs are expected and outputs returned
    provenance: Provenance
    batch_range: BatchRange  # image batch sizes one call takes
    manifest: Manifest | None = None  # of the graph or engine; None for the PyTorch reference

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return self.provenance.latent_shape

    @property
    def latent_size(self) -> int:
        return self.provenance.latent_size

    def __call__(self, x, t, y, cfg_scale):
        """x (B, C, L, L) float32, t, y (B,) int64, cfg_scale (B,) float32 -> (eps, var_values or None)."""
        raise NotImplementedError

    def close(self) -> None:
        """Free what the backend holds (sessions, engines, GPU memory). Safe to call twice."""

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()
        return False
