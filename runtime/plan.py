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

import re
from dataclasses import dataclass, replace
from pathlib import Path

from dit_ref import configs
from dit_ref.class_names import class_names, resolve_label
from dit_ref.contract import BatchRange, Manifest
from dit_ref.errors import DiTError
from runtime.caching import NO_PAIR, CachePolicy
from runtime.options import MAX_SEED, OPTIONS, check_names, defaults
from runtime.sampling import CallOptions, Sampler, sampler_from_name
from runtime.vae import check_decoder_spec

DEMO_LABELS = (207, 360, 387, 974, 88, 979, 417, 279)  # sample.py's class_labels
# How each front end names a plan's fields in its messages: dit-run's flags (the default); dit-serve's JSON
# fields are runtime.service.api.HTTP_NAMES.
CLI_NAMES = {"class": "--class", **{name: option.flag for name, option in OPTIONS.items()}}


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
    cfg_scale: float = OPTIONS["cfg_scale"].default
    seed: int = OPTIONS["seed"].default
    seeding: str = OPTIONS["seeding"].default
    batch_size: int | None = None  # None: as many as the denoiser's batch range allows
    decoder: str = "auto"  # a decoder spec, as dit-run --vae ("none": the raw latents)
    first_index: int = 0  # index of this plan's first sample in the run (per-sample seeding keys by it)
    names: tuple = tuple(CLI_NAMES.items())  # how the front end that made it names its fields (messages)
    guidance_interval: tuple[int, int] | None = None  # (LO, HI) timesteps guided, ends included; None: every step
    cache: CachePolicy | None = None  # cached steps (runtime.caching); None: every call computes everything
    profile: str | None = None  # the tuning profile point its options came from (runtime.profile), for provenance

    @property
    def steps(self) -> int:
        """The sampler's step count."""
        return self.sampler.steps

    @property
    def call_options(self) -> CallOptions:
        """What each denoiser call of this plan's trajectories is asked beyond its samples."""
        return CallOptions(self.guidance_interval, self.cache)

    def spelled(self, names=OPTIONS) -> dict:
        """The options' values as JSON (an answer, a record, provenance), by option name."""
        return {name: OPTIONS[name].spell(getattr(self, name)) for name in names}

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
        self.check_options(facts)
        return replace(self, classes=tuple(labels), num_samples=None, decoder=decoder)

    def check_options(self, facts: ModelFacts) -> None:
        """DiTError for an option this model cannot take: a cache policy without the cached-steps graphs."""
        if self.cache is not None and not facts.cached_steps:
            raise DiTError(f"{dict(self.names)['cache']}: {NO_PAIR}")

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


def make_plan(classes=None, *, decoder: str = "auto", first_index: int = 0, names: dict = CLI_NAMES,
              **options) -> Plan:
    """A Plan from the labels asked for and any request options (runtime.options: seed, sampler, steps,
    cfg_scale, guidance_interval, cache, num_samples, batch_size, seeding; the others take their defaults);
    DiTError (one line, naming the option as `names` does) for a value no model can use. The sampler may be
    a Sampler (with steps None)."""
    check_names(options, "a request")
    values = {**defaults(), **options}
    sampler = values.pop("sampler")
    checked = {name: OPTIONS[name].check(value, names[name]) for name, value in values.items()}
    if classes is not None and len(classes) == 0 and checked["num_samples"] is None:
        raise DiTError(f"no labels given: pass at least one {names['class']}, or {names['num_samples']} for random "
                       f"ones")
    if checked["seeding"] == "per-sample" and not 0 <= checked["seed"] <= MAX_SEED:
        raise DiTError(f"{names['seed']} must be 0..{MAX_SEED} with per-sample seeding, not {checked['seed']}")
    steps = checked.pop("steps")
    sampler = sampler if isinstance(sampler, Sampler) else build_sampler(sampler, steps, names)
    if checked["cache"] is not None:
        checked["cache"].check_fits(sampler.num_calls, names["cache"])
    return Plan(None if classes is None else tuple(classes), sampler=sampler, decoder=decoder,
                first_index=first_index, names=tuple(names.items()), **checked)


def check_label(label: int, num_classes: int, what: str = "class") -> int:
    """label; DiTError unless it is one of the model's classes 0..num_classes-1."""
    if isinstance(label, bool) or not 0 <= label < num_classes:
        raise DiTError(f"{what} {label} is out of range: this model's classes are 0..{num_classes - 1} "
                       f"({num_classes} is the null class used for guidance)")
    return label


def build_sampler(name, steps: int | None = None, names: dict = CLI_NAMES) -> Sampler:
    """The named sampler; DiTError for an unknown name, steps outside 1..1000, or a diffusers scheduler that
    refuses these steps."""
    OPTIONS["sampler"].check(name, names["sampler"])
    OPTIONS["steps"].check(steps, names["steps"])
    try:
        return sampler_from_name(name, steps)
    except DiTError:
        raise
    except Exception as error:  # a diffusers scheduler's own refusal (ValueError, ...) of these steps
        raise DiTError(f"sampler {name!r} cannot take {steps} steps ({str(error).splitlines()[0][:200]})") from None


def split_classes(values) -> list:
    """--class values (repeats and comma lists of numbers or class names) -> numbers and names."""
    found = []
    for value in values:
        for part in str(value).split(","):
            part = part.strip()
            if part:
                found.append(int(part) if re.fullmatch(r"[+-]?\d+", part) else part)
    return found
