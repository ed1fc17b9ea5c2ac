"""dit-serve under a bounded load on loopback: requests/s and p50/p95 latency at concurrency 1, 4 and 16,
with batching on (--max-batch 8) and off (--max-batch 1).

    python benchmarks/serve_load.py [--graph G.onnx] [--requests 48] [--steps 10] [--concurrency 1,4,16] [--json F]

For each batching setting one dit-serve is started (its own process and private Ray instance, one
replica), warmed up, then each concurrency level sends --requests requests of one image each from
that many client threads, every request waiting for its answer; the service stops at the end. The
model is the shipped Fashion-MNIST DiT (FP32 graph, exported here unless --graph is given), DDIM;
each request has its own seed and class. "mean batch" is the denoiser batch the images were made in
(the service reports it per image). Bounded: --requests x levels x 2 requests in all. Not a test.
"""

import concurrent.futures
import json
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import click

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from a checkout

from benchmarks.serving import Server  # noqa: E402
from benchmarks.throughput import parse_ints  # noqa: E402

BATCHING = {"on": 8, "off": 1}  # --max-batch of each setting
WARMUP_REQUESTS = 4


def fashion_graph(directory: Path) -> Path:
    from export import export

    return export("fashion", ckpt="auto", precision="fp32", out=directory, engine="skip", check=False).graph


def percentile(values: list[float], share: float) -> float:
    """The value below which `share` of values lie (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered)) - 1))]


def load(server: Server, concurrency: int, requests: int, steps: int) -> dict:
    """`requests` one-image requests from `concurrency` client threads: rate, latencies, batch sizes."""
    def ask(k):
        started = time.perf_counter()
        status, answer = server.generate(class_labels=[k % 10], seed=k, sampler="ddim", steps=steps)
        if status != 200:
            raise RuntimeError(f"request {k} got {status}: {answer}")
        return time.perf_counter() - started, answer["batch_sizes"][0]

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(ask, range(requests)))
    seconds = time.perf_counter() - started
    latencies = [1000 * latency for latency, _ in results]
    return {"concurrency": concurrency, "requests": requests, "seconds": seconds, "requests_per_s": requests / seconds,
            "p50_ms": percentile(latencies, 0.50), "p95_ms": percentile(latencies, 0.95),
            "mean_batch": statistics.mean(size for _, size in results)}


def measure(graph: Path, batching: str, levels: list[int], requests: int, steps: int, threads: int) -> list[dict]:
    server = Server(graph, "--max-batch", str(BATCHING[batching]), "--threads", str(threads),
                    "--queue-size", str(max(64, max(levels))))
    try:
        load(server, 1, WARMUP_REQUESTS, steps)
        rows = []
        for concurrency in levels:
            row = {"batching": batching, "max_batch": BATCHING[batching], **load(server, concurrency, requests, steps)}
            print(f"batching {batching:3}, concurrency {concurrency:2}: {row['requests_per_s']:.2f} req/s, "
                  f"p50 {row['p50_ms']:.0f} ms, p95 {row['p95_ms']:.0f} ms, mean batch {row['mean_batch']:.1f}",
                  file=sys.stderr)
            rows.append(row)
        return rows
    finally:
        server.stop()


def machine() -> dict:
    """What the figures were measured on."""
    import platform

    import ray

    from dit_ref.machine.cpu import physical_cores

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return {"cpu": cpu, "cores": physical_cores(), "python": platform.python_version(), "ray": ray.__version__}


def table(rows: list[dict]) -> str:
    lines = ["| batching | concurrency | requests/s | p50 ms | p95 ms | mean batch |", "|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['batching']} (--max-batch {row['max_batch']}) | {row['concurrency']} | "
                     f"{row['requests_per_s']:.2f} | {row['p50_ms']:.0f} | {row['p95_ms']:.0f} | "
                     f"{row['mean_batch']:.1f} |")
    return "\n".join(lines)


@click.command()
@click.option("--graph", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="An engine or graph to serve (default: the shipped fashion model, exported to FP32 here).")
@click.option("--requests", type=click.IntRange(min=1), default=48, show_default=True, help="Per concurrency level.")
@click.option("--steps", type=click.IntRange(1, 1000), default=10, show_default=True, help="DDIM steps per request.")
@click.option("--concurrency", "levels", default="1,4,16", show_default=True, help="Client threads, comma list.")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True, help="The replica's threads.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), help="Also write the rows here.")
def main(graph, requests, steps, levels, threads, json_out):
    """Requests/s and latency of dit-serve with batching on and off."""
    levels = parse_ints(levels, "--concurrency")
    with tempfile.TemporaryDirectory() as directory:
        graph = graph or fashion_graph(Path(directory))
        rows = [row for batching in BATCHING for row in measure(graph, batching, levels, requests, steps, threads)]
    print(table(rows))
    if json_out:
        record = {"date": date.today().isoformat(), "machine": machine(), "graph": graph.name, "steps": steps,
                  "threads": threads, "rows": rows}
        json_out.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
