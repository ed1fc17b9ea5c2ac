"""Ray for dit-run --ray: importing it lazily, reaching a cluster or starting a private local instance,
and placing a pool of denoiser workers on the nodes' CPUs and GPUs before Ray is asked to.

Ray waits silently, without end, for resources that no node has (a GPU on a CPU-only cluster, more
workers than the nodes hold), and retries an unreachable address for a long time; plan_pool and
probe say so in one line instead. Ray is imported only inside these functions.
"""

import contextlib
import importlib
import logging
import os
import re
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

from dit_ref.errors import DiTError
from dit_ref.machine.cpu import logical_cpus

INSTALL_HINTS = {part: f"pip install 'ray[{part}]' (it comes with the dev extra: pip install -e '.[cpu,dev]')"
                 for part in ("data", "serve")}
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": Ray's single-machine mode, every address 127.0.0.1
MAX_THREADS_PER_CPU = 2  # a private local instance: a pool's threads may share the CPUs up to this
START_SECONDS = 600  # how long a pool or replicas may take to start (model loads, autoscaling) before we say why
PROBE_SECONDS = 5.0  # how long to wait for a cluster's port to answer before calling it unreachable


@dataclass(frozen=True)
class Pool:
    """The actor pool: how many workers and what each reserves."""

    workers: int
    threads: int  # CPUs reserved (and threads used) per worker
    gpus: float  # GPUs per worker; 0 for CPU workers

    @property
    def device(self) -> str:
        return "cuda" if self.gpus > 0 else "cpu"


def import_ray(part: str = "data"):
    """The ray module with the part this command uses (Ray Data for dit-run --ray, Ray Serve for dit-serve);
    DiTError saying how to install it."""
    try:
        import ray
        importlib.import_module(f"ray.{part}")
    except ImportError:
        who, what = ("--ray", "Ray Data") if part == "data" else ("dit-serve", "Ray Serve")
        raise DiTError(f"{who} needs {what}, which is not installed: {INSTALL_HINTS[part]}") from None
    return ray


def parse_address(address: str | None) -> str | None:
    """None (or "local"): start a local instance; "auto", "HOST:PORT" or "ray://HOST:PORT": join a cluster."""
    if address in (None, "", "local"):
        return None
    if address == "auto":
        return address
    if re.fullmatch(r"(ray://)?[A-Za-z0-9_.\-\[\]:]+:\d{1,5}", address):
        return address
    looks_like_a_file = Path(address).suffix.lower() in (".onnx", ".plan", ".engine")
    hint = " (put ENGINE_OR_GRAPH before --ray)" if looks_like_a_file else ""
    raise DiTError(f"--ray {address}: give no address (a local instance), auto, HOST:PORT or ray://HOST:PORT{hint}")


def probe(address: str) -> None:
    """DiTError unless something answers at HOST:PORT (Ray itself retries an unreachable address for a long time)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=PROBE_SECONDS).close()
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise DiTError(f"cannot reach a Ray cluster at {address} ({reason}); start one there with "
                       f"`ray start --head` or check the --ray address") from None
    if address.startswith("ray://"):
        try:
            import grpc  # noqa: F401  (the Ray client's transport: ray[client])
        except ImportError:
            raise DiTError("--ray ray://... needs the Ray client: pip install 'ray[client]'; or run dit-run on a "
                           "node of the cluster with --ray auto") from None


@contextlib.contextmanager
def connect(address: str | None, num_cpus: int, part: str = "data"):
    """Ray, connected: a new local instance (address None) declaring num_cpus logical CPUs, or the cluster
    at address. Disconnects (and stops a local instance) on leaving. A Ray that this process already
    started (a notebook, the tests) is used as it is and left running."""
    if address is None and "ray" not in sys.modules:
        os.environ.setdefault(LOOPBACK_ENV, "0")  # a private instance: nothing listens beyond 127.0.0.1
    if address is not None and address != "auto":
        probe(address)
    ray = import_ray(part)
    if ray.is_initialized():
        yield ray
        return
    quiet = {"logging_level": logging.ERROR, "log_to_driver": False}
    try:
        if address is None:
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, **quiet)
        else:
            ray.init(address=address, **quiet)
    except Exception as error:  # ConnectionError, RuntimeError, grpc errors ... from many layers
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        where = "start a local Ray instance" if address is None else f"join the Ray cluster at {address}"
        raise DiTError(f"cannot {where}: {reason}") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def node_resources(ray) -> list[dict]:
    """{"CPU": c, "GPU": g} of each alive node."""
    return [{"CPU": node["Resources"].get("CPU", 0), "GPU": node["Resources"].get("GPU", 0)}
            for node in ray.nodes() if node.get("Alive")]


def local_cpus(workers: int | None, threads: int | None, noun: str = "worker") -> int:
    """The logical CPUs a private local instance declares for a pool: this machine's CPUs, or the pool's
    threads when more (they then share the CPUs), plus a spare one for Ray's own tasks. DiTError beyond
    MAX_THREADS_PER_CPU threads per CPU: more only adds start-up time and memory."""
    cpus = logical_cpus()
    wanted = (workers or 0) * (threads or 1)
    if wanted > MAX_THREADS_PER_CPU * cpus:
        raise DiTError(f"{workers} {noun}(s) x {threads or 1} thread(s) do not fit: this machine has room for "
                       f"{MAX_THREADS_PER_CPU * cpus} threads ({cpus} CPUs, {MAX_THREADS_PER_CPU} per CPU at most); "
                       f"lower --{noun}s or --threads")
    return max(cpus, wanted) + 1


def plan_pool(nodes: list[dict], workers: int | None = None, gpus_per_worker: float | None = None,
              threads: int | None = None, local_cores: int | None = None, noun: str = "worker") -> Pool:
    """The pool for these nodes; DiTError if the workers cannot all be placed (Ray would wait forever).

    Defaults: one worker per GPU when the cluster has GPUs; on CPUs, one single-threaded worker per
    core of this machine (local_cores, for a local instance) or per CPU of the cluster. noun names the
    options in messages: "worker" (dit-run --ray: --workers, --gpus-per-worker) or "replica" (dit-serve).
    """
    gpu_option = f"--gpus-per-{noun}"
    if gpus_per_worker is not None and gpus_per_worker < 0:
        raise DiTError(f"{gpu_option} must be 0 or more, not {gpus_per_worker}")
    total_gpus = sum(node["GPU"] for node in nodes)
    gpus = float(gpus_per_worker if gpus_per_worker is not None else (1 if total_gpus else 0))
    if gpus > 0 and total_gpus == 0:
        raise DiTError(f"{gpu_option} {gpus:g}: the Ray cluster has no GPUs (Ray would wait for them forever); "
                       f"use {gpu_option} 0 for CPU {noun}s or join a cluster with GPUs")
    if threads is None:
        threads = max(1, local_cores // workers) if (local_cores and workers and not gpus) else 1
    room = sum(min(int(node["CPU"] // threads), int(node["GPU"] // gpus) if gpus else 1 << 30) for node in nodes)
    if workers is None:
        workers = room if gpus or not local_cores else max(1, local_cores // threads)
    if workers < 1 or workers > room:
        need = f"{threads} CPU(s)" + (f" and {gpus:g} GPU(s)" if gpus else "")
        have = f"{len(nodes)} node(s), {sum(n['CPU'] for n in nodes):g} CPUs, {total_gpus:g} GPUs"
        raise DiTError(f"{workers} {noun}(s) of {need} each do not fit: the Ray cluster ({have}) has room for {room}; "
                       f"lower --{noun}s" + (f" or {gpu_option}" if gpus else " or --threads"))
    return Pool(workers, threads, gpus)


def failure_reason(error: Exception) -> str:
    """The original error of a failure inside a Ray actor, as one line (Ray keeps it only in the traceback
    text): a DiTError's message, else the last "SomethingError: ..." line before Ray's own."""
    text = str(error)
    found = re.search(r"DiTError: (.+)", text)
    if found is None:
        found = re.search(r"^(?:[\w.]+\.)?(\w*(?:Error|Exception): .+)$", text.split("The above exception")[0], re.M)
    return (found.group(1).strip() if found else type(error).__name__)[:300]
