"""Helpers for the dit-serve tests: the service process (benchmarks.serving.Server), images read back,
and the replicas' processes."""

import base64
import io
import subprocess
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.serving import Server  # noqa: F401 (the tests' service process)


def decode_png(text: str) -> np.ndarray:
    """A base64 PNG from the service -> uint8 (H, W, channels), as dit-run's outputs are read back."""
    image = np.asarray(Image.open(io.BytesIO(base64.b64decode(text))))
    return image[..., None] if image.ndim == 2 else image


def read_pngs(directory: Path) -> list[np.ndarray]:
    """dit-run's one-PNG-per-sample directory, in sample order."""
    return [decode_png(base64.b64encode(path.read_bytes()).decode()) for path in sorted(directory.glob("*.png"))]


def replica_pids(kind: str, server: Server) -> list[int]:
    """PIDs of the server's Serve replicas of deployment `kind` (Ray names their processes; they run in the
    server's session, which start_new_session made its own)."""
    found = subprocess.run(["ps", "-eo", "pid,sid,args"], capture_output=True, text=True).stdout.splitlines()[1:]
    rows = [line.split(None, 2) for line in found]
    return [int(pid) for pid, sid, args in rows if int(sid) == server.process.pid and f"ServeReplica:dit:{kind}" in args]
