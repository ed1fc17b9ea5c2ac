"""One request plan: what to sample, built once from dit-run's flags, generate()'s arguments or an HTTP
request, and checked once, before anything loads, against what the model is (ModelFacts, from its
manifest or config), with one message per fault.

    plan = make_plan(classes=[207, "otter"], sampler="ddim", steps=50, seed=0)   # checks what needs no model
    plan.check(ModelFacts.from_manifest(read_manifest(path)))                   # labels, batches, decoder
    plan.labels_for(num_classes)   # one label per sample (None: drawn from the seed)

dit-run, generate(), dit-run --ray (every worker gets the same plan, a part of it each) and dit-serve
(one plan per request) use it. Seeding: "official" is one stream in sample.py's order (bitwise
sample.py; depends on the batch composition); "per-sample" keys sample first_index + k by (seed, index).
"""

import math
import re
from dataclasses import dataclass, replace
from pathlib import Path

from dit_ref import configs
from dit_ref.class_names import class_names, resolve_label
from dit_ref.contract import BatchRange, Manifest
from dit_ref.errors import DiTError
from runtime.caching import NO_PAIR, CachePolicy, parse_cache
from runtime.sampling import Sampler, check_steps, sampler_from_name
from runtime.vae import check_decoder_spec

DEMO_LABELS = (207, 360, 387, 974, 88, 979, 417, 279)  # sample.py's class_labels
SEEDINGS = ("official", "per-sample")
MAX_SEED = 2**63 - 1  # per-sample seeding keys numpy's SeedSequence with (seed, index): non-negative
# How each front end names a plan's fields in its messages: dit-run's flags (the default), dit-serve's JSON fields.
CLI_NAMES = {"class": "--class", "num_samples": "--num-samples", "steps": "--steps", "cfg_scale": "--cfg-scale",
             "seed": "--seed", "batch_size": "--batch-size", "sampler": "--sampler",
             "guidance_interval": "--guidance-interval", "cache": "--cache"}


@dataclass(frozen=True)
class ModelFacts:
    """What a plan is checked against, known before the model loads."""

    model: str  # config name, "DiT-XL/2" or "fashion"
    num_classes: int
    decoder: str | None  # "vae" or "pixels"; None: decoding is not the plan's to choose (dit-serve's own --vae)
    latent_channels: int | None
    batch_range: BatchRange  # image batch sizes one denoiser call takes
    latent_size: int | None = None  # L of the samples; None: not known before loading (a decoder file is checked then)
    cached_steps: bool = True  # its refresh and reuse forms exist (graphs: exported with --cached-steps)

    @classmethod
    def from_manifest(cls, manifest: Manifest) -> "ModelFacts":
        return cls(manifest.model, manifest.num_classes, manifest.decoder, manifest.latent_channels, manifest.batch,
                   manifest.latent_size, bool(manifest.cached_steps))

    @classmethod
    def from_config(cls, model: str, batch_range: BatchRange, num_classes: int | None = None,
                    image_size: int | None = None) -> "ModelFacts":
        config = configs.get_config(model)
        latent_size = None if image_size is None else config.latent_size(image_size)
        return cls(config.name, num_classes or config.num_classes, config.decoder, config.latent_channels,
                   batch_range, latent_size)

    @classmethod
    def of(cls, denoiser) -> "ModelFacts":
        """The facts of a loaded denoiser (its provenance and batch range)."""
        facts = denoiser.provenance
        manifest = denoiser.manifest
        return cls(facts.model, facts.num_classes, facts.decoder, facts.latent_channels, denoiser.batch_range,
                   facts.latent_size, manifest is None or bool(manifest.cached_steps))

    @property
    def latent_shape(self) -> tuple[int, int, int] | None:
        """(C, L, L) of the samples, when known."""
        return None if self.latent_size is None else (self.latent_channels, self.latent_size, self.latent_size)

    @property
    def names(self) -> tuple[str, ...] | None:
        """One name line per class (dit_ref.class_names), or None: numbers only."""
        return class_names(self.model, self.num_classes)


@dataclass(frozen=True)
class Plan:
    """What to sample and how; made by make_plan (which checks what needs no model)."""

    classes: tuple | None  # the labels asked for: numbers, names, None entries (random); None: the defaults
    num_samples: int | None  # None: one per label asked for (or the defaults)
    sampler: Sampler
    cfg_scale: float = 4.0
    seed: int = 0
    seeding: str = "official"
    batch_size: int | None = None  # None: as many as the denoiser's batch range allows
    decoder: str = "auto"  # a decoder spec, as dit-run --vae ("none": the raw latents)
    first_index: int = 0  # index of this plan's first sample in the run (per-sample seeding keys by it)
    names: tuple = tuple(CLI_NAMES.items())  # how the front end that made it names its fields (messages)
    guidance_interval: tuple[int, int] | None = None  # (LO, HI) timesteps guided, ends included; None: every step
    cache: CachePolicy | None = None  # cached steps (runtime.caching); None: every call computes everything

    @property
    def labels(self) -> tuple:
        """The checked plan's labels, one per sample (None: drawn from the seed)."""
        if self.num_samples is not None or self.classes is None:
            raise DiTError("internal: a plan's labels are known once it is checked (Plan.check)")
        return self.classes

    def labels_for(self, num_classes: int, names: tuple[str, ...] | None = None) -> list[int | None]:
        """One entry per sample: a label, or None for a random (seeded) one; DiTError for a label that is
        not a class of the model (numbers, or names in its table).

        No classes and no num_samples: sample.py's demo labels (ImageNet models; other models: each
        class once). No classes with num_samples: all random, as sample_ddp.py draws them. More
        samples than classes: the rest random.
        """
        if self.classes is None:
            demo = list(DEMO_LABELS) if num_classes == configs.NUM_CLASSES else list(range(num_classes))
            return demo if self.num_samples is None else [None] * self.num_samples
        what = dict(self.names)["class"]
        given = [None if value is None else check_label(resolve_label(value, names, num_classes, what), num_classes,
                                                        what) for value in self.classes]
        count = len(given) if self.num_samples is None else self.num_samples
        return (given + [None] * count)[:count]

    def check(self, facts: ModelFacts) -> "Plan":
        """self, with the labels resolved (names to numbers) and a decoder directory's or file's path made absolute
        (a Ray worker may start elsewhere); DiTError for what this model cannot make."""
        labels = self.labels_for(facts.num_classes, facts.names)
        size = self.choose_batch_size(len(labels), facts.batch_range)
        decoder = self.decoder
        if facts.decoder is not None:
            batches = {min(size, len(labels)), len(labels) % size or size}  # the denoiser batches, as decoded
            identity = check_decoder_spec(self.decoder, facts.decoder, facts.latent_shape, sorted(batches))
            decoder = identity if Path(identity).is_absolute() else decoder
        if self.cache is not None and not facts.cached_steps:
            raise DiTError(NO_PAIR)
        return replace(self, classes=tuple(labels), num_samples=None, decoder=decoder)

    def choose_batch_size(self, num_samples: int, batch_range: BatchRange) -> int:
        """batch_size, or as many samples as the range allows; the full and the last batch must fit it."""
        size = self.batch_size or min(num_samples, batch_range.max)
        for n in {min(size, num_samples), num_samples % size or size}:
            batch_range.check(n)
        return size

    def part(self, start: int, stop: int) -> "Plan":
        """The plan of samples start..stop-1 of this (checked) plan, in one batch (a Ray worker's)."""
        return replace(self, classes=self.classes[start:stop], num_samples=None, batch_size=stop - start,
                       first_index=self.first_index + start)


def make_plan(classes=None, num_samples: int | None = None, sampler: str | Sampler = "ddpm", steps: int | None = None,
              cfg_scale: float = 4.0, seed: int = 0, seeding: str = "official", batch_size: int | None = None,
              decoder: str = "auto", first_index: int = 0, names: dict = CLI_NAMES,
              guidance_interval=None, cache=None) -> Plan:
    """A Plan; DiTError (one line, naming the option as `names` does) for a value no model can use."""
    for field, value in (("batch_size", batch_size), ("num_samples", num_samples)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise DiTError(f"{names[field]} must be at least 1, not {value}")
    if classes is not None and len(classes) == 0 and num_samples is None:
        raise DiTError(f"no labels given: pass at least one {names['class']}, or {names['num_samples']} for random "
                       f"ones")
    check_cfg_scale(cfg_scale, names["cfg_scale"])
    check_seed(seed, seeding, names["seed"])
    sampler = sampler if isinstance(sampler, Sampler) else build_sampler(sampler, steps, names)
    return Plan(None if classes is None else tuple(classes), num_samples, sampler, float(cfg_scale), seed, seeding,
                batch_size, decoder, first_index, tuple(names.items()),
                parse_interval(guidance_interval, names["guidance_interval"]), parse_cache(cache, names["cache"]))


def parse_interval(value, what: str = "--guidance-interval") -> tuple[int, int] | None:
    """"LO:HI", (LO, HI) or None -> (LO, HI) timesteps of the 0..999 training schedule, LO <= HI; DiTError else."""
    if value is None:
        return None
    parts = value.split(":") if isinstance(value, str) else value
    try:
        if len(parts) != 2 or any(isinstance(part, bool) or isinstance(part, float) for part in parts):
            raise ValueError
        low, high = (int(str(part).strip()) for part in parts)
    except (TypeError, ValueError):
        raise DiTError(f"{what} {value!r} must be two timesteps LO:HI (0..{configs.NUM_TIMESTEPS - 1}), e.g. "
                       f"82:468") from None
    if not 0 <= low <= high <= configs.NUM_TIMESTEPS - 1:
        raise DiTError(f"{what} {low}:{high} must satisfy 0 <= LO <= HI <= {configs.NUM_TIMESTEPS - 1} "
                       f"(timesteps of the training schedule)")
    return low, high


def check_label(label: int, num_classes: int, what: str = "class") -> int:
    """label; DiTError unless it is one of the model's classes 0..num_classes-1."""
    if isinstance(label, bool) or not 0 <= label < num_classes:
        raise DiTError(f"{what} {label} is out of range: this model's classes are 0..{num_classes - 1} "
                       f"({num_classes} is the null class used for guidance)")
    return label


def build_sampler(name, steps: int | None = None, names: dict = CLI_NAMES) -> Sampler:
    """The named sampler; DiTError for an unknown name, steps outside 1..1000, or a diffusers scheduler that
    refuses these steps."""
    if not isinstance(name, str):
        raise DiTError(f"{names['sampler']} must be a name (ddpm, ddim, dpm++, ...), not {name!r}")
    check_steps(steps, names["steps"])
    try:
        return sampler_from_name(name, steps)
    except DiTError:
        raise
    except Exception as error:  # a diffusers scheduler's own refusal (ValueError, ...) of these steps
        raise DiTError(f"sampler {name!r} cannot take {steps} steps ({str(error).splitlines()[0][:200]})") from None


def check_cfg_scale(cfg_scale, what: str = "--cfg-scale") -> None:
    if isinstance(cfg_scale, bool) or not isinstance(cfg_scale, (int, float)) or not math.isfinite(cfg_scale):
        raise DiTError(f"{what} must be a finite number, not {cfg_scale}")


def check_seed(seed, seeding: str, what: str = "--seed") -> None:
    """DiTError for an unknown seeding or a seed it cannot key (numpy's SeedSequence takes 0..2^63-1)."""
    if seeding not in SEEDINGS:
        raise DiTError(f"unknown seeding {seeding!r}; choose one of {', '.join(SEEDINGS)}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise DiTError(f"{what} must be an integer, not {seed!r}")
    if seeding == "per-sample" and not 0 <= seed <= MAX_SEED:
        raise DiTError(f"{what} must be 0..{MAX_SEED} with per-sample seeding, not {seed}")


def split_classes(values) -> list:
    """--class values (repeats and comma lists of numbers or class names) -> numbers and names."""
    found = []
    for value in values:
        for part in str(value).split(","):
            part = part.strip()
            if part:
                found.append(int(part) if re.fullmatch(r"[+-]?\d+", part) else part)
    return found
