"""Generation at scale on Ray Data: sample indices -> a pool of denoiser actors -> resumable shards -> one file.

    dit-run G.onnx --num-samples 50000 --out samples.npz --ray          # a local Ray instance
    dit-run G.plan --num-samples 50000 --out samples.npz --ray auto     # the cluster this machine is in

The driver cuts the sample indices of the unfinished shards (runtime.scaleout.shards) into denoiser batches
and makes them a Ray Dataset, one row per batch; map_batches runs the rows on a fixed pool of
DenoiserWorker actors, each of which loads the engine or graph once through the backend registry
and calls generate() with per-sample seeding, so a sample is the same whichever actor, node or
retry makes it. Finished samples stream back to the driver, which writes each shard once it is
whole and assembles the shards into the output at the end. A worker that dies is restarted by Ray
and its batch retried (Ray Data's defaults for actor pools: max_restarts=-1, max_task_retries=-1).
Ray is imported only inside these functions.
"""

import contextlib
import logging
import os
import socket
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from dit_ref.contract import read_decoder_manifest, read_manifest
from dit_ref.errors import DiTError
from dit_ref.machine.cpu import physical_cores
from runtime.backends import backend_for
from runtime.generate import generate_plan, load_with_decoder
from runtime.images import open_output, output_kind
from runtime.options import NAMED
from runtime.plan import ModelFacts, Plan
from runtime.scaleout.cluster import (
    START_SECONDS, Pool, connect, failure_reason, local_cpus, node_resources, parse_address, plan_pool,
)
from runtime.scaleout.shards import (
    DEFAULT_SHARD_SIZE, ShardCollector, ShardFolder, ShardPlan, labels_digest, shards_folder_for,
)
from runtime.vae import check_decoder_spec, is_decoder_file

CRASH_FILE_ENV = "DIT_RAY_TEST_CRASH_FILE"  # tests only: the first worker to remove this file then dies

log = logging.getLogger("dit-run")


@dataclass(frozen=True)
class Job:
    """What every worker needs to make any batch of the run (pickled into each actor)."""

    path: str  # the engine or graph, absolute; the same path must hold it on every node
    plan: Plan  # the run's request plan, per-sample seeding; each worker makes parts of it
    backend: str = "auto"
    cuda_graphs: bool = False  # TensorRT: replay one CUDA graph per batch size
    load_options: dict = field(default_factory=dict)  # the backend's other options (OpenVINO's dtype, ...)


@dataclass(frozen=True)
class RayOptions:
    """Where and how the run's workers go (dit-run's --ray, --workers, --gpus-per-worker, --threads, ...)."""

    address: str | None = None  # None (or "local"): a private local instance; "auto", HOST:PORT, ray://HOST:PORT
    workers: int | None = None  # None: one per GPU, on CPU one per core (see cluster.plan_pool)
    gpus_per_worker: float | None = None
    threads: int | None = None  # per worker
    shard_size: int = DEFAULT_SHARD_SIZE
    keep_shards: bool = False


@dataclass
class Summary:
    """What a run did, for the closing line and the benchmarks."""

    images: int = 0  # made by this run
    skipped: int = 0  # found in shards of an earlier run
    seconds: float = 0.0  # from the start of the pipeline to the last sample
    first_seconds: float = 0.0  # from the start to the first finished batch (actor start-up and model load)
    workers: int = 0
    per_worker: Counter = field(default_factory=Counter)  # "host/actor" -> images made
    busy_seconds: Counter = field(default_factory=Counter)  # "host/actor" -> seconds inside generate()
    repeats: int = 0  # samples that arrived twice (batches retried after a worker died) and were dropped

    @property
    def busy_rate(self) -> float:
        """Images/s of the pool while its workers compute (start-up and waiting left out)."""
        return sum(count / self.busy_seconds[name] for name, count in self.per_worker.items()
                   if self.busy_seconds[name] > 0)

    def describe(self) -> str:
        rate = self.images / self.seconds if self.seconds > 0 else 0.0
        spread = ", ".join(f"{name} {count} ({count / max(self.busy_seconds[name], 1e-9):.2f}/s)"
                           for name, count in sorted(self.per_worker.items()))
        text = f"{self.images} samples in {self.seconds:.1f} s ({rate:.2f}/s) on {self.workers} worker(s)"
        text += f" [{spread}]" if spread else ""
        text += f"; {self.skipped} from finished shards" if self.skipped else ""
        return text + (f"; {self.repeats} repeated samples dropped" if self.repeats else "")


class DenoiserWorker:
    """A Ray Data actor: loads the denoiser and decoder once, then makes any batch of sample indices."""

    def __init__(self, job: Job, device: str = "cpu", threads: int = 1):
        import ray

        torch.set_num_threads(threads)
        self.job = job
        self.denoiser, self.decoder = load_with_decoder(job.path, job.backend, job.plan.decoder, device=device,
                                                        threads=threads, cuda_graphs=job.cuda_graphs, **job.load_options)
        self.name = f"{socket.gethostname()}/{ray.get_runtime_context().get_actor_id()[:8]}"

    def __call__(self, rows: dict) -> dict:
        """rows {"start": (k,), "stop": (k,)} -> {"index", "label", "sample", "worker", "seconds"}, one entry
        per sample ("seconds": the batch's time in generate() over its samples, for the summary)."""
        crash_once_if_armed()
        made = [self.make(int(start), int(stop)) for start, stop in zip(rows["start"], rows["stop"])]
        return {key: np.concatenate([part[key] for part in made]) for key in made[0]}

    def make(self, start: int, stop: int) -> dict:
        started = time.perf_counter()
        (batch,) = generate_plan(self.denoiser, self.job.plan.part(start, stop), self.decoder)
        return {"index": np.arange(start, stop, dtype=np.int64), "label": batch.labels, "sample": batch.samples,
                "worker": np.array([self.name] * (stop - start)),
                "seconds": np.full(stop - start, (time.perf_counter() - started) / (stop - start))}


def crash_once_if_armed() -> None:
    """Tests only: if $DIT_RAY_TEST_CRASH_FILE exists, remove it and kill this worker process."""
    armed = os.environ.get(CRASH_FILE_ENV)
    if armed:
        try:
            os.unlink(armed)
        except FileNotFoundError:
            return
        os._exit(17)


def check_batches(plan: ShardPlan, batch_size: int, manifest, decoder: str = "none") -> None:
    """DiTError unless every batch size the plan makes is in the graph's batch range, and its chunks in a decoder
    file's."""
    sizes = sorted({len(batch) for batch in plan.batches(plan.shards(), batch_size)})
    for size in sizes:
        manifest.batch.check(size, remedy="choose another --batch-size (or --shard-size), or re-export with --batch")
    latent_shape = (manifest.latent_channels, manifest.latent_size, manifest.latent_size)
    check_decoder_spec(decoder, manifest.decoder, latent_shape, sizes)


def decoder_identity(spec: str, manifest) -> str:
    """What decodes, for the shard names: check_decoder_spec's identity, with a decoder file's graph sha256."""
    identity = check_decoder_spec(spec, manifest.decoder)
    if is_decoder_file(identity):
        graph = read_decoder_manifest(identity).graph
        identity += f" (graph sha256 {graph.sha256 if graph else None})"
    return identity


def run_settings(job: Job, manifest, plan: ShardPlan, kind: str) -> dict:
    """Everything that changes a sample or the file, hashed into the shard names."""
    sampler, wanted = job.plan.sampler, job.plan
    engine = manifest.engine
    return {"graph_sha256": manifest.graph.sha256 if manifest.graph else None, "model": manifest.model,
            "backend": backend_for(job.path, job.backend), **({"load_options": job.load_options} if job.load_options else {}),
            "engine": None if engine is None or backend_for(job.path, job.backend) != "tensorrt"
            else f"TensorRT {engine.tensorrt} on {engine.gpu}",
            "sampler": sampler.name, "steps": sampler.num_calls, "timesteps": list(sampler.timesteps),
            "cfg_scale": wanted.cfg_scale, "seed": wanted.seed, "seeding": wanted.seeding,
            **wanted.spelled(NAMED),
            "decoder": decoder_identity(wanted.decoder, manifest), "labels": labels_digest(wanted.labels),
            "num_samples": plan.num_samples, "shard_size": plan.shard_size, "output": kind}


def sample_layout(decoder: str, manifest) -> tuple[tuple, type]:
    """(shape, dtype) of one sample in the output for a decoder spec: latents ("none"), or uint8 images."""
    if decoder == "none":
        return (manifest.latent_channels, manifest.latent_size, manifest.latent_size), np.float32
    channels = manifest.latent_channels if manifest.decoder == "pixels" else 3
    return (manifest.image_size, manifest.image_size, channels), np.uint8


def worker_failure(error: Exception) -> DiTError:
    """One line for a failure inside a worker."""
    return DiTError(f"a Ray worker failed: {failure_reason(error)}")


def stream(ray, job: Job, pool: Pool, batches: list[range], collector: ShardCollector, summary: Summary,
           on_images) -> None:
    """Run the batches on the actor pool; hand every finished block to the collector as it arrives."""
    rows = [{"start": batch.start, "stop": batch.stop} for batch in batches]
    # One block per batch, so the pool hands batches out one at a time; from_items is already
    # materialized, and the results are consumed exactly once, so nothing runs twice.
    dataset = ray.data.from_items(rows, override_num_blocks=len(rows))
    worker_options = {"job": job, "device": pool.device, "threads": pool.threads}
    results = dataset.map_batches(DenoiserWorker, fn_constructor_kwargs=worker_options,
                                  batch_size=1, compute=ray.data.ActorPoolStrategy(size=pool.workers),
                                  num_cpus=pool.threads, num_gpus=pool.gpus or None)
    blocks = iter(results.iter_batches(batch_size=None, batch_format="numpy"))
    try:
        for block in blocks:
            new = collector.add(block["index"], block["label"], block["sample"])
            for name, seconds in zip(block["worker"].tolist(), block["seconds"].tolist()):
                summary.per_worker[name] += 1
                summary.busy_seconds[name] += seconds
            summary.images += new
            on_images(new)
    except (DiTError, KeyboardInterrupt):
        raise
    except ray.exceptions.GetTimeoutError:
        raise DiTError(f"the {pool.workers} worker(s) did not all start within {START_SECONDS} s: the Ray cluster "
                       f"lacks the resources they need, or other jobs hold them; lower --workers") from None
    except Exception as error:  # Ray's wrapped worker failures (RayTaskError, UserCodeException, ...)
        raise worker_failure(error) from None
    finally:
        with contextlib.suppress(Exception):
            blocks.close()  # stops the executor and its actors now, not when garbage-collected


def configure_ray_data(ray, start_seconds: int) -> None:
    """Every worker started before the first batch (or a timeout we report: Ray would wait silently for
    resources it never gets); our progress bar instead of Ray Data's; failures as one line of ours."""
    context = ray.data.DataContext.get_current()
    context.wait_for_min_actors_s = start_seconds
    context.enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.CRITICAL)


def run_on_ray(job: Job, out, options: RayOptions = RayOptions(), progress: bool = True, on_shard=None) -> Summary:
    """Make the plan's samples on Ray into out (.npz images or .npy latents), resuming from `<out>.shards/`.

    job.plan must use per-sample seeding and be checked against the file's manifest (it is checked again
    here). on_shard(shard range) is called after each shard is written. Ctrl-C (KeyboardInterrupt) keeps
    the finished shards and writes no output.
    """
    path = Path(job.path).expanduser().resolve()
    if backend_for(path, job.backend) == "torch":
        raise DiTError("--ray runs an engine (.plan) or graph (.onnx) on every worker; export one with dit-export")
    if job.plan.seeding != "per-sample":
        raise DiTError("--ray uses per-sample seeding (a sample must not depend on the worker that makes it)")
    manifest = read_manifest(path)
    wanted = job.plan.check(ModelFacts.from_manifest(manifest))
    kind = output_kind(out, latents=wanted.decoder == "none")
    if kind not in ("npz", "npy"):
        raise DiTError(f"--ray writes one .npz of images (or .npy of latents with --vae none), not {Path(out).name}")
    shards = ShardPlan(len(wanted.labels), options.shard_size)
    batch_size = wanted.batch_size or min(manifest.batch.max, options.shard_size)
    check_batches(shards, batch_size, manifest, wanted.decoder)
    job = replace(job, path=str(path), plan=wanted, backend=backend_for(path, job.backend))  # every worker: this one
    folder = ShardFolder(shards_folder_for(out), run_settings(job, manifest, shards, kind), shards)
    folder.check()  # refuse a foreign folder before starting anything
    summary = Summary(skipped=sum(len(shard) for shard in folder.finished()))
    pending = folder.pending()
    if pending:
        make_pending(job, folder, pending, summary, options, batch_size, progress, on_shard)
    shape, dtype = sample_layout(wanted.decoder, manifest)
    image_size = None if wanted.decoder == "none" else manifest.image_size
    with open_output(out, shards.num_samples, image_size, manifest.latent_size, channels=shape[-1],
                     latent_channels=manifest.latent_channels) as output:
        folder.assemble(output, shape, dtype)
    if not options.keep_shards:
        folder.remove()
    return summary


def make_pending(job: Job, folder: ShardFolder, pending: list, summary: Summary, options: RayOptions,
                 batch_size: int, progress: bool, on_shard) -> None:
    """Connect, place the pool, and run the pending shards' batches into the shards folder."""
    from tqdm import tqdm

    address = parse_address(options.address)
    with connect(address, local_cpus(options.workers, options.threads) if address is None else 0) as ray:
        local = address is None
        pool = plan_pool(node_resources(ray), options.workers, options.gpus_per_worker, options.threads,
                         physical_cores() if local else None)
        if local and pool.workers * pool.threads > physical_cores() and not pool.gpus:
            log.warning(f"{pool.workers} workers x {pool.threads} thread(s) on {physical_cores()} cores: "
                        f"they share the cores, expect no gain over {physical_cores()} workers")
        configure_ray_data(ray, START_SECONDS)
        folder.claim()
        collector = ShardCollector(folder, pending)
        written = len(collector.written)
        summary.workers = pool.workers
        bar = tqdm(total=folder.plan.num_samples, initial=summary.skipped, desc="images", unit="img",
                   disable=None if progress else True)
        started = time.perf_counter()

        def on_images(count):
            nonlocal written
            if not summary.first_seconds:
                summary.first_seconds = time.perf_counter() - started
            bar.update(count)
            for shard in collector.written[written:]:
                if on_shard is not None:
                    on_shard(shard)
            written = len(collector.written)

        try:
            with bar:
                stream(ray, job, pool, folder.plan.batches(pending, batch_size), collector, summary, on_images)
        except BaseException as error:
            done = len(folder.finished())
            if not done:
                folder.remove()  # nothing finished: leave nothing behind
            if isinstance(error, KeyboardInterrupt):
                kept = f"{done} of {len(folder.plan.shards())} shards are finished in {folder.path}" if done else \
                    "no shard was finished yet"
                raise DiTError(f"interrupted: {kept}; run the same command again to resume") from None
            raise
        finally:
            summary.seconds = time.perf_counter() - started
            summary.repeats = collector.repeats
        collector.check_complete()
