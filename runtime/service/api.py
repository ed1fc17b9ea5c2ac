"""dit-serve's HTTP API without the server: request bodies checked into a Request, the model's summary,
and the errors as (status, one line). Pure functions, so the same checks are tested without Ray.

POST /v1/generate takes {"class_labels": [207, "golden retriever"], "seed": 0, "steps": 50,
"sampler": "ddim", "cfg_scale": 4.0}; only class_labels is required, the rest default as dit-run's
options do. Image i of a request with seed S is sample i of `dit-run --seeding per-sample --seed S`.
"""

import functools
import json
import math
from dataclasses import dataclass

from dit_ref.class_names import class_names, resolve_label
from dit_ref.contract import Manifest
from dit_ref.errors import DiTError
from runtime.generate import MAX_STEPS, check_labels
from runtime.samplers import DIFFUSERS_SCHEDULERS, SAMPLERS, default_steps, sampler_from_name

MAX_SEED = 2**63 - 1  # per-sample seeding keys numpy's SeedSequence with (seed, index): non-negative
DEFAULTS = {"seed": 0, "sampler": "ddpm", "steps": None, "cfg_scale": 4.0}  # dit-run's (steps: the sampler's)
FIELDS = ("class_labels", *DEFAULTS)


class ServiceError(Exception):
    """An HTTP error answered as {"error": message} with its status (and headers, e.g. Retry-After)."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


@dataclass(frozen=True)
class Request:
    """One checked generation request: image i gets labels[i] and per-sample seed key (seed, i)."""

    labels: tuple[int, ...]
    seed: int
    sampler: str
    steps: int  # as asked, or the sampler's default (a diffusers scheduler may call the denoiser more often)
    cfg_scale: float


@dataclass(frozen=True)
class Model:
    """What a request is checked against: the model's classes and the service's per-request limit."""

    name: str
    num_classes: int
    names: tuple[str, ...] | None  # one name line per class, or None (numbers only)
    max_images: int

    @classmethod
    def from_manifest(cls, manifest: Manifest, max_images: int) -> "Model":
        return cls(manifest.model, manifest.num_classes, class_names(manifest.model, manifest.num_classes), max_images)


def bad_request(message: str) -> ServiceError:
    return ServiceError(400, message)


def parse_generate(body: bytes, model: Model) -> Request:
    """A POST /v1/generate body -> Request; ServiceError 400 with the one line that says what is wrong."""
    try:
        fields = json.loads(body)
    except (ValueError, RecursionError) as error:  # bad UTF-8 or JSON, nesting too deep, an integer too long
        raise bad_request(f"the body is not valid JSON ({error}); send an object such as "
                          '{"class_labels": [1, 2], "seed": 0}') from None
    if not isinstance(fields, dict):
        raise bad_request(f"the body must be a JSON object, not {type(fields).__name__}")
    unknown = [key for key in fields if key not in FIELDS]
    if unknown:
        raise bad_request(f"unknown field {unknown[0]!r}; the fields are {', '.join(FIELDS)}")
    fields = {**DEFAULTS, **fields}
    try:
        labels = parse_labels(fields.get("class_labels"), model)
        sampler, steps = parse_sampler(fields["sampler"], fields["steps"])
        return Request(labels, parse_seed(fields["seed"]), sampler, steps, parse_cfg_scale(fields["cfg_scale"]))
    except DiTError as error:
        raise bad_request(str(error)) from None


def parse_labels(values, model: Model) -> tuple[int, ...]:
    """class_labels: a non-empty list of numbers and class names, at most model.max_images of them."""
    if not isinstance(values, list) or not values:
        raise DiTError("class_labels must be a non-empty list of class numbers or names, e.g. [207, \"otter\"]")
    if len(values) > model.max_images:
        raise DiTError(f"{len(values)} images asked for; this service makes at most {model.max_images} per request "
                       f"(dit-serve --max-images): split the request")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise DiTError(f"class_labels entry {json.dumps(value)} is neither a class number nor a name")
    labels = [resolve_label(value, model.names, model.num_classes, "class_labels entry") for value in values]
    return tuple(check_labels(labels, model.num_classes, "class_labels entry"))


def integer(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise DiTError(f"{name} must be an integer, not {json.dumps(value)}")
    return value


def parse_seed(value) -> int:
    seed = integer(value, "seed")
    if not 0 <= seed <= MAX_SEED:
        raise DiTError(f"seed must be 0..{MAX_SEED}, not {seed}")
    return seed


def parse_sampler(name, steps) -> tuple[str, int]:
    """(sampler name, steps) of a request, checked by building the sampler; steps None: the sampler's default."""
    if not isinstance(name, str):
        raise DiTError(f"sampler must be a name ({', '.join(sampler_names())}), not {json.dumps(name)}")
    if steps is not None:
        steps = integer(steps, "steps")
        if not 1 <= steps <= MAX_STEPS:
            raise DiTError(f"steps must be 1..{MAX_STEPS} (the training schedule has {MAX_STEPS} timesteps), not {steps}")
    steps = default_steps(name) if steps is None else steps
    return checked_sampler(name.strip(), steps), steps


@functools.lru_cache(maxsize=64)
def checked_sampler(name: str, steps: int) -> str:
    """The sampler's own name, once it was built (cached: a diffusers scheduler takes a while to make).
    DiTError naming the choices for an unknown one, and for a scheduler that refuses these steps."""
    try:
        return sampler_from_name(name, steps).name
    except DiTError:
        raise
    except Exception as error:  # a diffusers scheduler's own refusal (ValueError, ...) of these steps
        raise DiTError(f"sampler {name!r} cannot take {steps} steps ({str(error).splitlines()[0][:200]})") from None


def parse_cfg_scale(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DiTError(f"cfg_scale must be a finite number, not {json.dumps(value)}")
    return float(value)


def sampler_names() -> list[str]:
    """The short names a request may use (any diffusers scheduler class name works too)."""
    return [*SAMPLERS, *DIFFUSERS_SCHEDULERS]


def model_summary(manifest: Manifest, backend: str, settings) -> dict:
    """GET /v1/model: what the service runs and what a request may ask."""
    named = class_names(manifest.model, manifest.num_classes) is not None
    return {"model": manifest.model, "image_size": manifest.image_size, "precision": manifest.precision,
            "num_classes": manifest.num_classes, "class_names": named, "decoder": manifest.decoder,
            "batch": manifest.batch.to_dict(), "backend": backend,
            "random_weights": manifest.random_weights, "checkpoint": manifest.checkpoint.source,
            "max_batch": settings.max_batch, "max_images": settings.max_images, "replicas": settings.replicas,
            "samplers": sampler_names(), "default_steps": {name: default_steps(name) for name in sampler_names()},
            "defaults": DEFAULTS}
