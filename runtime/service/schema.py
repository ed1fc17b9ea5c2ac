"""dit-serve's API, described: the request, answer and error shapes as pydantic models and the statuses each
endpoint answers, from which FastAPI generates the OpenAPI document served at GET /openapi.json.

The models describe; they check nothing. runtime.service.api stays the one place that checks a request
(its 400 messages say what was wrong), so FastAPI never sees a body model: the generate endpoint's
body is declared by reference (GENERATE_BODY), and its schema, whose ranges are the served model's
(its classes, --max-images), is made per service by generate_request_model().
"""

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from dit_ref.configs import NUM_TIMESTEPS
from runtime.plan import MAX_SEED
from runtime.sampling import sampler_names
from runtime.service.api import DEFAULTS


class Error(BaseModel):
    """Every error's answer (with its status)."""

    error: str = Field(description="One line: what was wrong and what to do.")


class DenoiserCalls(BaseModel):
    """An image took part in every denoiser call of its replica from `first` to `last`: images whose
    ranges on one replica overlap shared those calls."""

    replica: str = Field(description="The replica's own id.")
    arrived: int = Field(description="Calls the replica had started when the image reached it.")
    first: int = Field(description="The replica's number of the image's first call (1, 2, ...).")
    last: int = Field(description="... and of its last.")


class GenerateAnswer(BaseModel):
    """The request's images, in its order, and what made them."""

    images: list[str] = Field(description="One base64 PNG per class label.")
    labels: list[int] = Field(description="Each image's class number (names resolved).")
    seed: int
    sampler: str
    steps: int
    cfg_scale: float
    guidance_interval: list[int] | None = Field(description="The timesteps [LO, HI] guided; null: every step.")
    cache: str | None = Field(description="The cache policy the images were made with; null: none.")
    model: str
    image_size: int
    random_weights: bool = Field(description="True: the model has random weights; the images are noise.")
    batch_sizes: list[int] = Field(description="Per image, the largest denoiser batch it was in.")
    denoiser_calls: list[DenoiserCalls]


class ReplicaCount(BaseModel):
    running: int
    wanted: int


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    replicas: ReplicaCount


class ClassEntry(BaseModel):
    label: int
    name: str | None = Field(description="Its names, comma-separated; null for a model whose classes have none.")


class Classes(BaseModel):
    classes: list[ClassEntry]


class BatchRange(BaseModel):
    min: int
    opt: int
    max: int


class Defaults(BaseModel):
    seed: int
    sampler: str
    steps: int | None = Field(description="null: the sampler's own (default_steps).")
    cfg_scale: float
    guidance_interval: str | None = Field(description="The service's (dit-serve --guidance-interval); null: all steps.")
    cache: str | None = Field(description="The service's (dit-serve --cache); null: no cached steps.")


class ModelInfo(BaseModel):
    """What the service runs and what a request may ask."""

    model: str
    image_size: int
    precision: str
    num_classes: int
    class_names: bool = Field(description="Whether labels may be given by name.")
    decoder: str
    batch: BatchRange = Field(description="The batch sizes the engine or graph takes.")
    backend: str
    random_weights: bool
    checkpoint: str
    warning: str | None
    max_batch: int = Field(description="Images per denoiser call, at most (dit-serve --max-batch).")
    max_images: int = Field(description="Images per request, at most (dit-serve --max-images).")
    replicas: int
    batching: Literal["step", "request"] = Field(description="How a replica batches (dit-serve --batching).")
    simulated_call_ms: float | None = Field(description="Not null: a benchmark's stand-in denoiser, no images.")
    samplers: list[str]
    default_steps: dict[str, int]
    defaults: Defaults


STATUSES = {
    200: "The answer.",
    400: "A bad request: malformed JSON, an unknown field, a value out of range; the error says which.",
    401: "Missing or wrong API key (a service started with --api-key).",
    413: "The body is over 64 KiB.",
    500: "Generation failed (the error says why).",
    503: "Busy (every replica's queue is full) or a replica stopped while making it: retry after Retry-After.",
}
HEADERS = {401: {"WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}}},
           503: {"Retry-After": {"description": "Seconds to wait.", "schema": {"type": "integer"}}}}


def answers(ok: type[BaseModel] | None, *statuses: int) -> dict:
    """FastAPI's `responses=` for an endpoint: its answer model at 200 and Error at each of statuses."""
    documented = {} if ok is None else {200: {"model": ok, "description": STATUSES[200]}}
    for status in statuses:
        documented[status] = {"model": Error, "description": STATUSES[status], **(
            {"headers": HEADERS[status]} if status in HEADERS else {})}
    return documented


GENERATE_BODY = {"requestBody": {"required": True, "content": {"application/json": {
    "schema": {"$ref": "#/components/schemas/GenerateRequest"}}}}}


def generate_request_model(num_classes: int, max_images: int, named: bool) -> type[BaseModel]:
    """POST /v1/generate's body for a model with these classes (names or numbers only) and limit."""
    number = Annotated[int, Field(ge=0, le=num_classes - 1, description="A class number.")]
    name = Annotated[str, Field(description="A class name, case ignored (GET /v1/classes lists them).")]
    label = number | name if named else number
    return create_model(
        "GenerateRequest", __config__=ConfigDict(extra="forbid"), __doc__="What to make: one image per class label.",
        class_labels=(list[label], Field(min_length=1, max_length=max_images, description="One image each.")),
        seed=(int, Field(DEFAULTS["seed"], ge=0, le=MAX_SEED, description="Image i is sample i of dit-run "
                         "--seeding per-sample --seed SEED.")),
        sampler=(str, Field(DEFAULTS["sampler"], examples=sampler_names(), description="ddpm, ddim, a short "
                            "diffusers name or a diffusers scheduler class name; case ignored.")),
        steps=(int | None, Field(DEFAULTS["steps"], ge=1, le=NUM_TIMESTEPS, description="null: the sampler's own "
                                 "(GET /v1/model's default_steps).")),
        cfg_scale=(float, Field(DEFAULTS["cfg_scale"], description="Guidance scale, a finite number.")),
        guidance_interval=(list[Annotated[int, Field(ge=0, le=NUM_TIMESTEPS - 1)]] | str | None, Field(
            None, description="Guide only the steps whose timestep t (0..999) has LO <= t <= HI: [LO, HI] or "
                              "\"LO:HI\" (docs/sampling.md); null: the service's default.")),
        cache=(str | None, Field(None, pattern=r"^(fora:\d+|forecast:\d+:[12])$", description="Cached steps: "
                                 "fora:N or forecast:N:ORDER (a graph exported with --cached-steps); null: the "
                                 "service's default.")),
    )


def openapi_document(routes, request_model: type[BaseModel], keyed: bool) -> dict:
    """The OpenAPI document of these FastAPI routes, with the generate body's schema; keyed: /v1 needs the key."""
    from fastapi.openapi.utils import get_openapi

    document = get_openapi(title="dit-serve", version="1", routes=routes, summary="DiT images over HTTP",
                           description="Errors are {\"error\": \"one line\"} with the status.")
    components = document.setdefault("components", {})
    components.setdefault("schemas", {})["GenerateRequest"] = request_model.model_json_schema(
        ref_template="#/components/schemas/{model}")
    if keyed:
        components["securitySchemes"] = {"key": {"type": "http", "scheme": "bearer"}}
        for path, operations in document["paths"].items():
            for operation in operations.values() if path.startswith("/v1/") else ():
                operation["security"] = [{"key": []}]
    return document
