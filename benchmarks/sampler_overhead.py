"""The sampler's own cost per step beside the denoiser's (the budget: under 5% of a step).

    python benchmarks/sampler_overhead.py [--model S/2] [--batch 1,8] [--steps 10] [--backends torch,onnxruntime]

Per backend and batch, a DDPM run as dit-run does it (seeded noise in sample.py's order, the
NaN/inf watch, a tqdm step bar as the callback), timed in two parts: inside the denoiser calls and
everything else (the host work of the sampling loop). The same loop is then timed with a free
denoiser (precomputed outputs) as a cross-check, and the host work is split into its pieces.
Weights are random (seed 0): speed does not depend on their values. Not a test.
"""

import io
import os
import sys
from pathlib import Path

import click
import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from a checkout

from benchmarks.measure import TimedDenoiser, median_ms, time_sampling_run  # noqa: E402
from benchmarks.throughput import parse_ints  # noqa: E402
from dit_ref.configs import latent_size  # noqa: E402
from dit_ref.contract import BatchRange  # noqa: E402
from dit_ref.diffusion import ddpm_step, schedule_from_spec  # noqa: E402
from dit_ref.errors import DiTError  # noqa: E402
from runtime.backends import load_denoiser  # noqa: E402
from runtime.sampling.noise import OfficialNoise  # noqa: E402
from runtime.sampling import FiniteWatch, sampler_from_name  # noqa: E402

BATCH_RANGE = BatchRange(1, 8, 32)


class FreeDenoiser(TimedDenoiser):
    """Returns precomputed outputs: what is left of a run is the sampler's own work."""

    def __init__(self, inner, eps, var_values):
        super().__init__(inner)
        self.eps, self.var_values, self.name = eps, var_values, "free"

    def __call__(self, x, t, y, cfg_scale):
        return self.eps, self.var_values


def run_sampler(denoiser, sampler, batch: int) -> float:
    """Seconds for one seeded sampling run with dit-run's progress callback."""
    bar = tqdm(total=sampler.num_calls, file=io.StringIO(), mininterval=0)  # rendered, as on a terminal
    return time_sampling_run(denoiser, sampler, batch, lambda info: bar.update())


def host_pieces(batch: int, size: int, repeats: int = 200) -> dict:
    """Milliseconds per step of each piece of host work in the DDPM loop, timed alone."""
    schedule, noise = schedule_from_spec(250), OfficialNoise(0)
    x, eps, var_values = (torch.randn(batch, 4, size, size) for _ in range(3))
    table = [torch.full((batch,), t) for t in range(250)]
    watch = FiniteWatch(x.device, list(range(250)), "bench")
    bar = tqdm(total=10**9, file=io.StringIO(), mininterval=0)
    with torch.inference_mode():
        return {
            "timestep tensor": median_ms(lambda: table[7], repeats),
            "noise draw (2n rows)": median_ms(lambda: noise(x), repeats),
            "step math (gathers + ddpm_step)": median_ms(lambda: ddpm_step(schedule, 7, x, eps, var_values, x), repeats),
            "NaN/inf watch": median_ms(lambda: watch.update(7, x), repeats),
            "progress callback (tqdm)": median_ms(bar.update, repeats),
        }


def measure(backend: str, graph, model: str, image_size: int, batch: int, steps: int, threads=None) -> dict:
    """Per-step milliseconds: whole step, denoiser, sampler overhead in the loop and with a free denoiser."""
    if backend == "torch":
        inner = load_denoiser(None, "torch", device="cpu", model=model, image_size=image_size, random_init=0)
    else:
        inner = load_denoiser(graph, device="cpu", threads=threads)
    sampler = sampler_from_name("ddpm", steps)
    denoiser = TimedDenoiser(inner)
    run_sampler(denoiser, sampler_from_name("ddpm", 2), batch)  # warm-up
    denoiser.reset()
    total = run_sampler(denoiser, sampler, batch)
    noise = OfficialNoise(1)
    probe = [noise.initial(batch, inner.latent_shape), torch.zeros(batch, dtype=torch.int64),
             torch.zeros(batch, dtype=torch.int64), torch.full((batch,), 4.0)]
    with torch.inference_mode():
        eps, var_values = inner(*probe)
    free = min(run_sampler(FreeDenoiser(inner, eps, var_values), sampler, batch) for _ in range(3))
    per_step = 1e3 / steps
    return {"backend": inner.name, "batch": batch, "step": total * per_step, "denoiser": denoiser.seconds * per_step,
            "overhead": (total - denoiser.seconds) * per_step, "free": free * per_step}


def make_graph(model: str, image_size: int, work_dir: Path) -> Path:
    """The FP32 graph of the random model (seed 0), exported once into work_dir and reused."""
    from benchmarks.backends import prepare  # the throughput benchmark's graph cache: same files

    return prepare("onnxruntime", model, image_size, BATCH_RANGE, work_dir)


def print_rows(rows: list[dict], pieces: dict, model: str, image_size: int) -> None:
    print(f"\nDDPM sampler overhead, DiT-{model} {image_size}px, CPU ({os.cpu_count()} logical CPUs, "
          f"load average {os.getloadavg()[0]:.1f}), ms per step")
    print(f"{'backend':<22}{'batch':>6}{'step':>10}{'denoiser':>10}{'overhead':>10}{'%':>7}{'free-run':>10}{'%':>7}")
    for row in rows:
        print(f"{row['backend']:<22}{row['batch']:>6}{row['step']:>10.1f}{row['denoiser']:>10.1f}"
              f"{row['overhead']:>10.3f}{100 * row['overhead'] / row['step']:>6.2f}%"
              f"{row['free']:>10.3f}{100 * row['free'] / row['step']:>6.2f}%")
    print("overhead = step - denoiser, in the timed run; free-run = the same loop with a free denoiser")
    for batch, parts in pieces.items():
        print(f"host pieces at batch {batch}, ms each: " + ", ".join(f"{k} {v:.3f}" for k, v in parts.items()))


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--model", default="S/2", show_default=True)
@click.option("--image-size", type=click.Choice(["256", "512"]), default="256", show_default=True)
@click.option("--batch", "batches", default="1,8", show_default=True, help="Comma list of batch sizes (images).")
@click.option("--steps", default=10, show_default=True, help="Timed DDPM steps per run.")
@click.option("--backends", "backend_list", default="torch,onnxruntime", show_default=True,
              help="torch and/or onnxruntime (FP32 graph).")
@click.option("--threads", type=int, help="torch and ONNX Runtime intra-op threads (default: physical cores).")
@click.option("--work-dir", type=click.Path(path_type=Path), default=Path.home() / ".cache/dit-deploy/benchmarks",
              show_default=True, help="Where the graph is exported once and reused.")
def main(model, image_size, batches, steps, backend_list, threads, work_dir):
    """Time the sampler's host work per step beside the denoiser's, on CPU."""
    try:
        if threads:
            torch.set_num_threads(threads)
        image_size, batch_sizes = int(image_size), parse_ints(batches, "--batch")
        chosen = [name.strip() for name in backend_list.split(",")]
        graph = make_graph(model, image_size, work_dir) if "onnxruntime" in chosen else None
        rows = [measure(backend, graph, model, image_size, batch, steps, threads)
                for backend in chosen for batch in batch_sizes]
        pieces = {batch: host_pieces(batch, latent_size(image_size)) for batch in batch_sizes}
        print_rows(rows, pieces, model, image_size)
    except DiTError as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
