"""dit-serve: DiT as an HTTP service on Ray Serve, requests batched into the engine.

    dit-serve fashion-28-fp16.onnx                                # http://127.0.0.1:8000/ (the page), /v1/...
    dit-serve DiT-XL-2-256-fp16.plan --replicas 2 --max-batch 16  # one replica per GPU
    DIT_API_KEY=... dit-serve G.plan --host 0.0.0.0 --ray auto    # other machines reach it: a key is required

Everything a service could be refused for is checked before Ray starts (options, the file and its
manifest, the decoder, who can reach the port); then it starts a private local Ray instance (or
joins --ray ADDRESS), runs the Serve application (runtime.service.app) and serves until Ctrl-C.
"""

import contextlib
import logging
import os
import signal
import socket
import threading
import time
from dataclasses import replace
from pathlib import Path

import click

from dit_ref.contract import RANDOM_WEIGHTS, Manifest, read_manifest
from dit_ref.errors import DiTError
from runtime.backends import BACKEND_CHOICES, backend_for
from dit_ref.machine.cpu import physical_cores
from runtime.scaleout.cluster import START_SECONDS
from runtime.cli import run_command
from runtime.service.api import served_points
from runtime.service.settings import API_KEY_ENV, Settings, app_name, check_exposure, key_digest
from runtime.options import SERVE_OPTIONS, click_flags, given_flags
from runtime.plan import ModelFacts, make_plan
from runtime.profile import load_point
from runtime.vae import check_decoder_spec, load_decoder

log = logging.getLogger("dit-serve")


def prepare(path, max_batch, vae, backend, **options) -> tuple[Settings, Manifest]:
    """Settings for the file and its manifest, every check that needs no Ray done; DiTError for what cannot
    be served."""
    if backend_for(path, backend) == "torch":
        raise DiTError("dit-serve runs an engine (.plan) or graph (.onnx); export one with dit-export")
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise DiTError(f"{path} not found; pass an engine (.plan) or graph (.onnx) made by dit-export")
    manifest = read_manifest(path)
    max_batch = max_batch or manifest.batch.opt
    if max_batch not in manifest.batch:
        raise DiTError(f"--max-batch {max_batch} is outside {path.name}'s batch range {manifest.batch.min}.."
                       f"{manifest.batch.max}; choose one within it, or re-export with --batch MIN:OPT:MAX")
    if vae == "none":
        raise DiTError("--vae none: the service answers PNG images; choose a decoder (auto, ema, mse, a directory)")
    if manifest.decoder == "pixels" and vae not in ("auto", "pixels"):  # (the service has no --vae none to offer)
        raise DiTError(f"--vae {vae}: {manifest.model} makes pixels, not latents; drop --vae")
    latent_shape = (manifest.latent_channels, manifest.latent_size, manifest.latent_size)
    # a finished group of images decodes unpadded: any size from 1 to --max-batch
    identity = check_decoder_spec(vae, manifest.decoder, latent_shape, range(1, max_batch + 1))
    vae = identity if Path(identity).is_absolute() else vae  # the replicas may start elsewhere
    load_decoder(vae, manifest.decoder, manifest.latent_channels, latent_size=manifest.latent_size)  # offline: fail now
    check_request_defaults(options.get("request_defaults", {}), manifest)
    backend = backend_for(path, backend)  # resolved here, so every replica runs the same one
    settings = Settings(path=str(path), backend=backend, vae=vae, max_batch=max_batch, **options)
    # a profile beside the graph that cannot be read: one line now, not a replica failure
    return replace(settings, points=tuple(served_points(settings).items())), manifest


def with_profile(path, backend: str, defaults: dict, given) -> tuple:
    """dit-serve --profile NAME: (file, backend, its options, requests' defaults) of the point: its graph or
    engine, backend and the backend's options, and its request options as the requests' defaults, each where
    the user gave none (runtime.profile)."""
    if defaults.get("profile") is None:
        return path, backend, {}, defaults
    profile, point = load_point(defaults["profile"], path)
    backend = backend if "backend" in given else point.backend
    return profile.graph_path(point), backend, point.load_for(backend), {**point.request_for(given), **defaults}


def check_request_defaults(defaults: dict, manifest: Manifest) -> None:
    """DiTError for a requests' default (dit-serve --guidance-interval, --cache, ...) that no request could use."""
    make_plan(**defaults).check_options(ModelFacts.from_manifest(manifest))


def check_port(host: str, port: int) -> None:
    """DiTError if the address cannot be bound (in use, or not this machine's)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host.strip("[]"), port))
        except OSError as error:
            raise DiTError(f"cannot listen on {host}:{port} ({error.strerror}); choose another --port or --host") from None


def serving_line(settings: Settings, manifest: Manifest, host: str, port: int) -> str:
    replicas = f"{settings.replicas} replica{'s' * (settings.replicas > 1)}"
    url_host = f"[{host.strip('[]')}]" if ":" in host else host  # an IPv6 address
    batching = f"batches of up to {settings.max_batch} images gathered for {settings.batch_wait_ms:g} ms"
    if settings.batching == "step":
        batching = f"up to {settings.max_batch} images a denoiser call, joining at every step"
    keyed = "; requests need the API key" if settings.api_key_sha256 else ""
    return (f"serving {manifest.model} {manifest.image_size}px ({Path(settings.path).name}, {replicas}, {batching}, "
            f"{settings.max_images} images per request, {settings.queue_size} waiting per replica at most) on "
            f"http://{url_host}:{port}/{keyed} -- Ctrl-C stops")


def start(settings: Settings, host: str, port: int, verbose: bool) -> None:
    """Serve's proxy on host:port and the application, running; DiTError with the reason if it cannot start."""
    from ray import serve

    from runtime.service.app import build_app

    if not verbose:
        logging.getLogger("ray.serve").setLevel(logging.WARNING)  # Serve's own "Started ...", "is ready" lines
    serve.start(http_options={"host": host, "port": port}, logging_config={"log_level": "WARNING"})
    check_proxy(serve, host, port)
    run_bounded(lambda: serve.run(build_app(settings), name=settings.app_name, route_prefix="/", blocking=False),
                settings, serve)


def check_proxy(serve, host: str, port: int) -> None:
    """DiTError when Serve already ran on the cluster with other HTTP options: serve.start then keeps its
    own (and only logs it), so the service would listen where nobody asked, with no key checked there."""
    from ray.serve.context import _get_global_client  # the one place Serve tells its live HTTP options

    with contextlib.suppress(ImportError, AttributeError):
        live = _get_global_client().http_config
        if (live.host, live.port) != (host, port):
            raise DiTError(f"Serve already runs on this Ray cluster with its proxy on {live.host}:{live.port}, not "
                           f"{host}:{port}, and keeps it while it runs: pass --host {live.host} --port {live.port}, "
                           f"or stop Serve there first (serve shutdown)")


def run_bounded(deploy, settings: Settings, serve) -> None:
    """deploy() (serve.run, which waits for the replicas without end) within START_SECONDS; DiTError with
    the replicas' own reason when they fail, or with the likely one when they never start."""
    outcome = {}

    def deploy_and_keep_the_outcome():
        try:
            deploy()
            outcome["done"] = True
        except Exception as error:  # a replica's constructor failed (its own retries spent)
            outcome["error"] = error

    worker = threading.Thread(target=deploy_and_keep_the_outcome, daemon=True)
    worker.start()
    worker.join(START_SECONDS)
    if "error" in outcome:
        raise DiTError(f"the service did not start: {start_failure(serve, outcome['error'], settings)}")
    if "done" not in outcome:
        raise DiTError(f"the {settings.replicas} replica(s) did not start within {START_SECONDS} s: the Ray cluster "
                       f"lacks free resources for them (other jobs may hold them); lower --replicas or free them")


def start_failure(serve, error: Exception, settings: Settings) -> str:
    """Why the application did not start: serve.run says only "failed"; the deployments' status messages
    hold the replicas' own errors."""
    from runtime.scaleout.cluster import failure_reason

    with contextlib.suppress(Exception):
        application = serve.status().applications[settings.app_name]
        for deployment in application.deployments.values():
            if deployment.message:
                return failure_reason(RuntimeError(deployment.message))
    return failure_reason(error)


def stop(settings: Settings) -> None:
    """Delete the application, its replicas finishing what they hold (a private instance then goes with
    Ray; on a cluster, Serve stays for its other applications)."""
    from ray import serve

    serve.delete(settings.app_name)


class Stop(BaseException):
    """SIGINT (Ctrl-C) or SIGTERM (kill, systemd, a container stop): shut the service down cleanly."""


def stop_on_signals() -> None:
    """Both signals raise Stop, whatever the shell that started us did with them (a background job
    of a non-interactive shell starts with SIGINT ignored)."""
    def raise_stop(signum, frame):
        raise Stop(signal.Signals(signum).name)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, raise_stop)


def run_service(settings: Settings, manifest: Manifest, host: str, port: int, address: str | None,
                verbose: bool = False) -> None:
    """Connect (or start a private instance), place the replicas, serve until Ctrl-C, then clean up."""
    from runtime.scaleout.cluster import connect, local_cpus, node_resources, parse_address, plan_pool

    address = parse_address(address)
    local = address is None
    declared = local_cpus(settings.replicas, settings.threads, "replica") if local else 0
    with connect(address, declared, part="serve") as ray:
        pool = plan_pool(node_resources(ray), settings.replicas, settings.gpus_per_replica, settings.threads,
                         noun="replica")
        settings = replace(settings, gpus_per_replica=pool.gpus, device=settings.device or pool.device,
                           app_name=app_name(local))
        if local and settings.replicas * settings.threads > physical_cores() and not pool.gpus:
            log.warning(f"{settings.replicas} replicas x {settings.threads} thread(s) on {physical_cores()} cores: "
                        f"they share the cores")
        try:
            stop_on_signals()
            start(settings, host, port, verbose)
            click.echo(serving_line(settings, manifest, host, port), err=True)
            while True:
                time.sleep(1)
        except Stop as stopped:
            click.echo(f"stopping: {stopped}", err=True)
        finally:
            with contextlib.suppress(Exception):  # nothing to delete when the start itself failed
                stop(settings)
    click.echo("stopped", err=True)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("engine_or_graph")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; any but loopback needs --api-key.")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--replicas", type=click.IntRange(min=1), default=1, show_default=True,
              help="Generator replicas, each holding the denoiser (one per GPU where there are GPUs).")
@click.option("--max-batch", type=click.IntRange(min=1), help="Images per denoiser batch, at most (default: the "
              "manifest's opt batch; within its range). 1 turns batching off.")
@click_flags([option.name for option in SERVE_OPTIONS], serve=True)
@click.option("--batching", type=click.Choice(["step", "request"]), default="step", show_default=True,
              help="step: before every denoiser call waiting images join the running ones (any sampler, steps, "
              "cfg), and each is answered when done; request: a gathered batch runs to its end first.")
@click.option("--batch-wait-ms", type=click.FloatRange(min=0), default=10.0, show_default=True,
              help="--batching request: how long a replica waits for more images before running a batch.")
@click.option("--simulated-call-ms", type=click.FloatRange(min=0), hidden=True,
              help="Benchmarks only: a stand-in denoiser whose every call takes this long, any batch; no images.")
@click.option("--max-images", type=click.IntRange(min=1), default=16, show_default=True,
              help="Images one request may ask for (more: 400).")
@click.option("--queue-size", type=click.IntRange(min=1), default=64, show_default=True,
              help="Images each replica holds waiting (beside the batch it runs and the one it gathers); beyond "
              "that requests get 503 with Retry-After.")
@click.option("--vae", default="auto", show_default=True, help="auto (mse; pixels for pixel-space models) | ema | "
              "mse (hub) | PATH (local diffusers VAE) | DECODER.onnx|.plan (made by dit-export --vae) | random "
              "(offline demo).")
@click.option("--backend", type=click.Choice([b for b in BACKEND_CHOICES if b != "torch"]), default="auto",
              show_default=True)
@click.option("--device", help="The replicas' device: cpu, cuda (default: cuda for replicas with a GPU).")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="CPU threads (and Ray CPUs) per replica.")
@click.option("--gpus-per-replica", type=click.FloatRange(min=0), help="GPUs per replica (default 1 where the "
              "cluster has GPUs, else 0; fractions share a GPU).")
@click.option("--cuda-graphs", is_flag=True, help="TensorRT: capture one CUDA graph per batch size and replay it.")
@click.option("--api-key", envvar=API_KEY_ENV, help=f"Every /v1 request must send Authorization: Bearer KEY "
              f"(also from ${API_KEY_ENV}). Required with a --host other than loopback.")
@click.option("--ray", "ray_address", metavar="ADDRESS", help="Join a Ray cluster (auto, HOST:PORT, "
              "ray://HOST:PORT) instead of starting a private local instance.")
@click.option("--verbose", is_flag=True, help="Show Ray's and Serve's own logs.")
@click.pass_context
def serve(context, engine_or_graph, host, port, replicas, max_batch, batching, batch_wait_ms, simulated_call_ms,
          max_images, queue_size, vae, backend, device, threads, gpus_per_replica, cuda_graphs, api_key, ray_address,
          verbose, **request_defaults):
    """Serve DiT images from ENGINE_OR_GRAPH (.plan or .onnx) over HTTP: POST /v1/generate, GET /v1/health,
    GET /v1/model, GET /v1/classes, and a page at /."""
    check_exposure(host, api_key)
    request_defaults = {name: value for name, value in request_defaults.items() if value is not None}
    engine_or_graph, backend, load_options, request_defaults = with_profile(engine_or_graph, backend, request_defaults,
                                                                            given_flags(context))
    settings, manifest = prepare(engine_or_graph, max_batch, vae, backend, device=device, threads=threads,
                                 gpus_per_replica=gpus_per_replica, cuda_graphs=cuda_graphs, replicas=replicas,
                                 batching=batching, batch_wait_ms=batch_wait_ms, simulated_call_ms=simulated_call_ms,
                                 max_images=max_images, queue_size=queue_size, api_key_sha256=key_digest(api_key),
                                 request_defaults=request_defaults, load_options=load_options)
    check_port(host, port)
    if manifest.random_weights:
        click.secho(f"warning: {RANDOM_WEIGHTS}", fg="red", bold=True, err=True)
    if simulated_call_ms is not None:
        click.secho(f"warning: SIMULATION: a stand-in denoiser, {simulated_call_ms:g} ms a call for any batch; the "
                    f"images are nothing", fg="red", bold=True, err=True)
    if not verbose:
        logging.getLogger("ray").setLevel(logging.ERROR)
    os.environ.setdefault("RAY_SERVE_LOG_TO_STDERR", "0")  # the replicas' logs go to Ray's files, not here
    run_service(settings, manifest, host, port, ray_address, verbose)


def main(argv=None) -> None:
    """dit-serve's console entry point: one line on stderr and exit 1 for what cannot be served."""
    run_command(serve, argv, "dit-serve", interrupts=(Stop,))  # Stop: a signal before start or while stopping


if __name__ == "__main__":
    main()
