"""Calibrated cache schedules against FORA at equal cost: paired fidelity to the uncached pictures, and speed.

    python benchmarks/calibrated_cache.py GRAPH.onnx [--sampler ddim --steps 50] [--pairs 128] [--json PATH]

For each FORA period N (2, 3, 4) the calibrated schedule (runtime/tuning/schedule.py) refreshes as many calls as
fora:N does, chosen from the model's own feature changes on calibration trajectories (seeds apart from the pairs');
both run the same pairs (label i mod the class count, per-sample seed (seed, i)) and are compared, pair by pair,
with the same sampler uncached: mean PSNR and SSIM with 95% bootstrap intervals and the 10th percentile, and
seconds per image in the same run. The graph needs its cached-steps pair (dit-export --cached-steps).
"""

import json
import sys
import time
from pathlib import Path

import click
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from a checkout

from dit_ref.errors import DiTError  # noqa: E402

PERIODS = (2, 3, 4)
CALIBRATION_SAMPLES = 4


def sample(denoiser, n: int, sampler, seed: int, cache: str | None) -> tuple[np.ndarray, float]:
    """(samples (n, C, L, L), seconds per image) of pairs 0..n-1."""
    from runtime.generate import generate

    labels = [i % denoiser.provenance.num_classes for i in range(n)]
    start = time.perf_counter()
    batches = list(generate(denoiser, labels, sampler, seed=seed, seeding="per-sample", cache=cache,
                            batch_size=min(16, n)))
    return np.concatenate([batch.samples for batch in batches]), (time.perf_counter() - start) / n


def pictures(samples: np.ndarray, pixels: bool) -> np.ndarray:
    from runtime.vae import pixels_from_images

    return pixels_from_images(torch.from_numpy(samples)) if pixels else samples


def compare(candidate: np.ndarray, reference: np.ndarray, pixels: bool) -> dict:
    from runtime.tuning import fidelity

    pairs = (fidelity.image_pairs if pixels else fidelity.latent_pairs)(pictures(candidate, pixels),
                                                                       pictures(reference, pixels))
    return fidelity.summarise(pairs)


def run(graph: Path, sampler_name: str, steps: int, pairs: int, seed: int, threads: int | None, echo) -> dict:
    from dit_ref.machine.cpu import cpu_summary
    from runtime.backends import load_denoiser
    from runtime.caching import parse_cache, refreshed_calls
    from runtime.sampling import sampler_from_name
    from runtime.tuning import schedule

    sampler = sampler_from_name(sampler_name, steps)
    rows = []
    with load_denoiser(graph, threads=threads) as denoiser:
        pixels = denoiser.provenance.decoder == "pixels"
        labels = [i % denoiser.provenance.num_classes for i in range(CALIBRATION_SAMPLES)]
        changes = schedule.feature_changes(denoiser, sampler, labels, seed + 1)
        plain, plain_seconds = sample(denoiser, pairs, sampler, seed, None)
        echo(f"uncached {sampler_name} {steps}: {plain_seconds:.4f} s/image")
        for period in PERIODS:
            fora = f"fora:{period}"
            count = sum(refreshed_calls(parse_cache(fora), sampler.timesteps))
            calibrated = "refresh:" + ",".join(map(str, schedule.schedule_for(changes, count)))
            for policy in (fora, calibrated):
                samples, seconds = sample(denoiser, pairs, sampler, seed, policy)
                scores = compare(samples, plain, pixels)
                rows.append({"policy": policy, "period": period, "refreshes": count, "seconds_per_image": seconds,
                             "speedup": plain_seconds / seconds, **scores})
                echo(f"  {policy}: {count} refreshes, {seconds:.4f} s/image, PSNR {scores['psnr']['mean']:.1f} "
                     f"[{scores['psnr']['interval'][0]:.1f}, {scores['psnr']['interval'][1]:.1f}] dB")
        backend = denoiser.name
    return {"benchmark": "calibrated cache schedules against FORA at equal refreshes", "graph": graph.name,
            "backend": backend, "machine": cpu_summary(), "date": time.strftime("%Y-%m-%d"), "sampler": sampler_name,
            "steps": steps, "pairs": pairs, "seed": seed, "uncached_seconds_per_image": plain_seconds,
            "feature_changes": np.nan_to_num(changes, nan=-1.0).tolist(), "rows": rows}


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("graph", type=click.Path(exists=True, path_type=Path))
@click.option("--sampler", "sampler_name", default="ddim", show_default=True)
@click.option("--steps", default=50, show_default=True)
@click.option("--pairs", default=128, show_default=True, type=click.IntRange(min=4))
@click.option("--seed", default=0, show_default=True)
@click.option("--threads", type=int, help="CPU threads (default: physical cores).")
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Also write the record as JSON.")
def main(graph, sampler_name, steps, pairs, seed, threads, json_path):
    """Calibrated cache schedules against FORA at equal refresh counts: paired fidelity and speed."""
    try:
        record = run(graph, sampler_name, steps, pairs, seed, threads, lambda line: click.echo(line, err=True))
    except DiTError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(1)
    if json_path:
        from dit_ref.files import write_text_atomic

        write_text_atomic(json_path, json.dumps(record, indent=1) + "\n")
    click.echo(f"{record['machine']}, {record['date']}, {record['backend']}, {sampler_name} {steps}, {pairs} pairs")
    click.echo("| policy | refreshes | s/image | speed-up | PSNR dB [95%] (p10) | SSIM [95%] |\n|---|---|---|---|---|---|")
    for row in record["rows"]:
        psnr, ssim = row["psnr"], row["ssim"]
        click.echo(f"| {row['policy']} | {row['refreshes']} | {row['seconds_per_image']:.4f} | {row['speedup']:.2f}x | "
                   f"{psnr['mean']:.1f} [{psnr['interval'][0]:.1f}, {psnr['interval'][1]:.1f}] ({psnr['p10']:.1f}) | "
                   f"{ssim['mean']:.3f} [{ssim['interval'][0]:.3f}, {ssim['interval'][1]:.3f}] |")


if __name__ == "__main__":
    main()
