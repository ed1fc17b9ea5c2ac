"""Helpers for the dit-serve tests: the service process (benchmarks.serving.Server), images read back and
compared with dit-run's, the replicas' processes, and answers checked against the OpenAPI document."""

import base64
import io
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import runtime.cli as dit_run_cli
from benchmarks.serving import Server  # noqa: F401 (the tests' service process)

STEPS = 4  # DDIM steps of most test requests
GREY_LEVELS = 1  # the largest pixel difference allowed against dit-run (a batch of another shape may round a
# latent's last bit differently; measured 0 levels on CPU)


def decode_png(text: str) -> np.ndarray:
    """A base64 PNG from the service -> uint8 (H, W, channels), as dit-run's outputs are read back."""
    image = np.asarray(Image.open(io.BytesIO(base64.b64decode(text))))
    return image[..., None] if image.ndim == 2 else image


def read_pngs(directory: Path) -> list[np.ndarray]:
    """dit-run's one-PNG-per-sample directory, in sample order."""
    return [decode_png(base64.b64encode(path.read_bytes()).decode()) for path in sorted(directory.glob("*.png"))]


def dit_run_images(graph, labels, seed, tmp_path, sampler="ddim", steps=STEPS, cfg_scale=4.0, guidance_interval=None,
                   cache=None) -> list[np.ndarray]:
    """dit-run's per-sample samples for these labels, read back from its one-PNG-per-sample directory."""
    tag = f"{guidance_interval or ''}{cache or ''}".replace(":", "-")
    out = tmp_path / f"dit-run-seed{seed}-cfg{round(cfg_scale * 100)}{tag}"  # no dot: a suffix would name a file
    argv = [str(graph), "--class", ",".join(map(str, labels)), "--seed", str(seed), "--seeding", "per-sample",
            "--sampler", sampler, "--steps", str(steps), "--cfg-scale", str(cfg_scale), "--threads", "1",
            "--out", str(out)]
    argv += ["--guidance-interval", guidance_interval] if guidance_interval else []
    argv += ["--cache", cache] if cache else []
    with pytest.raises(SystemExit) as exited:
        dit_run_cli.main(argv)
    assert exited.value.code == 0
    return read_pngs(out)


def assert_equal_to_dit_run(asked: dict, answer: dict, graph, tmp_path) -> int:
    """The answer's images against dit-run's for what was asked; returns the largest difference in grey levels."""
    assert answer["labels"] == asked["class_labels"] and answer["seed"] == asked["seed"]
    expected = dit_run_images(graph, asked["class_labels"], asked["seed"], tmp_path, asked["sampler"], asked["steps"],
                              asked["cfg_scale"], asked.get("guidance_interval"), asked.get("cache"))
    got = [decode_png(image) for image in answer["images"]]
    assert [image.shape for image in got] == [image.shape for image in expected] == [(28, 28, 1)] * len(got)
    worst = max(int(np.abs(a.astype(int) - b.astype(int)).max()) for a, b in zip(got, expected))
    assert worst <= GREY_LEVELS
    return worst


def replica_pids(kind: str, server: Server) -> list[int]:
    """PIDs of the server's Serve replicas of deployment `kind` (Ray names their processes; they run in the
    server's session, which start_new_session made its own)."""
    found = subprocess.run(["ps", "-eo", "pid,sid,args"], capture_output=True, text=True).stdout.splitlines()[1:]
    rows = [line.split(None, 2) for line in found]
    return [int(pid) for pid, sid, args in rows if int(sid) == server.process.pid and f"ServeReplica:dit:{kind}" in args]


def assert_documented(document: dict, method: str, path: str, status: int, answer) -> None:
    """The status is one the OpenAPI document gives for the endpoint, and the answer has its documented shape:
    it validates against the schema (every required field present, each of its type), and its fields are
    exactly the documented ones."""
    import jsonschema

    responses = document["paths"][path][method.lower()]["responses"]
    assert str(status) in responses, f"{method} {path} answered {status}; documented: {sorted(responses)}"
    schema = responses[str(status)]["content"]["application/json"]["schema"]
    jsonschema.validate(answer, {**schema, "components": document["components"]})
    documented = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    assert set(answer) == set(documented["properties"]) == set(documented["required"]), (sorted(answer), documented)
