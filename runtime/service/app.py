"""dit-serve's Ray Serve application: a Frontend (the HTTP API, FastAPI behind Serve's proxy) and a pool of
Generator replicas that each hold the denoiser and batch the images of concurrent requests.

    HTTP -> Serve proxy -> Frontend: key, body size, request checks (runtime.service.api)
                           -> one Generator.make call per image (Serve queues them, bounded)
                        -> Generator (--replicas), --batching step (the default): a loop of denoiser calls
                           (runtime.service.stepping); before each, waiting images join the running set
                           (up to --max-batch), every image at its own timestep, sampler, steps and cfg
                           scale; an image is answered, a PNG, as soon as its last step is decoded
                           --batching request: @serve.batch gathers up to --max-batch images within
                           --batch-wait-ms, groups them by (sampler, steps) and runs each group to its end

Each image carries its request's seed and its index in the request, so its generator is keyed by
(seed, i) whatever it is batched with: image i is sample i of `dit-run --seeding per-sample`.
Imported only by dit-serve and the tests: it imports Ray Serve and FastAPI at the top. Everything
the deployments use is defined above them: Serve pickles a deployment's class when it is declared.
"""

import asyncio
import base64
import contextlib
import hmac
import uuid
from collections import defaultdict
from pathlib import Path

import ray.exceptions
import torch
from fastapi import FastAPI
from fastapi import Request as HTTPRequest
from fastapi.responses import HTMLResponse, JSONResponse
from ray import serve
from ray.serve.config import BackpressureConfig
from ray.serve.exceptions import BackPressureError
from starlette.exceptions import HTTPException

from dit_ref.contract import RANDOM_WEIGHTS, read_manifest
from runtime.backends import backend_for
from runtime.caching import cached_denoiser
from runtime.generate import load_with_decoder, sample_batch
from runtime.images import png_bytes
from runtime.sampling.noise import PerSampleNoise
from runtime.scaleout.cluster import failure_reason
from runtime.sampling import sampler_from_name
from runtime.service import schema
from runtime.service.api import Model, ServiceError, model_summary, parse_generate
from runtime.service.replica_denoiser import ReplicaDenoiser
from runtime.service.settings import Settings, key_digest
from runtime.service.stepping import Calls, Item, Made, StepBatcher, StepLoop

PAGE = Path(__file__).with_name("page.html")
MAX_BODY_BYTES = 64 * 1024  # a request is a few hundred bytes of JSON; beyond this: 413
RETRY_AFTER_S = 1  # what a 503 (queue full, replica restarting) tells the client to wait

api = FastAPI(title="dit-serve", docs_url=None, redoc_url=None, openapi_url=None)


@api.exception_handler(ServiceError)
async def answer_service_error(request, error: ServiceError):
    return JSONResponse({"error": error.message}, error.status, headers=error.headers)


@api.exception_handler(HTTPException)
async def answer_http_error(request, error: HTTPException):
    """FastAPI's own 404 / 405 in our shape."""
    return JSONResponse({"error": f"{error.detail}: {request.method} {request.url.path}"}, error.status_code)


def compatible_groups(items: list[Item]) -> list[list[int]]:
    """Positions of the items that can share a request-level batch (the same schedule; cfg and seeds differ
    freely: the graph takes one cfg scale per sample), in order of first appearance."""
    groups = defaultdict(list)
    for position, item in enumerate(items):
        groups[item.schedule].append(position)
    return list(groups.values())


def failure(error: BaseException, queue_size: int) -> BaseException:
    """What the client hears when making its images failed."""
    retry = {"Retry-After": str(RETRY_AFTER_S)}
    if isinstance(error, BackPressureError):
        return ServiceError(503, f"the service is busy: every replica holds {queue_size} waiting images; retry "
                                 f"after {RETRY_AFTER_S} s", retry)
    if isinstance(error, ray.exceptions.RayActorError):
        return ServiceError(503, "a generator replica stopped while making this request (Serve restarts it); retry "
                                 f"after {RETRY_AFTER_S} s", retry)
    if isinstance(error, (asyncio.CancelledError, KeyboardInterrupt)):
        return error  # the client went away, or the service is stopping
    return ServiceError(500, f"generation failed: {failure_reason(error)}")


async def read_body(request: HTTPRequest, limit: int) -> bytes:
    """The body, read no further than limit bytes; ServiceError 413 beyond it."""
    too_large = ServiceError(413, f"the body is over {limit} bytes; a generate request is a small JSON object")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large
    return bytes(body)


def running_generators(app_name: str) -> int:
    """Generator replicas Serve reports RUNNING (a blocking call to Serve's controller)."""
    application = serve.status().applications.get(app_name)
    deployment = application.deployments.get("Generator") if application else None
    return deployment.replica_states.get("RUNNING", 0) if deployment else 0


@serve.deployment
class Generator:
    """A replica: the denoiser and decoder, loaded once; images out, batched at the step (or the request)."""

    def __init__(self, settings: Settings):
        torch.set_num_threads(settings.threads)
        denoiser, self.decoder = load_with_decoder(settings.path, settings.backend, settings.vae,
                                                   device=settings.device, threads=settings.threads,
                                                   cuda_graphs=settings.cuda_graphs, **settings.load_options)
        if denoiser.manifest.cached_steps:  # requests choose their own cache policy, or none
            denoiser = cached_denoiser(denoiser)
        self.denoiser = ReplicaDenoiser(denoiser, settings.simulated_call_ms)
        self.replica = uuid.uuid4().hex[:8]
        facts = denoiser.provenance
        self.metadata = {"Software": "dit-serve", "model": f"{facts.model} {facts.image_size}px"}
        if facts.random_weights:
            self.metadata["Warning"] = RANDOM_WEIGHTS
        self.step_loop = None
        if settings.batching == "step":
            self.step_loop = StepLoop(StepBatcher(self.denoiser, self.decoder, settings.max_batch, self.replica,
                                                  self.metadata))
        self.make_batched.set_max_batch_size(settings.max_batch)
        self.make_batched.set_batch_wait_timeout_s(settings.batch_wait_ms / 1000)

    async def make(self, item: Item) -> Made:
        """One image, made beside the images of other requests."""
        if self.step_loop is not None:
            return await self.step_loop.make(item)
        return await self.make_batched((item, self.denoiser.calls))

    @serve.batch(max_batch_size=1, batch_wait_timeout_s=0.0)  # both set per service in __init__
    async def make_batched(self, jobs: list[tuple[Item, int]]) -> list[Made]:
        """--batching request: the (item, calls when it arrived) gathered; in a thread, so the replica keeps
        taking (and queueing) requests while a batch runs."""
        return await asyncio.to_thread(self.make_now, jobs)

    def make_now(self, jobs: list[tuple[Item, int]]) -> list[Made]:
        made = [None] * len(jobs)
        for positions in compatible_groups([item for item, _ in jobs]):
            for position, result in zip(positions, self.make_group([jobs[p] for p in positions])):
                made[position] = result
        return made

    def make_group(self, group: list[tuple[Item, int]]) -> list[Made]:
        """One denoiser batch, run to its end (ReplicaDenoiser pads it to the graph's minimum batch)."""
        items = [item for item, _ in group]
        noise = PerSampleNoise([item.seed for item in items], [item.index for item in items], self.denoiser.device)
        first = self.denoiser.calls + 1
        labels, images = sample_batch(self.denoiser, [item.label for item in items],
                                      sampler_from_name(items[0].sampler, items[0].steps), noise,
                                      [item.cfg_scale for item in items], self.decoder, options=items[0].options)
        return [Made(png_bytes(image, self.metadata), int(label), len(items),
                     Calls(self.replica, arrived, first, self.denoiser.calls))
                for image, label, (_, arrived) in zip(images, labels, group)]


@serve.deployment
@serve.ingress(api)
class Frontend:
    """The HTTP API: checks who asks and what, hands each image to the Generator pool, answers JSON."""

    def __init__(self, generator, settings: Settings):
        self.generator, self.settings = generator, settings
        manifest = read_manifest(settings.path)
        self.model = Model.from_manifest(manifest, settings.max_images, settings.request_defaults,
                                         dict(settings.points))
        self.summary = model_summary(manifest, backend_for(settings.path, settings.backend), settings)
        self.random_weights = manifest.random_weights
        self.page_html = PAGE.read_text(encoding="utf-8")
        request_model = schema.generate_request_model(self.model.num_classes, self.model.max_images,
                                                      self.model.names is not None)
        self.openapi = schema.openapi_document(api.routes, request_model, settings.api_key_sha256 is not None)

    @api.get("/", response_class=HTMLResponse)
    async def page(self) -> str:
        """The page: static, no data of its own, so a browser can load it without a key (its API calls
        carry the key)."""
        return self.page_html

    @api.get("/openapi.json", include_in_schema=False)
    async def openapi_document(self, request: HTTPRequest):
        """This API, described (OpenAPI 3.1); behind the key, as /v1 is."""
        self.admit(request)
        return self.openapi

    @api.get("/v1/health", responses=schema.answers(schema.Health, 401, 503))
    async def health(self, request: HTTPRequest):
        """Whether a replica runs: 200, or 503 while none does."""
        self.admit(request)
        running = await asyncio.to_thread(running_generators, self.settings.app_name)
        body = {"status": "ok" if running else "unavailable",
                "replicas": {"running": running, "wanted": self.settings.replicas}}
        return JSONResponse(body, 200 if running else 503)

    @api.get("/v1/model", responses=schema.answers(schema.ModelInfo, 401))
    async def model_info(self, request: HTTPRequest):
        """What the service runs and what a request may ask."""
        self.admit(request)
        return self.summary

    @api.get("/v1/classes", responses=schema.answers(schema.Classes, 401))
    async def classes(self, request: HTTPRequest):
        """Each class's number and name (names null for a model whose classes have none)."""
        self.admit(request)
        names = self.model.names or [None] * self.model.num_classes
        return {"classes": [{"label": label, "name": name} for label, name in enumerate(names)]}

    @api.post("/v1/generate", responses=schema.answers(schema.GenerateAnswer, 400, 401, 413, 500, 503),
              openapi_extra=schema.GENERATE_BODY)
    async def generate(self, request: HTTPRequest):
        """One image per class label, each made beside the images of other requests."""
        self.admit(request)
        wanted = parse_generate(await read_body(request, MAX_BODY_BYTES), self.model)
        items = [Item(label, wanted.seed, index, wanted.sampler.name, wanted.steps, wanted.cfg_scale,
                      wanted.call_options) for index, label in enumerate(wanted.labels)]
        made = await self.make_all(items)
        return {"images": [base64.b64encode(image.png).decode("ascii") for image in made],
                "labels": [image.label for image in made], **wanted.spelled(schema.ANSWERED),
                "model": self.model.name,
                "image_size": self.summary["image_size"], "random_weights": self.random_weights,
                "batch_sizes": [image.batch_size for image in made],
                "denoiser_calls": [image.calls.to_dict() for image in made]}

    async def make_all(self, items: list[Item]) -> list[Made]:
        """Every item through the Generator pool; ServiceError 503 when its queue is full or a replica died."""
        responses = []
        try:
            for item in items:  # a full queue may refuse the call itself, or its result
                responses.append(self.generator.make.remote(item))
            return list(await asyncio.gather(*responses))
        except BaseException as error:
            for response in responses:
                with contextlib.suppress(Exception):  # cancelling a refused call raises its error again
                    response.cancel()
            raise failure(error, self.settings.queue_size) from None

    def admit(self, request: HTTPRequest) -> None:
        """ServiceError 401 unless the request carries the service's key (when it has one)."""
        if self.settings.api_key_sha256 is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        given = key_digest(token.strip()) or ""
        if scheme.lower() != "bearer" or not hmac.compare_digest(given, self.settings.api_key_sha256):
            raise ServiceError(401, "missing or wrong API key: send the header Authorization: Bearer KEY",
                               {"WWW-Authenticate": "Bearer"})


def replica_capacity(settings: Settings) -> int:
    """Images one Generator replica holds at once: --batching step, the max_batch it runs and queue_size
    waiting to join; --batching request, the batch it runs, the one it gathers and queue_size waiting in
    its batch queue (which a batch drains as soon as it is free)."""
    running = settings.max_batch if settings.batching == "step" else 2 * settings.max_batch
    return running + settings.queue_size


def build_app(settings: Settings):
    """The application dit-serve runs: Frontend over settings.replicas Generators, every queue bounded.

    A Generator replica takes replica_capacity() images at once. Serve's router holds the images not yet
    handed to a replica: in a burst, until it has placed them; when every replica is full, until one
    has room (it polls with a back-off of up to 0.5 s, which is why the replicas hold the queue). It
    holds at most as many as the replicas wait for together plus one request's; beyond that, 503.
    """
    router_queue = settings.replicas * settings.queue_size + settings.max_images
    generator = Generator.options(
        num_replicas=settings.replicas,
        max_ongoing_requests=replica_capacity(settings),
        max_queued_requests=router_queue,  # beyond it, BackPressureError -> our 503
        ray_actor_options={"num_cpus": settings.threads, "num_gpus": settings.gpus_per_replica or 0},
    ).bind(settings)
    # Room for every request the replicas can hold, plus health and model calls; beyond it the proxy
    # itself answers 503 with Retry-After, so nothing queues without bound in front of us.
    ongoing = settings.replicas * replica_capacity(settings) + router_queue + 8
    return Frontend.options(
        num_replicas=1, max_ongoing_requests=ongoing, max_queued_requests=ongoing,  # a burst is placed one by one
        backpressure_config=BackpressureConfig(status_code=503, retry_after_s=RETRY_AFTER_S),
        ray_actor_options={"num_cpus": 0},
    ).bind(generator, settings)
