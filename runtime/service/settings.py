"""What one dit-serve service is: the graph or engine, how its replicas run, its limits and its key.

Made by the CLI before Ray is imported, and pickled into every replica.
"""

import hashlib
import ipaddress
import os
import socket
from dataclasses import dataclass, field

from dit_ref.errors import DiTError

API_KEY_ENV = "DIT_API_KEY"


@dataclass(frozen=True)
class Settings:
    path: str  # the engine or graph, absolute; the same path must hold it on every node
    backend: str = "auto"
    vae: str = "auto"  # decoder spec, as dit-run --vae (not none: the service answers images)
    device: str | None = None  # the replicas' device (None: CUDA when available)
    threads: int = 1  # CPUs reserved and threads used per Generator replica
    gpus_per_replica: float | None = None  # None: 1 where the cluster has GPUs, else 0
    cuda_graphs: bool = False
    replicas: int = 1  # Generator replicas
    max_batch: int = 8  # images per denoiser call, at most
    batching: str = "step"  # "step": images join and leave a running batch at every call; "request": the old
    # way, a gathered batch runs to its end before the next (kept for comparison: benchmarks/serve_load.py)
    batch_wait_ms: float = 10.0  # request batching: how long a replica waits for more images before a batch
    simulated_call_ms: float | None = None  # benchmarks only: a stand-in denoiser, this long a call, no images
    request_defaults: dict = field(default_factory=dict)  # the requests' defaults given to dit-serve, by option
    load_options: dict = field(default_factory=dict)  # the backend's options beside device and threads (a profile's)
    # (name, its runtime.profile.Point, or why this service cannot run it) of the dit-tune profile beside the graph:
    # read once by dit-serve (api.served_points), so a profile that changes later cannot split the replicas
    points: tuple = ()
    max_images: int = 16  # per request
    queue_size: int = 64  # images a Generator replica holds waiting; when every replica is full: 503
    api_key_sha256: str | None = None  # the key itself never leaves the dit-serve process
    app_name: str = "dit"  # the Serve application's name (see app_name())


def app_name(local: bool) -> str:
    """"dit" in a private instance; on a shared cluster one of this process's own, so that another
    dit-serve neither replaces it nor deletes it when stopping."""
    return "dit" if local else f"dit-{socket.gethostname()}-{os.getpid()}"


def key_digest(api_key: str | None) -> str | None:
    return None if not api_key else hashlib.sha256(api_key.encode()).hexdigest()


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost: nobody else can reach the port."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def check_exposure(host: str, api_key: str | None) -> None:
    """DiTError for a service reachable from other machines without a key."""
    if not is_loopback(host) and not api_key:
        raise DiTError(f"--host {host} lets other machines reach the service: pass --api-key KEY (or set "
                       f"{API_KEY_ENV}) so that every request must carry it, or bind 127.0.0.1")
