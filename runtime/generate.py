"""generate(): labels -> sampled and decoded batches, the one pipeline behind dit-run, --ray, dit-serve and the
benchmarks.

    from runtime import generate, load_denoiser, sampler_from_name

    with load_denoiser("fashion-28-fp16.onnx") as denoiser:
        for batch in generate(denoiser, [0, 1, 2], sampler_from_name("ddim", 50), seed=0, decoder="auto"):
            print(batch.start, batch.labels, batch.samples.shape)  # uint8 (n, 28, 28, 1)

With seed S the initial latents, the labels sample_ddp.py would draw (for None entries) and every
step's noise come from one generator on the sampling device in the official order (runtime.sampling.noise),
so sample.py and generate() give the same latents for the same checkpoint on the same device.
generate() checks its arguments as one request plan (runtime.plan) and runs generate_plan().
"""

from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch
from tqdm import tqdm

from dit_ref.errors import DiTError
from runtime.backends import load_denoiser
from runtime.caching import cached_denoiser
from runtime.plan import ModelFacts, Plan, make_plan
from runtime.sampling import CallOptions
from runtime.sampling.noise import OfficialNoise, PerSampleNoise
from runtime.vae import load_decoder


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
    return denoiser, load_decoder(vae, facts.decoder, facts.latent_channels, denoiser.device, facts.latent_size,
                                  options.get("threads"))


def generate(denoiser, labels, sampler=None, *, decoder=None, on_step: Callable[[dict], None] | None = None,
             first_index: int = 0, **options) -> Iterator[Batch]:
    """Sample len(labels) images (None entries: random labels; numbers or class names) in batches; yields
    each finished Batch.

    sampler: a Sampler (runtime.sampling.sampler_from_name) or a sampler's name (with steps=); None: ddpm.
    options: the request options (runtime.options.OPTIONS), as dit-run's flags and with their defaults: seed,
    cfg_scale, steps, batch_size, a guidance interval, a cache policy (graphs need their --cached-steps pair), ...;
    seeding "official" (the default: one generator for the run, sample.py's order, bitwise sample.py, depending
    on the batch composition) or "per-sample" (sample first_index + k has its own generator keyed by (seed,
    index), the same in any batch, order or worker).

    decoder: None for raw latents, a runtime.vae.load_decoder decoder, or its spec ("auto": the
    model's own, the SD VAE (mse) or pixels; "ema", "mse", a directory, a decoder graph or engine made by
    dit-export --vae, "random").
    on_step gets the sampler's {"x", "i", "t", "total"} after every denoiser call.
    """
    spec = decoder if isinstance(decoder, str) else ("none" if decoder is None else "auto")
    if sampler is not None:
        options["sampler"] = sampler
    if options.get("profile") is not None:
        given = {name: value for name, value in options.items() if value is not None}  # None: not given
        options = {**profile_request(denoiser, options["profile"], set(given)), **given}
    plan = make_plan(list(labels), decoder=spec, first_index=first_index, **options).check(ModelFacts.of(denoiser))
    if isinstance(decoder, str):
        provenance = denoiser.provenance
        decoder = load_decoder(decoder, provenance.decoder, provenance.latent_channels, denoiser.device,
                               provenance.latent_size)
    return generate_plan(denoiser, plan, decoder, on_step)


def profile_request(denoiser, spec: str, given) -> dict:
    """The request options of a profile point (runtime.profile) the caller did not give (names), for a denoiser
    that runs what the point runs; DiTError otherwise."""
    from runtime.profile import load_point

    if denoiser.manifest is None:
        raise DiTError(f"profile {spec}: a profile's points run graphs or engines; load one with "
                       f"load_denoiser(path, profile={spec!r})")
    profile, point = load_point(spec, denoiser.path)
    if not denoiser.runs(profile.graph_path(point), point.backend, point.load):
        raise DiTError(f"profile {point.name} runs {point.where()}, not "
                       f"{denoiser.path.name} on {denoiser.name}; load it with load_denoiser({str(denoiser.path)!r}, "
                       f"profile={spec!r})")
    return point.request_for(given)


def generate_plan(denoiser, plan: Plan, decoder=None, on_step: Callable[[dict], None] | None = None
                  ) -> Iterator[Batch]:
    """The samples of a checked plan (Plan.check) in batches of its batch size; decoder None: latents."""
    if plan.cache is not None:
        denoiser = cached_denoiser(denoiser)
    labels = list(plan.labels)
    batch_size = plan.choose_batch_size(len(labels), denoiser.batch_range)
    official = OfficialNoise(plan.seed, denoiser.device)
    for start in range(0, len(labels), batch_size):
        chunk = labels[start:start + batch_size]
        indices = range(plan.first_index + start, plan.first_index + start + len(chunk))
        noise = official if plan.seeding == "official" else PerSampleNoise(plan.seed, indices, denoiser.device)
        yield Batch(start, *sample_batch(denoiser, chunk, plan.sampler, noise, [plan.cfg_scale] * len(chunk),
                                         decoder, on_step, plan.call_options))


def sample_batch(denoiser, labels: list, sampler, noise, cfg_scales: list[float], decoder=None,
                 on_step: Callable[[dict], None] | None = None,
                 options: CallOptions = CallOptions()) -> tuple[np.ndarray, np.ndarray]:
    """One denoiser batch: labels (None: drawn by noise), one cfg scale per sample -> (labels, samples).

    The labels are checked and the batch fits the denoiser's range (the plan sees to both; so does a
    service that stacks the samples of several requests, each with its own seed and scale).
    """
    provenance = denoiser.provenance
    with torch.inference_mode():
        x, y = noise.draw_batch(labels, provenance.latent_shape, provenance.num_classes)  # (n, C, L, L), (n,)
        scale = torch.tensor(cfg_scales, dtype=torch.float32)  # (n,), on the CPU as a trajectory keeps it
        x = sampler(denoiser, x, y, scale, noise, on_step, options)
        samples = x.float().cpu().numpy() if decoder is None else decoder(x)
    return y.cpu().numpy(), samples


def write_samples(denoiser, plan: Plan, decoder, output) -> None:
    """generate_plan() into output (runtime.images), with progress bars over images and steps."""
    labels = plan.labels
    images_bar = tqdm(total=len(labels), desc="images", unit="img", disable=None)
    steps_bar = tqdm(total=plan.sampler.num_calls, desc="steps", unit="step", leave=False, disable=None)

    def on_step(info):
        if info["i"] == 0:
            steps_bar.reset()
        steps_bar.update()

    with images_bar, steps_bar:
        for batch in generate_plan(denoiser, plan, decoder, on_step):
            output.add(batch.samples)
            images_bar.update(len(batch.samples))
