"""dit-serve's HTTP API without the server: request bodies checked into a request plan, the model's
summary, and the errors as (status, one line). Pure functions, so the same checks are tested without Ray.

POST /v1/generate takes {"class_labels": [207, "golden retriever"], "seed": 0, "steps": 50,
"sampler": "ddim", "cfg_scale": 4.0}; only class_labels is required, the rest default as dit-run's
options do. A request becomes a runtime.plan.Plan, checked by the same code as dit-run's flags (the
decoder is the service's, dit-serve --vae). Image i of a request with seed S is sample i of
`dit-run --seeding per-sample --seed S`.
"""

import json
from dataclasses import dataclass
from pathlib import Path

from dit_ref.class_names import class_names
from dit_ref.contract import RANDOM_WEIGHTS, BatchRange, Manifest, read_manifest
from dit_ref.errors import DiTError
from runtime.options import HTTP_OPTIONS, OPTIONS
from runtime.plan import ModelFacts, Plan, make_plan
from runtime.profile import without_stale_refresh
from runtime.sampling import default_steps, sampler_names
from runtime.service.settings import Settings

# dit-run's defaults (steps: the sampler's); the options dit-serve has a flag for (runtime.options SERVE_OPTIONS)
# default to the service's own, the table's unless it was started with them.
DEFAULTS = {option.name: option.default for option in HTTP_OPTIONS}
FIELDS = ("class_labels", *DEFAULTS)
# How a request's fields are named in its 400s (runtime.plan words each fault once, for every front end).
HTTP_NAMES = {"class": "class_labels entry", **{name: name for name in OPTIONS}, "num_samples": "class_labels"}


class ServiceError(Exception):
    """An HTTP error answered as {"error": message} with its status (and headers, e.g. Retry-After)."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


@dataclass(frozen=True)
class Model:
    """What a request is checked against: the model's classes and the service's per-request limit."""

    name: str
    num_classes: int
    names: tuple[str, ...] | None  # one name line per class, or None (numbers only)
    max_images: int
    defaults: tuple = ()  # (option, value) pairs: the service's defaults for a request that names none
    cached_steps: bool = False  # the graph has its cached-steps pair: requests may ask for a cache policy
    points: tuple = ()  # (name, its runtime.profile.Point, or why this service cannot run it) of its tuning profile

    @classmethod
    def from_manifest(cls, manifest: Manifest, max_images: int, defaults: dict | None = None,
                      points: dict | None = None) -> "Model":
        return cls(manifest.model, manifest.num_classes, class_names(manifest.model, manifest.num_classes), max_images,
                   tuple((defaults or {}).items()), bool(manifest.cached_steps), tuple((points or {}).items()))

    @property
    def facts(self) -> ModelFacts:
        """What a request's plan is checked against: its classes; a replica pads a request to the graph's
        minimum batch and splits it into batches of --max-batch, so any count up to max_images fits; the
        decoder is the service's (checked when it starts), so the plan asks for none of its own."""
        return ModelFacts(self.name, self.num_classes, None, None, BatchRange(1, 1, self.max_images),
                          cached_steps=self.cached_steps)


def bad_request(message: str) -> ServiceError:
    return ServiceError(400, message)


def parse_generate(body: bytes, model: Model) -> Plan:
    """A POST /v1/generate body -> its checked Plan (per-sample seeding); ServiceError 400 with the one line
    that says what is wrong."""
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
    given = {name for name, value in fields.items() if value is not None}
    options = {**DEFAULTS, **without_stale_refresh(dict(model.defaults), given)}  # (dit-serve --profile's list)
    try:
        if fields.get("profile") is not None:
            options.update(profile_options(fields["profile"], model, given))
        options.update(fields)
        labels = check_label_list(options.pop("class_labels", None), model)
        plan = make_plan(labels, seeding="per-sample", decoder="none", names=HTTP_NAMES, **options)
        return plan.check(model.facts)
    except DiTError as error:
        raise bad_request(str(error)) from None


def served_points(settings: Settings) -> dict:
    """The points of the profile beside the served graph: name -> the point (runtime.profile.Point) where it runs on
    what this service runs, else one line saying why not (another model, another graph or backend); {} without a
    profile. A warning when it was measured elsewhere; DiTError for a profile that cannot be read (dit-serve's
    prepare reads it once, before Ray starts, into Settings.points)."""
    from runtime.profile import check_model, profile_path_for, read_profile, warn_if_elsewhere

    path = profile_path_for(settings.path)
    if not path.is_file():
        return {}
    profile, served = read_profile(path), Path(settings.path).resolve()
    try:
        check_model(profile, read_manifest(served))
    except DiTError as error:  # its points are refused, each with the line that says why and what to do
        return dict.fromkeys(profile.record["points"], str(error))
    warn_if_elsewhere(profile, served)
    points = {}
    for name in profile.record["points"]:
        point = profile.point(name)
        here = (profile.graph_path(point).resolve() == served and point.backend == settings.backend
                and point.load == settings.load_options)
        points[name] = point if here else (f"profile {name!r} runs {point.where()}, not what this service runs; "
                                           f"start dit-serve with --profile {name} to serve it")
    return points


def profile_options(name, model: Model, given) -> dict:
    """The request options of the service's profile point `name` the request does not give (names), each of them
    (None too: the point's, not the service's default); DiTError when there is no such point or it runs on another
    graph or backend than the service's."""
    points = dict(model.points)
    if name not in points:
        have = ", ".join(points) if points else "none (no dit-tune profile beside the served graph)"
        raise DiTError(f"profile {name!r} is not one of this service's profile points: {have}")
    if isinstance(points[name], str):  # why it is not served here, and what to do (served_points)
        raise DiTError(points[name])
    return {**dict.fromkeys(points[name].request), **points[name].request_for(given)}


def check_label_list(values, model: Model) -> list:
    """class_labels: a non-empty list of numbers and class names, at most model.max_images of them."""
    if not isinstance(values, list) or not values:
        raise DiTError("class_labels must be a non-empty list of class numbers or names, e.g. [207, \"otter\"]")
    if len(values) > model.max_images:
        raise DiTError(f"{len(values)} images asked for; this service makes at most {model.max_images} per request "
                       f"(dit-serve --max-images): split the request")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise DiTError(f"class_labels entry {json.dumps(value)} is neither a class number nor a name")
    return values


def model_summary(manifest: Manifest, backend: str, settings) -> dict:
    """GET /v1/model: what the service runs and what a request may ask."""
    named = class_names(manifest.model, manifest.num_classes) is not None
    return {"model": manifest.model, "image_size": manifest.image_size, "precision": manifest.precision,
            "num_classes": manifest.num_classes, "class_names": named, "decoder": manifest.decoder,
            "batch": manifest.batch.to_dict(), "backend": backend,
            "random_weights": manifest.random_weights, "checkpoint": manifest.checkpoint.source,
            "warning": RANDOM_WEIGHTS if manifest.random_weights else None,
            "max_batch": settings.max_batch, "max_images": settings.max_images, "replicas": settings.replicas,
            "batching": settings.batching, "simulated_call_ms": settings.simulated_call_ms,
            "samplers": sampler_names(), "default_steps": {name: default_steps(name) for name in sampler_names()},
            "defaults": {**DEFAULTS, **settings.request_defaults}}
