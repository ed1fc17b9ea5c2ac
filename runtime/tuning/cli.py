"""dit-tune: the fastest settings that keep your pictures, measured on your model and this machine, written as a
profile that dit-run, generate(), --ray and dit-serve apply by name.

    dit-tune graphs/fashion-28-fp32.onnx                 # 15 minutes at most; graphs/fashion-28.profile.json
    dit-run graphs/fashion-28-fp32.onnx --profile fast --class 7

It measures the engines beside the graph (each precision exported there, each backend that runs it here), then
each lever alone from the exact point (the FP32 graph, the sampler and steps asked for, no interval, no cache),
then walks the combinations in order of predicted speed (runtime.tuning.points). Every measurement is kept in
the work folder, so a run that is interrupted or runs out of time resumes where it stopped.
"""

import json
import re
from pathlib import Path

import click

from dit_ref.errors import DiTError
from runtime.options import OPTIONS

UNITS = {"s": 1, "m": 60, "h": 3600}


def parse_duration(text: str) -> float:
    """"90s", "15m", "1h", "1.5h" -> seconds; DiTError otherwise."""
    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh])\s*", str(text))
    if not found or float(found.group(1)) <= 0:
        raise DiTError(f"--time {text!r}: give a duration such as 90s, 15m or 1h")
    return float(found.group(1)) * UNITS[found.group(2)]


def parse_pairs(text: str) -> tuple[int, int]:
    """"SCREEN:CONFIRM" -> two counts, 4 <= SCREEN <= CONFIRM."""
    parts = str(text).split(":")
    if len(parts) != 2 or not all(part.strip().isdigit() for part in parts):
        raise DiTError(f"--pairs {text!r}: give SCREEN:CONFIRM, e.g. 32:128")
    screen, confirm = (int(part) for part in parts)
    if not 4 <= screen <= confirm:
        raise DiTError(f"--pairs {text}: need 4 <= SCREEN <= CONFIRM")
    return screen, confirm


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("graph_or_engine", type=click.Path(path_type=Path))
@click.option("--time", "duration", default="15m", show_default=True, help="Wall-clock budget: 90s, 15m, 1h.")
@click.option("--sampler", default="ddim", show_default=True, help="The exact point's sampler (deterministic: "
              "paired fidelity compares step counts through it).")
@click.option("--steps", type=int, default=50, show_default=True, help="The exact point's steps.")
@click.option("--cfg-scale", type=float, default=OPTIONS["cfg_scale"].default, show_default=True,
              help="The guidance scale every setting samples with (yours).")
@click.option("--faithful-db", type=float, default=35.0, show_default=True,
              help="faithful: mean paired PSNR against the exact point's pictures, at least (dB).")
@click.option("--fast-db", type=float, default=25.0, show_default=True,
              help="fast, for a model without a judge: the looser paired budget (dB).")
@click.option("--accuracy-points", type=float, default=1.0, show_default=True,
              help="fast, for a model with a judge: class accuracy at most this far below exact's (points).")
@click.option("--pairs", default="16:64", show_default=True, help="Pairs that screen and that confirm a setting "
              "(16 and 64 resolve settings 3 dB apart on the fashion model: docs/benchmarks.md, paired fidelity).")
@click.option("--population", type=click.IntRange(min=100), default=1000, show_default=True,
              help="Samples the judge scores (models with a judge: the shipped fashion classifier).")
@click.option("--batch", type=click.IntRange(min=1), default=16, show_default=True, help="Images per denoiser call.")
@click.option("--threads", type=click.IntRange(min=1), help="CPU threads (default: physical cores).")
@click.option("--seed", type=int, default=0, show_default=True, help="Pair i is seeded (seed, i).")
@click.option("--out", type=click.Path(path_type=Path), help="The profile (default: beside the graph).")
@click.option("--work-dir", type=click.Path(path_type=Path), help="Where measurements are kept (default: beside "
              "the profile, PROFILE.tune/); a run resumes from it.")
@click.option("--fresh", is_flag=True, help="Forget the measurements kept in the work folder.")
def tune(graph_or_engine, duration, sampler, steps, cfg_scale, faithful_db, fast_db, accuracy_points, pairs,
         population, batch, threads, seed, out, work_dir, fresh):
    """Find the fastest settings that keep the pictures of GRAPH_OR_ENGINE's model on this machine, and write them
    as a profile (exact, faithful, fast) beside it."""
    from runtime.tuning.run import TuneRequest, run_tuning

    request = TuneRequest(graph_or_engine, parse_duration(duration), sampler, steps, cfg_scale, faithful_db, fast_db,
                          accuracy_points, parse_pairs(pairs), population, batch, threads, seed, out, work_dir, fresh)
    report = run_tuning(request, echo=lambda line: click.echo(line, err=True))
    click.echo(json.dumps(report["summary"], indent=1) if report.get("json") else report["table"])


def main(argv=None) -> None:
    """dit-tune's console entry point."""
    from runtime.cli import run_command

    run_command(tune, argv, "dit-tune", "interrupted; the measurements so far are kept: run again to resume")


if __name__ == "__main__":
    main()
