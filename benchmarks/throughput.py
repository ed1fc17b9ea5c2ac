"""Throughput of every backend side by side, on this machine, in one run.

    python benchmarks/throughput.py --model S/2 --image-size 256 --batch 1,8 \
        --backends torch,torch-compile,onnxruntime,onnxruntime-fp16,tensorrt --steps 20 [--json PATH] [--plot PATH]

Per backend, model and batch: ms per denoising step (one guided call over the doubled batch;
median and p90 over --repeats after --warmup, CUDA-synchronised on a GPU), images per second for
a full DDPM run of --steps steps, the runtime's own overhead per step (the full run's time per step
minus the denoiser's), peak memory, and the speed-up over PyTorch eager float32 (the headline).
On a GPU also the achieved TFLOP/s and the fraction of the GPU's dense FP16 peak. On a CPU the
achieved GFLOP/s and its fraction of the large-GEMM peaks measured in the same run, with the same
threads, by OpenVINO (oneDNN): the fp32 peak for every setting, the bf16 peak too for those that
compute in bf16 or int8.

Each measurement runs in a fresh process, so peak memory is that backend's alone and a backend
that crashes cannot take the others with it. Weights are random (seed 0): speed does not depend
on their values.
"""

import json
import platform
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import click

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from a checkout

from benchmarks import backends  # noqa: E402
from dit_ref.contract import BatchRange  # noqa: E402
from dit_ref.errors import DiTError  # noqa: E402
from dit_ref.machine.cpu import physical_cores  # noqa: E402

DEFAULT_BACKENDS = ("torch,torch-fp16,torch-bf16,torch-compile,torch-compile-fp16,torch-cudagraphs-fp16,"
                    "torch-cudagraphs-bf16,torch-cudagraphs-fp16-fora3,onnxruntime,onnxruntime-fp16,onnxruntime-int8,"
                    "openvino,openvino-fp16,openvino-bf16,openvino-bf16-compute,openvino-int8,tensorrt")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--model", "models", default="S/2", show_default=True, help="Comma list of models, e.g. S/2,B/2.")
@click.option("--image-size", type=click.Choice(["256", "512"]), default="256", show_default=True)
@click.option("--batch", "batches", default="1,8", show_default=True, help="Comma list of batch sizes (images).")
@click.option("--backends", "backend_list", default=DEFAULT_BACKENDS, show_default=True,
              help="Comma list from: " + ", ".join(backends.BACKENDS))
@click.option("--steps", default=20, show_default=True, help="DDPM steps of the full sampling run.")
@click.option("--repeats", default=10, show_default=True, help="Timed denoiser calls per measurement.")
@click.option("--warmup", default=3, show_default=True, help="Untimed calls first (compilation, caches).")
@click.option("--work-dir", type=click.Path(path_type=Path), default=Path.home() / ".cache/dit-deploy/benchmarks",
              show_default=True, help="Where graphs and engines are made once and reused.")
@click.option("--threads", type=click.IntRange(min=1), help="CPU threads of every setting and of the GEMM peak "
              "[default: this machine's physical cores]")
@click.option("--gemm-size", default=2048, show_default=True, type=click.IntRange(min=16),
              help="n of the n x n x n MatMul whose speed is the CPU's GEMM peak.")
@click.option("--worker-seconds", type=click.FloatRange(min=1), help="Stop one measurement (one backend and batch, "
              "compilation included) after this long and record why; the others still run. [default: no limit]")
@click.option("--time-budget", type=click.FloatRange(min=1), help="Seconds for all measurements: each stops when "
              "it runs out, and those not started are recorded as not measured. [default: no limit]")
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Write one record per measurement.")
@click.option("--plot", "plot_path", type=click.Path(path_type=Path), help="Plot images/s by batch (PNG).")
def main(models, image_size, batches, backend_list, steps, repeats, warmup, work_dir, threads, gemm_size,
         worker_seconds, time_budget, json_path, plot_path):
    """Measure every backend on this machine and print them side by side."""
    try:
        image_size, batch_sizes = int(image_size), parse_ints(batches, "--batch")
        chosen = [name.strip() for name in backend_list.split(",") if name.strip()]
        if "torch" not in chosen:
            chosen.insert(0, "torch")  # the baseline every ratio is taken against
        on_cpu = backends.device().type == "cpu"
        threads = (threads or physical_cores()) if on_cpu else None
        peaks = measure_gemm_peaks(gemm_size, threads) if on_cpu else None  # again after the settings: the higher
        records = []
        for model in [name.strip() for name in models.split(",")]:
            settings = dict(model=model, image_size=image_size, steps=steps, repeats=repeats, warmup=warmup,
                            threads=threads, worker_seconds=worker_seconds,
                            deadline=time.monotonic() + time_budget if time_budget else None)
            records += run_model(settings, chosen, batch_sizes, work_dir)
        add_ratios(records)
        if peaks is not None:
            peaks = higher_peaks(peaks, measure_gemm_peaks(gemm_size, threads))
            add_peak_fractions(records, peaks)
        print_report(records, peaks)
        if json_path:
            write_json(json_path, records, peaks)
        if plot_path:
            plot(records, plot_path)
    except DiTError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(1)


def parse_ints(text: str, option: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise DiTError(f"{option} takes a comma list of positive integers, not {text!r}") from None
    if not values or min(values) < 1:
        raise DiTError(f"{option} takes a comma list of positive integers, not {text!r}")
    return values


def run_model(settings: dict, chosen: list[str], batch_sizes: list[int], work_dir: Path) -> list[dict]:
    """Every (backend, batch) of one model, each measured in its own process."""
    records = []
    batch_range = BatchRange(1, max(batch_sizes), max(batch_sizes))
    for backend in chosen:
        reason = backends.skip_reason(backend)
        artifact = None
        if reason is None:
            try:
                artifact = backends.prepare(backend, settings["model"], settings["image_size"], batch_range, work_dir)
            except DiTError as error:
                reason = str(error)
        for batch in batch_sizes:
            base = {"backend": backend, "model": settings["model"], "image_size": settings["image_size"], "batch": batch}
            if reason is not None:
                records.append({**base, "skipped": reason})
                continue
            seconds = worker_seconds(settings)
            if seconds is not None and seconds < MIN_WORKER_SECONDS:
                records.append({**base, "skipped": "not measured: the run's --time-budget ran out"})
                continue
            click.echo(f"measuring {backend} {settings['model']} batch {batch} ...", err=True)
            spec = {**settings, **base, "artifact": str(artifact) if artifact else None, "worker_seconds": seconds}
            records.append({**base, **run_worker(spec)})
    return records


MIN_WORKER_SECONDS = 5  # less left of the time budget: the measurement is not started


def worker_seconds(settings: dict) -> float | None:
    """How long the next measurement may run: --worker-seconds, or what is left of --time-budget if less; None
    without either."""
    limits = [settings.get("worker_seconds")]
    if settings.get("deadline") is not None:
        limits.append(settings["deadline"] - time.monotonic())
    limits = [limit for limit in limits if limit is not None]
    return min(limits) if limits else None


def measure_gemm_peaks(size: int, threads: int) -> dict:
    """The CPU's fp32 (and bf16) large-GEMM peaks in GFLOP/s, in a fresh process; {"skipped": why} without OpenVINO."""
    reason = backends.openvino_reason("openvino", on_gpu=False)
    if reason is not None:
        return {"skipped": reason}
    click.echo(f"measuring the GEMM peaks ({size}^3 MatMul, {threads} threads) ...", err=True)
    return run_worker({"gemm_peaks": size, "threads": threads})


def higher_peaks(before: dict, after: dict) -> dict:
    """The higher of two GEMM-peak measurements, each precision on its own (another process's load on a
    shared machine can only lower a peak); both kept in "runs"."""
    if "skipped" in before or "skipped" in after:
        return after if "skipped" in before else before
    best = {key: max((value for value in (before[key], after[key]) if value is not None), default=None)
            for key in ("fp32", "bf16")}
    return {**before, **best, "runs": [before, after]}


def run_worker(spec: dict) -> dict:
    """One measurement in a fresh Python process (stopped after spec's worker_seconds, when given); its last stdout
    line is the JSON record."""
    command = [sys.executable, "-m", "benchmarks.measure", json.dumps(spec)]
    root = Path(__file__).resolve().parent.parent
    seconds = spec.get("worker_seconds")
    try:
        done = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=seconds)
    except subprocess.TimeoutExpired:
        return {"skipped": f"stopped after {seconds:.0f} s (its time limit), compilation included"}
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"skipped": f"failed: {last[:200]}"}
    return json.loads(lines[-1])


def add_ratios(records: list[dict]) -> None:
    """ratio_vs_torch: PyTorch eager float32's ms per step over this backend's (same model, batch)."""
    baseline = {(r["model"], r["batch"]): r for r in records if r["backend"] == "torch" and "skipped" not in r}
    for record in records:
        torch_record = baseline.get((record["model"], record["batch"]))
        if "skipped" in record or torch_record is None:
            record["ratio_vs_torch"] = None
            continue
        record["ratio_vs_torch"] = torch_record["ms_per_step_median"] / record["ms_per_step_median"]


def add_peak_fractions(records: list[dict], peaks: dict) -> None:
    """percent_of_fp32_peak: a CPU record's GFLOP/s over the fp32 GEMM peak; percent_of_bf16_peak: over the
    bf16 one, for the settings that compute in bf16 or int8 (None elsewhere, or where a peak is missing)."""
    for record in records:
        gflops, setting = record.get("gflops"), backends.SETTINGS.get(record["backend"])
        fp32, bf16 = peaks.get("fp32"), peaks.get("bf16")
        low_precision = setting is not None and setting.compute in ("bf16", "int8")
        record["percent_of_fp32_peak"] = 100 * gflops / fp32 if gflops and fp32 else None
        record["percent_of_bf16_peak"] = 100 * gflops / bf16 if gflops and bf16 and low_precision else None


COLUMNS = [  # (header, key, format)
    ("backend", "backend", "{}"), ("model", "model", "{}"), ("batch", "batch", "{}"),
    ("ms/step med", "ms_per_step_median", "{:.1f}"), ("p90", "ms_per_step_p90", "{:.1f}"),
    ("img/s", "images_per_s", "{:.3f}"), ("overhead ms/step", "overhead_ms_per_step", "{:.2f}"),
    ("overhead %", "overhead_percent", "{:.1f}"), ("peak MB", "peak_mem_mb", "{:.0f}"),
    ("vs torch", "ratio_vs_torch", "{:.2f}x"),
]
GPU_COLUMNS = [("TFLOP/s", "tflops", "{:.1f}"), ("% peak", "percent_of_peak", "{:.1f}")]
CPU_COLUMNS = [("GFLOP/s", "gflops", "{:.1f}"), ("% fp32 peak", "percent_of_fp32_peak", "{:.1f}"),
               ("% bf16 peak", "percent_of_bf16_peak", "{:.1f}")]


def print_report(records: list[dict], peaks: dict | None = None) -> None:
    """A readable table: the machine (and its GEMM peaks), measured rows, then skipped backends with their reasons."""
    measured = [r for r in records if "skipped" not in r]
    on_gpu = bool(measured) and measured[0]["device"] == "cuda"
    if measured:
        first = measured[0]
        click.echo(f"\n{first['device_name']} ({first['device']}), {date.today()}, torch {first['torch']}, "
                   f"{first['image_size']} px, {first['steps']} DDPM steps per full run, random weights")
    if peaks is not None:
        click.echo(peaks_line(peaks))
    columns = COLUMNS + (GPU_COLUMNS if on_gpu else CPU_COLUMNS)
    rows = [[header for header, _, _ in columns]]
    for record in measured:
        rows.append([fmt.format(record[key]) if record.get(key) is not None else "-" for _, key, fmt in columns])
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
    for row in rows:
        click.echo("  ".join(cell.rjust(width) for cell, width in zip(row, widths)))
    skipped = {(r["backend"], r["skipped"]) for r in records if "skipped" in r}
    for backend, reason in sorted(skipped):
        click.echo(f"skipped {backend}: {reason}")
    unit = "TFLOP/s" if on_gpu else "GFLOP/s"
    click.echo(f"{unit} counts 2 FLOPs per multiply-accumulate of the paper's Gflops, x2 for the guidance doubling, "
               f"over the median step." + ("" if on_gpu else " % fp32 peak: of the fp32 GEMM peak; % bf16 peak: of "
                                           "the bf16 GEMM peak, for the settings computing in bf16 or int8."))


def peaks_line(peaks: dict) -> str:
    """"GEMM peaks (...): fp32 430 GFLOP/s, bf16 850 GFLOP/s", or why there are none."""
    if "skipped" in peaks:
        return f"GEMM peaks: not measured ({peaks['skipped']})"
    bf16 = f"{peaks['bf16']:.0f} GFLOP/s" if peaks.get("bf16") else f"not measured ({peaks.get('bf16_skipped')})"
    size, runs = peaks["gemm_size"], len(peaks.get("runs", [peaks]))
    return (f"GEMM peaks (one {size}x{size} by {size}x{size} MatMul in OpenVINO/oneDNN, {peaks['threads']} threads, "
            f"fastest of {peaks['repeats']} calls{', higher of before and after the settings' if runs > 1 else ''}): "
            f"fp32 {peaks['fp32']:.0f} GFLOP/s, bf16 {bf16}")


def write_json(path: Path, records: list[dict], peaks: dict | None = None) -> None:
    meta = {"date": str(date.today()), "machine": platform.node(), "processor": platform.processor(),
            "gemm_peaks": peaks}
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps([{**meta, **r} for r in records], indent=1))
    temporary.replace(path)
    click.echo(f"wrote {path}")


def plot(records: list[dict], path: Path) -> None:
    """images/s by batch, one line per backend and model."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(7, 4.5))
    measured = [r for r in records if "skipped" not in r]
    for key in sorted({(r["backend"], r["model"]) for r in measured}):
        points = sorted((r["batch"], r["images_per_s"]) for r in measured if (r["backend"], r["model"]) == key)
        axes.plot(*zip(*points), marker="o", label=f"{key[1]} {key[0]}")
    axes.set(xlabel="batch (images)", ylabel="images / s", xscale="log", yscale="log",
             title=f"DiT sampling throughput, {measured[0]['device_name'] if measured else ''}")
    batches = sorted({r["batch"] for r in measured})
    axes.set_xticks(batches, [str(b) for b in batches], minor=False)
    axes.set_xticks([], minor=True)
    axes.legend(fontsize=8)
    temporary = path.with_name(path.stem + ".tmp" + path.suffix)
    figure.savefig(temporary, dpi=120, bbox_inches="tight")
    temporary.replace(path)
    click.echo(f"wrote {path}")


if __name__ == "__main__":
    try:
        main(standalone_mode=False)
    except click.exceptions.ClickException as error:
        error.show()
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
