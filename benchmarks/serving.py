"""A dit-serve in its own process, for the service tests and benchmarks/serve_load.py: started on a free
loopback port with its own private Ray instance, waited for, asked over HTTP, and stopped with Ctrl-C
sent to its whole process group, as a terminal does.

    server = Server(graph, "--max-batch", "8")
    status, answer = server.generate(class_labels=[1, 2], steps=10, sampler="ddim")
    server.stop()  # the exit code
"""

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

SERVICE_START_SECONDS = 150  # a private Ray instance, Serve and the replicas on a busy 2-core machine
STOP_SECONDS = 60
REQUEST_SECONDS = 120


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """`dit-serve GRAPH --port P ARGS`, serving once __init__ returns."""

    def __init__(self, graph: Path, *args: str, env: dict | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.NamedTemporaryFile("w+", prefix="dit-serve-", suffix=".log", delete=False)
        command = [sys.executable, "-m", "runtime.service.cli", str(graph), "--port", str(self.port), *args]
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
                                        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
        self.wait_until_serving()

    def output(self) -> str:
        return Path(self.log.name).read_text()

    def wait_until_serving(self) -> None:
        deadline = time.monotonic() + SERVICE_START_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"dit-serve exited with {self.process.returncode}:\n{self.output()}")
            if "Ctrl-C stops" in self.output():
                return
            time.sleep(0.5)
        self.kill()
        raise RuntimeError(f"dit-serve did not start within {SERVICE_START_SECONDS} s:\n{self.output()}")

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
                timeout: float = REQUEST_SECONDS) -> tuple[int, dict, object]:
        """(status, headers, JSON answer or text)."""
        request = urllib.request.Request(self.url + path, body, headers or {}, method=method)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                status, answer_headers, data = response.status, response.headers, response.read()
        except urllib.error.HTTPError as error:
            status, answer_headers, data = error.code, error.headers, error.read()
        answer_headers = {name.lower(): value for name, value in answer_headers.items()}
        try:
            return status, answer_headers, json.loads(data)
        except ValueError:
            return status, answer_headers, data.decode(errors="replace")

    def generate(self, headers: dict | None = None, **fields) -> tuple[int, object]:
        status, _, answer = self.request("POST", "/v1/generate", json.dumps(fields).encode(), headers)
        return status, answer

    def stop(self, signum: int = signal.SIGINT, group: bool = True) -> int:
        """Ctrl-C to the whole process group (as a terminal sends it), or signum to dit-serve alone; the exit code."""
        if self.process.poll() is None:
            if group:
                os.killpg(self.process.pid, signum)
            else:
                os.kill(self.process.pid, signum)
            try:
                self.process.wait(STOP_SECONDS)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.process.returncode

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(STOP_SECONDS)
