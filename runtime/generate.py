"""generate(): labels -> sampled and decoded batches, the one pipeline behind dit-run and the benchmarks.

    from runtime import generate, load_denoiser, sampler_from_name

    with load_denoiser("fashion-28-fp16.onnx") as denoiser:
        for batch in generate(denoiser, [0, 1, 2], sampler_from_name("ddim", 50), seed=0, decoder="auto"):
            print(batch.start, batch.labels, batch.samples.shape)  # uint8 (n, 28, 28, 1)

With seed S the initial latents, the labels sample_ddp.py would draw (for None entries) and every
step's noise come from one generator on the sampling device in the official order (runtime.noise),
so sample.py and generate() give the same latents for the same checkpoint on the same device.
"""

import math
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch

from dit_ref.errors import DiTError
from runtime.backends import load_denoiser
from runtime.noise import OfficialNoise, PerSampleNoise
from runtime.vae import load_decoder

MAX_STEPS = 1000  # the training schedule's length: no sampler can take more distinct steps
SEEDINGS = ("official", "per-sample")


@dataclass(frozen=True)
class Batch:
    """One batch of finished samples."""

    start: int  # index of the first sample in the run
    labels: np.ndarray  # (n,) int64, the drawn ones filled in
    samples: np.ndarray  # uint8 images (n, H, W, channels), or float32 latents (n, C, L, L) without a decoder


def load_with_decoder(path, backend: str, vae: str, **options):
    """(denoiser, decoder) for an engine or graph: what a Ray Data worker or a Serve replica loads once.
    options are the backend's (device, threads, cuda_graphs); vae is a decoder spec, as dit-run --vae."""
    denoiser = load_denoiser(path, backend, **options)
    facts = denoiser.provenance
    return denoiser, load_decoder(vae, facts.decoder, facts.latent_channels, denoiser.device)


def check_labels(labels, num_classes: int, what: str = "class") -> list[int | None]:
    """labels as a list; DiTError for one outside 0..num_classes-1 (None: drawn at random)."""
    labels = list(labels)
    for label in labels:
        if label is not None and (isinstance(label, bool) or not 0 <= int(label) < num_classes):
            raise DiTError(f"{what} {label} is out of range: this model's classes are 0..{num_classes - 1} "
                           f"({num_classes} is the null class used for guidance)")
    return [None if label is None else int(label) for label in labels]


def check_options(batch_size: int | None = None, threads: int | None = None, steps: int | None = None,
                  cfg_scale: float | None = None, num_samples: int | None = None) -> None:
    """DiTError for a sampling option no run can use; called before anything loads."""
    for name, value in (("--batch-size", batch_size), ("--threads", threads), ("--num-samples", num_samples)):
        if value is not None and value < 1:
            raise DiTError(f"{name} must be at least 1, not {value}")
    if steps is not None and not 1 <= steps <= MAX_STEPS:
        raise DiTError(f"--steps must be 1..{MAX_STEPS} (the training schedule has {MAX_STEPS} timesteps), not {steps}")
    if cfg_scale is not None and not math.isfinite(cfg_scale):
        raise DiTError(f"--cfg-scale must be a finite number, not {cfg_scale}")


def check_seeding(seeding: str, seed: int) -> None:
    """DiTError for an unknown seeding, or a seed per-sample seeding cannot key (numpy's SeedSequence
    takes non-negative integers)."""
    if seeding not in SEEDINGS:
        raise DiTError(f"unknown seeding {seeding!r}; choose one of {', '.join(SEEDINGS)}")
    if seeding == "per-sample" and seed < 0:
        raise DiTError(f"--seed must be 0 or more with per-sample seeding, not {seed}")


def choose_batch_size(requested: int | None, num_samples: int, denoiser) -> int:
    """--batch-size, or as many samples as the denoiser's batch range allows; both the full and the
    last batch are checked against the range."""
    size = requested or min(num_samples, denoiser.batch_range.max)
    for n in {min(size, num_samples), num_samples % size or size}:
        denoiser.batch_range.check(n, remedy="re-export (or rebuild the engine) with --batch MIN:OPT:MAX")
    return size


def generate(denoiser, labels, sampler, *, seed: int = 0, cfg_scale: float = 4.0, batch_size: int | None = None,
             decoder=None, on_step: Callable[[dict], None] | None = None, seeding: str = "official",
             first_index: int = 0) -> Iterator[Batch]:
    """Sample len(labels) images (None entries: random labels) in batches; yields each finished Batch.

    seeding "official": one generator for the run, sample.py's order (bitwise sample.py; depends on
    the batch composition). "per-sample": sample first_index + k has its own generator keyed by
    (seed, index), so it comes out the same in any batch, order or worker.

    decoder: None for raw latents, a runtime.vae.load_decoder decoder, or its spec ("auto": the
    model's own, the SD VAE (mse) or pixels; "ema", "mse", a directory, "random").
    on_step gets the sampler's {"x", "i", "t", "total"} after every denoiser call.
    """
    provenance = denoiser.provenance
    if isinstance(decoder, str):
        decoder = load_decoder(decoder, provenance.decoder, provenance.latent_channels, denoiser.device)
    labels = check_labels(labels, provenance.num_classes)
    check_options(batch_size=batch_size, cfg_scale=cfg_scale, num_samples=len(labels))
    check_seeding(seeding, seed)
    batch_size = choose_batch_size(batch_size, len(labels), denoiser)
    official = OfficialNoise(seed, denoiser.device)
    for start in range(0, len(labels), batch_size):
        chunk = labels[start:start + batch_size]
        indices = range(first_index + start, first_index + start + len(chunk))
        noise = official if seeding == "official" else PerSampleNoise(seed, indices, denoiser.device)
        yield Batch(start, *sample_batch(denoiser, chunk, sampler, noise, [cfg_scale] * len(chunk), decoder, on_step))


def sample_batch(denoiser, labels: list, sampler, noise, cfg_scales: list[float], decoder=None,
                 on_step: Callable[[dict], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One denoiser batch: labels (None: drawn by noise), one cfg scale per sample -> (labels, samples).

    The labels are checked and the batch fits the denoiser's range (generate() sees to both; so does a
    service that stacks the samples of several requests, each with its own seed and scale).
    """
    provenance = denoiser.provenance
    with torch.inference_mode():
        x, y = noise.draw_batch(labels, provenance.latent_shape, provenance.num_classes)  # (n, C, L, L), (n,)
        scale = torch.tensor(cfg_scales, dtype=torch.float32, device=denoiser.device)  # (n,)
        x = sampler(denoiser, x, y, scale, noise, on_step)
        samples = x.float().cpu().numpy() if decoder is None else decoder(x)
    return y.cpu().numpy(), samples
