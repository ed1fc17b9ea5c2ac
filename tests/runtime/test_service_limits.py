"""dit-serve's limits: who gets in (API key), body size (413), a full queue (503 with Retry-After), and the
refusals at start (one line, exit 1, before Ray starts), each error answer in the shape the OpenAPI
document gives for its status. One small service with a key: 1 replica, up to 2 images a denoiser call,
4 images per request, 4 images waiting in the replica (so it holds 2 running + 4 waiting, and Serve's
router 4 + 4 more). Every request and wait is bounded.
"""

import concurrent.futures
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

import runtime.service.cli as dit_serve_cli
from benchmarks.serving import free_port
from service_helpers import Server, assert_documented, replica_pids

pytest.importorskip("ray.serve", reason="needs Ray Serve: pip install 'ray[serve]' (in the dev extra)")

KEY = "test-key-0123456789"
AUTHORIZED = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def server(fashion_graph):
    server = Server(fashion_graph, "--max-batch", "2", "--max-images", "4", "--queue-size", "4",
                    env={"DIT_API_KEY": KEY})
    yield server
    server.stop()


@pytest.fixture(scope="module")
def document(server):
    """The service's OpenAPI document (behind the key, as /v1 is)."""
    status, _, document = server.request("GET", "/openapi.json", headers=AUTHORIZED)
    assert status == 200
    return document


def dit_serve(argv, capsys) -> tuple[int, str]:
    """dit-serve in-process, for refusals that come before Ray starts: (exit code, stderr)."""
    with pytest.raises(SystemExit) as exited:
        dit_serve_cli.main(argv)
    return exited.value.code, capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("method, path", [("GET", "/v1/health"), ("GET", "/v1/model"), ("GET", "/v1/classes"),
                                          ("POST", "/v1/generate"), ("GET", "/openapi.json")])
def test_without_the_key_every_api_request_gets_401(server, document, method, path):
    body = json.dumps({"class_labels": [1], "steps": 1, "sampler": "ddim"}).encode() if method == "POST" else None
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):  # none, wrong, no scheme
        status, answer_headers, answer = server.request(method, path, body, headers)
        assert status == 401 and "API key" in answer["error"] and answer_headers["www-authenticate"] == "Bearer"
        if path in document["paths"]:
            assert_documented(document, method, path, status, answer)
    status, _, answer = server.request(method, path, body, AUTHORIZED)
    assert status == 200
    if path in document["paths"]:
        assert_documented(document, method, path, status, answer)
        assert document["paths"][path][method.lower()]["security"] == [{"key": []}]


@pytest.mark.slow
def test_the_page_loads_without_the_key_and_asks_for_it(server):
    status, _, page = server.request("GET", "/")
    assert status == 200 and 'id="key-box"' in page


@pytest.mark.slow
def test_a_body_over_the_limit_gets_413_and_the_service_keeps_serving(server, document):
    body = json.dumps({"class_labels": [1], "padding": "x" * 70_000}).encode()
    status, _, answer = server.request("POST", "/v1/generate", body, AUTHORIZED)
    assert status == 413 and "over 65536 bytes" in answer["error"]
    assert_documented(document, "POST", "/v1/generate", status, answer)
    assert server.generate(AUTHORIZED, class_labels=[2], steps=1, sampler="ddim")[0] == 200


@pytest.mark.slow
def test_a_full_queue_answers_503_with_retry_after_and_the_service_recovers(server, document):
    def ask(k):  # 4 images each, 250 steps: seconds each, far longer than the 8 requests take to arrive (~0.1 s);
        # the admitted requests run one after another, so their steps bound the last one's wait (REQUEST_SECONDS)
        body = json.dumps({"class_labels": [k % 10] * 4, "seed": k, "sampler": "ddpm", "steps": 250}).encode()
        started = time.monotonic()
        answer = server.request("POST", "/v1/generate", body, AUTHORIZED)
        print(f"request {k}: {answer[0]} after {time.monotonic() - started:.1f} s")
        return answer

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, range(8)))
    statuses = sorted(status for status, _, _ in answers)
    print(f"8 concurrent requests of 4 images (room for 14 at most): {statuses}")
    busy = [(headers, answer) for status, headers, answer in answers if status == 503]
    assert busy and 200 in statuses
    for headers, answer in busy:
        assert headers.get("retry-after") == "1" and "busy" in str(answer), (headers, answer)
        if isinstance(answer, dict):  # ours; Serve's proxy answers in plain text when even the Frontend is full
            assert_documented(document, "POST", "/v1/generate", 503, answer)
    assert server.generate(AUTHORIZED, class_labels=[5], steps=1, sampler="ddim")[0] == 200


@pytest.mark.slow
def test_requests_held_by_a_replica_that_dies_get_503_and_the_restarted_one_serves(server, document):
    """The service's only replica is killed while it makes a request's images."""
    [pid] = replica_pids("Generator", server)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        body = json.dumps({"class_labels": [1, 2, 3, 4], "sampler": "ddpm", "steps": 1000}).encode()
        held = pool.submit(server.request, "POST", "/v1/generate", body, AUTHORIZED)
        time.sleep(1.5)  # the request is in the replica now (1000 steps take several seconds here)
        os.kill(pid, signal.SIGKILL)
        status, headers, answer = held.result()
    print(f"the request held by the killed replica: {status} {answer}")
    assert status == 503 and headers.get("retry-after") == "1" and "replica stopped" in answer["error"]
    assert_documented(document, "POST", "/v1/generate", status, answer)
    deadline, now = time.monotonic() + 90, []
    while time.monotonic() < deadline:  # until a new replica runs (health may count the dead one a moment)
        now = replica_pids("Generator", server)
        if now not in ([], [pid]) and server.request("GET", "/v1/health", headers=AUTHORIZED)[0] == 200:
            break
        time.sleep(1)
    assert now not in ([], [pid]), f"no new replica after {pid}"
    assert server.generate(AUTHORIZED, class_labels=[5], steps=1, sampler="ddim")[0] == 200


@pytest.mark.slow
def test_sigterm_stops_the_service(server):
    """SIGTERM to dit-serve alone (a kill, systemd, a container stop), not Ctrl-C to its group."""
    assert server.stop(signal.SIGTERM, group=False) == 0, server.output()
    assert "stopping: SIGTERM" in server.output() and "stopped" in server.output()
    assert replica_pids("Generator", server) == []


@pytest.mark.parametrize("args, expected", [
    (["--host", "0.0.0.0"], "pass --api-key KEY (or set DIT_API_KEY)"),
    (["--max-batch", "64"], "outside"),
    (["--vae", "none"], "the service answers PNG images"),
    (["--vae", "ema"], "--vae ema: fashion makes pixels, not latents; drop --vae"),
    (["--ray", "127.0.0.1:1"], "cannot reach a Ray cluster at 127.0.0.1:1"),
])
def test_what_cannot_be_served_is_refused_in_one_line_before_ray_starts(fashion_graph, capsys, monkeypatch, args,
                                                                        expected):
    monkeypatch.delenv("DIT_API_KEY", raising=False)
    code, err = dit_serve([str(fashion_graph), *args], capsys)
    print(err.strip())
    assert code == 1 and expected in err and len(err.strip().splitlines()) == 1


def test_a_missing_or_foreign_file_and_a_busy_port_are_refused(fashion_graph, tmp_path, capsys):
    code, err = dit_serve([str(tmp_path / "nothing.onnx")], capsys)
    assert code == 1 and "not found" in err
    (tmp_path / "weights.pt").write_bytes(b"x")
    code, err = dit_serve([str(tmp_path / "weights.pt")], capsys)
    assert code == 1 and "neither a TensorRT engine (.plan) nor an ONNX graph (.onnx)" in err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        code, err = dit_serve([str(fashion_graph), "--port", str(taken.getsockname()[1])], capsys)
    assert code == 1 and "choose another --port" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_replicas_that_cannot_be_placed_are_refused_at_start(fashion_graph):
    """Ray would wait for a GPU that no node has without end; dit-serve says so and exits."""
    command = [sys.executable, "-m", "runtime.service.cli", str(fashion_graph), "--gpus-per-replica", "1",
               "--port", str(free_port())]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    print(done.stderr.strip())
    assert done.returncode == 1 and "the Ray cluster has no GPUs" in done.stderr


def test_help_names_every_option(capsys):
    with pytest.raises(SystemExit) as exited:
        dit_serve_cli.main(["--help"])
    text = capsys.readouterr().out
    assert exited.value.code == 0
    for option in ("--host", "--port", "--replicas", "--max-batch", "--batching", "--batch-wait-ms", "--vae", "--ray",
                   "--api-key", "--max-images", "--queue-size"):
        assert option in text
