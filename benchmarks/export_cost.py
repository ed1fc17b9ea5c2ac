"""Wall time and peak memory of `dit-export` per precision, each run in a fresh child process.

    python benchmarks/export_cost.py                      # XL/2 at 256, FP16 and FP32, random init
    python benchmarks/export_cost.py --model S/2 --with-check

Each export runs as `python -m export.cli ... --engine skip` in its own process; the peak resident
memory is that child's ru_maxrss (os.wait4), so runs do not mask each other. Random weights cost
the same to export as real ones and need no download. The budget: under 3 minutes and 8 GB.
"""

import datetime
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click

GOAL_SECONDS, GOAL_GB = 180, 8.0


def machine() -> str:
    """CPU model, cores and RAM of this machine, for the record."""
    cpu = platform.processor() or platform.machine()
    with open("/proc/cpuinfo") as info:
        cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), cpu)
    ram_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    return f"{cpu}, {os.cpu_count()} cores, {ram_gb:.0f} GB RAM, {platform.system()} {platform.release()}"


def run_export(model: str, image_size: int, precision: str, out: Path, check: bool) -> dict:
    """Run one export in a child process; its wall time, peak RSS and output sizes."""
    command = [sys.executable, "-m", "export.cli", "--model", model, "--image-size", str(image_size),
               "--random-init", "0", "--engine", "skip", "--out", str(out)]
    command += ["--fp16"] if precision == "fp16" else []
    command += [] if check else ["--no-check"]
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise click.ClickException(f"export failed ({child.returncode}):\n{output}")
    files = {path.name: path.stat().st_size for path in out.iterdir()}
    return {"seconds": seconds, "peak_gb": usage.ru_maxrss * 1024 / 1e9, "files": files, "log": output}


def report(model: str, image_size: int, precision: str, result: dict) -> str:
    total_gb = sum(result["files"].values()) / 1e9
    verdict = "ok" if result["seconds"] < GOAL_SECONDS and result["peak_gb"] < GOAL_GB else "OVER GOAL"
    return (f"| DiT-{model} | {image_size} | {precision} | {result['seconds']:.0f} s | "
            f"{result['peak_gb']:.2f} GB | {total_gb:.2f} GB ({len(result['files'])} files) | {verdict} |")


@click.command()
@click.option("--model", default="XL/2", show_default=True)
@click.option("--image-size", type=int, default=256, show_default=True)
@click.option("--precision", "precisions", multiple=True, default=["fp16", "fp32"], show_default=True)
@click.option("--with-check", is_flag=True, help="Include the ONNX Runtime vs PyTorch check stage.")
@click.option("--verbose", is_flag=True, help="Print each export's own stage log.")
def main(model, image_size, precisions, with_check, verbose):
    """Measure export wall time and peak memory."""
    click.echo(f"{datetime.date.today()} on {machine()}; python {platform.python_version()}")
    click.echo("| model | image | precision | wall time | peak RSS | written | goal <3 min, <8 GB |")
    click.echo("|---|---|---|---|---|---|---|")
    for precision in precisions:
        with tempfile.TemporaryDirectory(prefix="dit-export-cost-") as scratch:
            result = run_export(model, image_size, precision, Path(scratch), with_check)
        click.echo(report(model, image_size, precision, result))
        if verbose:
            click.echo(result["log"])


if __name__ == "__main__":
    main()
