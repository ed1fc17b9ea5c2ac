"""Scale-out on one machine: images/s of dit-run --ray with 1, 2 and 4 workers, and per-sample seeding's cost.

    python benchmarks/scaleout.py [--model S/2] [--num-samples 32] [--steps 8] [--batch 4] [--workers 1,2,4] [--json F]

Part 1 runs runtime.scaleout.run_on_ray (the code behind dit-run --ray) on a local Ray instance
started for each pool (ONNX Runtime on CPU, one thread per worker), plus one worker with a thread
per core and one machine's generate() without Ray as references. Latents only (--vae none), so
the figures are the denoising pipeline's; DDIM. images/s is over the whole run from the start of
the pipeline (actor start-up and model load included); "computing" adds up each worker's images
over its time inside generate() (start-up and waiting left out). Each setting runs --repeats times
and the fastest run is kept (the machine may be shared).

Part 2 times what per-sample seeding adds to a step against official seeding: per batch, one
generator per sample (seeded through numpy's SeedSequence) and the initial draws; per step, n small
draws instead of one. It is set beside the denoiser's own time per step at the same batch.
Weights are random (seed 0): speed does not depend on their values. Not a test.
"""

import json
import os
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import click
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from a checkout

from benchmarks.backends import prepare  # noqa: E402
from benchmarks.measure import median_ms  # noqa: E402
from benchmarks.throughput import parse_ints  # noqa: E402
from dit_ref.contract import BatchRange  # noqa: E402
from dit_ref.errors import DiTError  # noqa: E402
from runtime.backends import load_denoiser  # noqa: E402
from dit_ref.machine.cpu import physical_cores  # noqa: E402
from runtime.generate import generate  # noqa: E402
from runtime.sampling.noise import OfficialNoise, PerSampleNoise  # noqa: E402
from runtime.sampling import sampler_from_name  # noqa: E402
from runtime.plan import make_plan  # noqa: E402
from runtime.scaleout.job import Job, RayOptions, run_on_ray  # noqa: E402

BATCH_RANGE = BatchRange(1, 8, 32)


def ray_run(graph, num_samples: int, steps: int, batch: int, workers: int, threads: int) -> dict:
    """One dit-run --ray on a fresh local instance: images/s overall and while computing."""
    plan = make_plan(num_samples=num_samples, sampler="ddim", steps=steps, seeding="per-sample", batch_size=batch,
                     decoder="none")
    with tempfile.TemporaryDirectory() as out_dir:
        summary = run_on_ray(Job(path=str(graph), plan=plan), Path(out_dir) / "samples.npy",
                             RayOptions(workers=workers, threads=threads), progress=False)
    return {"setting": f"ray, {workers} worker(s) x {threads} thread(s)", "workers": workers, "threads": threads,
            "seconds": summary.seconds, "images_per_s": summary.images / summary.seconds,
            "computing_images_per_s": summary.busy_rate, "first_batch_s": summary.first_seconds,
            "per_worker": dict(summary.per_worker)}


def fastest(run, repeats: int) -> dict:
    """The fastest of `repeats` runs (the least disturbed on a shared machine)."""
    return max((run() for _ in range(repeats)), key=lambda record: record["images_per_s"])


def one_machine_run(graph, num_samples: int, steps: int, batch: int, threads: int) -> dict:
    """generate() in this process, no Ray: the reference."""
    torch.set_num_threads(threads)
    with load_denoiser(graph, threads=threads) as denoiser:
        start = time.perf_counter()
        for _ in generate(denoiser, [None] * num_samples, sampler_from_name("ddim", steps), batch_size=batch,
                          seeding="per-sample"):
            pass
        seconds = time.perf_counter() - start
    return {"setting": f"one machine, no Ray, {threads} thread(s)", "workers": 1, "threads": threads,
            "seconds": seconds, "images_per_s": num_samples / seconds, "computing_images_per_s": num_samples / seconds,
            "first_batch_s": None, "per_worker": {}}


def seeding_cost(graph, batch: int, threads: int, repeats: int = 50) -> dict:
    """Milliseconds of each seeding's noise work beside one denoiser step at this batch."""
    torch.set_num_threads(threads)
    with load_denoiser(graph, threads=threads) as denoiser, torch.inference_mode():
        shape, classes = denoiser.latent_shape, denoiser.provenance.num_classes
        x = torch.zeros(batch, *shape)
        inputs = (x, torch.full((batch,), 500), torch.zeros(batch, dtype=torch.int64), torch.full((batch,), 4.0))
        denoiser(*inputs)  # warm-up
        step = median_ms(lambda: denoiser(*inputs), max(3, repeats // 10))
        official, per_sample = OfficialNoise(0), PerSampleNoise(0, range(batch))
        planned = [None] * batch
        return {"batch": batch, "step_ms": step,
                "official_step_noise_ms": median_ms(lambda: official(x), repeats),
                "per_sample_step_noise_ms": median_ms(lambda: per_sample(x), repeats),
                "official_batch_start_ms": median_ms(lambda: official.draw_batch(planned, shape, classes), repeats),
                "per_sample_batch_start_ms": median_ms(
                    lambda: PerSampleNoise(0, range(batch)).draw_batch(planned, shape, classes), repeats)}


def extra_per_step(row: dict, steps: int, step_noise: bool) -> float:
    """What per-sample seeding adds to each step of a run of `steps` (step_noise: DDPM draws noise each step)."""
    start = (row["per_sample_batch_start_ms"] - row["official_batch_start_ms"]) / steps
    return start + (row["per_sample_step_noise_ms"] - row["official_step_noise_ms"] if step_noise else 0.0)


def print_report(model, runs, costs, num_samples, steps, batch) -> None:
    print(f"\nScale-out, DiT-{model} 256px ONNX Runtime FP32 on CPU ({physical_cores()} cores, load average "
          f"{os.getloadavg()[0]:.1f}), {num_samples} samples, DDIM {steps} steps, batch {batch}, latents")
    print(f"{'setting':<38}{'s':>8}{'images/s':>10}{'computing':>11}{'1st batch s':>13}  images per worker")
    for run in runs:
        first = f"{run['first_batch_s']:.1f}" if run["first_batch_s"] is not None else "-"
        spread = " ".join(str(count) for count in sorted(run["per_worker"].values(), reverse=True))
        print(f"{run['setting']:<38}{run['seconds']:>8.1f}{run['images_per_s']:>10.3f}"
              f"{run['computing_images_per_s']:>11.3f}{first:>13}  {spread}")
    print("\nPer-sample seeding's cost against official seeding, ms (median); % of one denoiser step")
    print(f"{'batch':>5}{'step':>9}{'noise/step off':>16}{'per-sample':>12}{'batch start off':>17}{'per-sample':>12}"
          f"{'DDPM 250':>10}{'DDIM 50':>9}")
    for row in costs:
        ddpm, ddim = (100 * extra_per_step(row, n, noise) / row["step_ms"] for n, noise in ((250, True), (50, False)))
        print(f"{row['batch']:>5}{row['step_ms']:>9.1f}{row['official_step_noise_ms']:>16.3f}"
              f"{row['per_sample_step_noise_ms']:>12.3f}{row['official_batch_start_ms']:>17.3f}"
              f"{row['per_sample_batch_start_ms']:>12.3f}{ddpm:>9.2f}%{ddim:>8.2f}%")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--model", default="S/2", show_default=True)
@click.option("--num-samples", default=32, show_default=True)
@click.option("--steps", default=8, show_default=True, help="DDIM steps per sample.")
@click.option("--batch", default=4, show_default=True, help="Images per denoiser batch.")
@click.option("--workers", "worker_list", default="1,2,4", show_default=True, help="Comma list of pool sizes.")
@click.option("--repeats", default=2, show_default=True, help="Runs per setting; the fastest is kept.")
@click.option("--seeding-batches", default="1,8,32", show_default=True, help="Batches for the seeding cost.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Write the records here.")
@click.option("--work-dir", type=click.Path(path_type=Path), default=Path.home() / ".cache/dit-deploy/benchmarks",
              show_default=True, help="Where the graph is exported once and reused.")
def main(model, num_samples, steps, batch, worker_list, repeats, seeding_batches, json_path, work_dir):
    """Images/s of dit-run --ray with 1, 2 and 4 workers on this machine, and per-sample seeding's cost."""
    try:
        graph = prepare("onnxruntime", model, 256, BATCH_RANGE, work_dir)
        cores = physical_cores()
        pools = [(workers, 1) for workers in parse_ints(worker_list, "--workers")] + [(1, cores)]
        runs = [fastest(lambda: ray_run(graph, num_samples, steps, batch, workers, threads), repeats)
                for workers, threads in pools]
        runs.append(fastest(lambda: one_machine_run(graph, num_samples, steps, batch, cores), repeats))
        costs = [seeding_cost(graph, size, cores) for size in parse_ints(seeding_batches, "--seeding-batches")]
        print_report(model, runs, costs, num_samples, steps, batch)
        if json_path:
            record = {"date": date.today().isoformat(), "model": model, "cores": cores, "num_samples": num_samples,
                      "steps": steps, "batch": batch, "repeats": repeats, "load_average": os.getloadavg()[0],
                      "runs": runs,
                      "seeding": costs}
            json_path.write_text(json.dumps(record, indent=2) + "\n")
    except DiTError as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
