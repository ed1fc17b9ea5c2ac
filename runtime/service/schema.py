"""dit-serve's API, described: the request, answer and error shapes as pydantic models and the statuses each
endpoint answers, from which FastAPI generates the OpenAPI document served at GET /openapi.json.

The models describe; they check nothing. runtime.service.api stays the one place that checks a request
(its 400 messages say what was wrong), so FastAPI never sees a body model: the generate endpoint's
body is declared by reference (GENERATE_BODY), and its schema, whose ranges are the served model's
(its classes, --max-images), is made per service by generate_request_model().
"""

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from runtime.options import HTTP_OPTIONS


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


def answer_model():
    """POST /v1/generate's answer: the images, and the options used (runtime.options' HTTP fields)."""
    used = {option.name: (option.http.answer, Field(**option.http.answer_schema)) for option in HTTP_OPTIONS}
    return create_model(
        "GenerateAnswer", __doc__="The request's images, in its order, and what made them.",
        images=(list[str], Field(description="One base64 PNG per class label.")),
        labels=(list[int], Field(description="Each image's class number (names resolved).")),
        **used,
        model=(str, ...),
        image_size=(int, ...),
        random_weights=(bool, Field(description="True: the model has random weights; the images are noise.")),
        batch_sizes=(list[int], Field(description="Per image, the largest denoiser batch it was in.")),
        denoiser_calls=(list[DenoiserCalls], ...),
    )


GenerateAnswer = answer_model()
ANSWERED = tuple(option.name for option in HTTP_OPTIONS)  # the options an answer echoes, as the plan used them


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


Defaults = create_model("Defaults", **{option.name: (option.http.default or option.http.answer,
                                                       Field(**option.http.default_schema))
                                        for option in HTTP_OPTIONS})


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
        **{option.name: (option.http.request, Field(option.default, **option.http.schema)) for option in HTTP_OPTIONS},
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
