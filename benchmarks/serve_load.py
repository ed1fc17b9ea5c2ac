"""dit-serve under a bounded load on loopback: a mixed load of long and short requests with request-level
against step-level batching (on the real denoiser and on a fixed-cost stand-in), and the older sweep of
one kind of request at concurrency 1, 4 and 16 with batching on (--max-batch 8) and off (--max-batch 1).

    python benchmarks/serve_load.py [--load mixed,sweep] [--graph G.onnx] [--json F]
        mixed: [--seconds 15] [--long-clients 2] [--short-clients 6] [--simulated-call-ms 10]
        sweep: [--requests 48] [--steps 10] [--concurrency 1,4,16] [--sweep-batching step,request]

Each setting gets its own dit-serve (its own process and private Ray instance, one replica with one
thread), warmed up, then stopped. The model is the shipped Fashion-MNIST DiT (FP32
graph, exported here unless --graph is given); each request is one image with its own seed and class.

mixed: long requests (DDPM 250) and short ones (DDIM 10) arriving together. First the overtake check:
a short request's unloaded latency (median of 5), then a short request sent 0.3 s after a long one,
three times: its latency and whether it was answered first. Then the load: --long-clients and
--short-clients client threads, each sending its kind back to back for --seconds; p50/p95 latency
per kind and requests/s of the requests answered within the window, and image-steps/s (denoiser
work answered) of every request sent, to the last answer. --max-batch 8. Four settings: --batching
request and step on the real denoiser, then both again on a SIMULATED one (dit-serve's hidden
--simulated-call-ms: every call sleeps that long for any batch up to 8 and returns eps 0: how a GPU
behaves up to its batch, on a machine without one; its images are nothing, only the timing counts).

sweep: for each --batching mode, batching on and off, --requests one-image DDIM requests per
concurrency level from that many client threads; "mean batch" is the largest denoiser batch each
image was in (the service reports it per image).
Bounded: every setting's requests are counted or timed. Not a test.
"""

import concurrent.futures
import itertools
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


def measure(graph: Path, mode: str, batching: str, levels: list[int], requests: int, steps: int,
            threads: int) -> list[dict]:
    """One service (--batching mode, batching on or off): a row per concurrency level."""
    server = Server(graph, "--max-batch", str(BATCHING[batching]), "--batching", mode, "--threads", str(threads),
                    "--queue-size", str(max(64, max(levels))))
    try:
        load(server, 1, WARMUP_REQUESTS, steps)
        rows = []
        for concurrency in levels:
            row = {"mode": mode, "batching": batching, "max_batch": BATCHING[batching],
                   **load(server, concurrency, requests, steps)}
            print(table([row]).splitlines()[-1], file=sys.stderr)
            rows.append(row)
        return rows
    finally:
        server.stop()


KINDS = {"long": ("ddpm", 250), "short": ("ddim", 10)}  # the mixed load's two kinds of request
MIXED_SETTINGS = [("request", None), ("step", None), ("request", "simulated"), ("step", "simulated")]


def ask_kind(server: Server, kind: str, k: int) -> tuple[float, dict]:
    """One request of this kind: (seconds until its answer, the answer)."""
    sampler, steps = KINDS[kind]
    started = time.perf_counter()
    status, answer = server.generate(class_labels=[k % 10], seed=k, sampler=sampler, steps=steps)
    if status != 200:
        raise RuntimeError(f"{kind} request {k} got {status}: {answer}")
    return time.perf_counter() - started, answer


def overtake(server: Server, tries: int = 3) -> dict:
    """A short request alone (median of 5), then sent 0.3 s after a long one: its latency, and whether it was
    answered before the long one."""
    unloaded = statistics.median(ask_kind(server, "short", k)[0] for k in range(5))
    loaded, first = [], []
    for k in range(tries):
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            long = pool.submit(ask_kind, server, "long", 100 + k)
            time.sleep(0.3)  # the long request's image is in the replica
            seconds, _ = ask_kind(server, "short", 200 + k)
            first.append(not long.done())
            long.result()
        loaded.append(seconds)
    return {"unloaded_short_ms": 1000 * unloaded, "loaded_short_ms": [1000 * value for value in loaded],
            "worst_ratio": max(loaded) / unloaded, "short_answered_first": all(first)}


def client(server: Server, kind: str, number: int, start: float, deadline: float) -> list[tuple]:
    """Requests of one kind back to back until the deadline: (kind, answered at, latency, largest batch)."""
    done = []
    for k in itertools.count(1000 * number):
        if time.perf_counter() >= deadline:
            return done
        seconds, answer = ask_kind(server, kind, k)
        done.append((kind, time.perf_counter() - start, seconds, answer["batch_sizes"][0]))


def mixed_load(server: Server, long_clients: int, short_clients: int, seconds: float) -> dict:
    """Long and short clients together for `seconds`: latencies and requests/s of the requests answered within
    them; image-steps/s of every request sent (denoiser work done for answers), to the last answer."""
    kinds = ["long"] * long_clients + ["short"] * short_clients
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(len(kinds)) as pool:
        clients = [pool.submit(client, server, kind, number, start, start + seconds)
                   for number, kind in enumerate(kinds)]
        everything = [row for future in clients for row in future.result()]
    answered = [row for row in everything if row[1] <= seconds]
    row = {"seconds": seconds, "requests_per_s": len(answered) / seconds,
           "image_steps_per_s": sum(KINDS[kind][1] for kind, *_ in everything) / max(at for _, at, *_ in everything)}
    for kind in KINDS:
        latencies = [1000 * latency for k, _, latency, _ in answered if k == kind]
        row[kind] = {"answered": len(latencies), "requests_per_s": len(latencies) / seconds,
                     "p50_ms": percentile(latencies, 0.50) if latencies else None,
                     "p95_ms": percentile(latencies, 0.95) if latencies else None}
    row["mean_largest_batch"] = statistics.mean(size for *_, size in answered) if answered else None
    return row


def measure_mixed(graph: Path, batching: str, simulated_ms: float | None, options: dict) -> dict:
    """One service with this batching (and stand-in): the overtake check, then the mixed load."""
    simulation = [] if simulated_ms is None else ["--simulated-call-ms", str(simulated_ms)]
    server = Server(graph, "--max-batch", "8", "--batching", batching, "--threads", str(options["threads"]),
                    *simulation)
    try:
        for k in range(WARMUP_REQUESTS):
            ask_kind(server, "short", k)
        row = {"batching": batching, "denoiser": "real" if simulated_ms is None else f"SIMULATED {simulated_ms:g} ms"}
        row["overtake"] = overtake(server)
        row.update(mixed_load(server, options["long_clients"], options["short_clients"], options["seconds"]))
        print(mixed_table([row]).splitlines()[-1], file=sys.stderr)
        return row
    finally:
        server.stop()


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def mixed_table(rows: list[dict]) -> str:
    lines = ["| denoiser | batching | short p50 ms | short p95 ms | long p50 ms | requests/s (short + long) | "
             "image-steps/s | short alone ms | short beside a long one: worst ms, answered first |", "|---" * 9 + "|"]
    for row in rows:
        short, long, check = row["short"], row["long"], row["overtake"]
        lines.append(f"| {row['denoiser']} | {row['batching']} | {ms(short['p50_ms'])} | {ms(short['p95_ms'])} | "
                     f"{ms(long['p50_ms'])} | {row['requests_per_s']:.2f} ({short['requests_per_s']:.2f} + "
                     f"{long['requests_per_s']:.2f}) | {row['image_steps_per_s']:.0f} | "
                     f"{ms(check['unloaded_short_ms'])} | {ms(max(check['loaded_short_ms']))}, "
                     f"{'yes' if check['short_answered_first'] else 'no'} |")
    return "\n".join(lines)


def machine() -> dict:
    """What the figures were measured on: the CPU (dit_ref.machine.cpu.cpu_summary) and the versions."""
    from dit_ref.machine.cpu import cpu_summary
    from dit_ref.machine.gpu_stack import versions

    return {"cpu": cpu_summary(), "versions": versions("ray", "torch", "openvino", "onnxruntime", "fastapi")}


def table(rows: list[dict]) -> str:
    lines = ["| --batching | batching | concurrency | requests/s | p50 ms | p95 ms | mean batch |", "|---" * 7 + "|"]
    for row in rows:
        lines.append(f"| {row['mode']} | {row['batching']} (--max-batch {row['max_batch']}) | {row['concurrency']} | "
                     f"{row['requests_per_s']:.2f} | {row['p50_ms']:.0f} | {row['p95_ms']:.0f} | "
                     f"{row['mean_batch']:.1f} |")
    return "\n".join(lines)


@click.command()
@click.option("--load", "loads", default="mixed", show_default=True, help="mixed, sweep, or both (comma list).")
@click.option("--graph", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="An engine or graph to serve (default: the shipped fashion model, exported to FP32 here).")
@click.option("--seconds", type=click.FloatRange(min=1), default=15, show_default=True, help="mixed: the window.")
@click.option("--long-clients", type=click.IntRange(min=1), default=2, show_default=True, help="mixed: DDPM 250.")
@click.option("--short-clients", type=click.IntRange(min=1), default=6, show_default=True, help="mixed: DDIM 10.")
@click.option("--simulated-call-ms", type=click.FloatRange(min=0), default=10, show_default=True,
              help="mixed: the stand-in denoiser's cost of a call, any batch up to 8.")
@click.option("--requests", type=click.IntRange(min=1), default=48, show_default=True, help="sweep: per level.")
@click.option("--steps", type=click.IntRange(1, 1000), default=10, show_default=True, help="sweep: DDIM steps.")
@click.option("--concurrency", "levels", default="1,4,16", show_default=True, help="sweep: client threads, a list.")
@click.option("--sweep-batching", "modes", default="step,request", show_default=True,
              help="sweep: the --batching modes, a list.")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True, help="The replica's threads.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), help="Also write the rows here.")
def main(loads, graph, seconds, long_clients, short_clients, simulated_call_ms, requests, steps, levels, modes,
         threads, json_out):
    """Latency and requests/s of dit-serve: step- against request-level batching under a mixed load, and
    batching on and off under one kind of request."""
    loads = {part.strip() for part in loads.split(",") if part.strip()}
    if not loads or loads - {"mixed", "sweep"}:
        raise click.BadParameter("takes mixed, sweep or both", param_hint="--load")
    levels = parse_ints(levels, "--concurrency")
    options = {"threads": threads, "seconds": seconds, "long_clients": long_clients, "short_clients": short_clients}
    record = {"date": date.today().isoformat(), "machine": machine(), "threads": threads}
    with tempfile.TemporaryDirectory() as directory:
        graph = graph or fashion_graph(Path(directory))
        record["graph"] = graph.name
        if "mixed" in loads:
            record["mixed"] = {**options, "kinds": KINDS, "max_batch": 8, "rows": [
                measure_mixed(graph, batching, None if kind is None else simulated_call_ms, options)
                for batching, kind in MIXED_SETTINGS]}
            print(mixed_table(record["mixed"]["rows"]))
        if "sweep" in loads:
            record["sweep"] = {"steps": steps, "rows": [
                row for mode in modes.split(",") for batching in BATCHING
                for row in measure(graph, mode.strip(), batching, levels, requests, steps, threads)]}
            print(table(record["sweep"]["rows"]))
    if json_out:
        json_out.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
