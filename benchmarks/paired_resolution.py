"""Paired fidelity on the shipped fashion model: how converged a many-step ODE solution is, and how many pairs
tell apart settings 3 dB apart.

    python benchmarks/paired_resolution.py --work-dir /tmp/graphs --json paired-resolution.json
    python benchmarks/paired_resolution.py --model S/2 --convergence ddim:100,250 dpm++:25,50,100,250 \
        --convergence-pairs 2 --work-dir /tmp/graphs --json paired-convergence-s2.json   # convergence only

Every setting samples the same class-cyclic labels (label i % 10, so any first k are balanced) from one seed
with per-sample seeding, so sample i of every setting starts from the same noise (runtime.tuning.fidelity).

Convergence: DDIM, DPM++ and UniPC at many steps (FP32, OpenVINO), each against the next finer one of its
family and against the finest DDIM; a solution is converged when refining it moves the pictures far less
than the settings compared do. Both forms of the pictures are compared: the uint8 images (range 255, what
dit-run writes) and the float pixels before rounding (this pixel model's latents, each pair with its
reference's range), which see differences below one grey level. Another model (--model, random weights)
gets the convergence part alone, on its latents.

Resolution: the settings of docs/benchmarks.md's paired table against DDIM 50 FP32: per-pair spread of PSNR, and at k pairs (random
subsets of the pairs) the median width of the 95% bootstrap interval of the mean, and how often two
settings about 3 dB apart have intervals apart.
"""

import itertools
import json
import sys
import time
from datetime import date
from pathlib import Path

import click
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from a checkout

from benchmarks import quality, step_costs  # noqa: E402
from benchmarks.quality import row  # noqa: E402

CONVERGENCE = ("ddim:100,250,500,1000", "dpm++:50,100,250,500,1000", "unipc:50,100,250")
REFERENCE = row("openvino-ddim50", "openvino", "fp32", "ddim", 50)
CANDIDATES = (
    row("openvino-ddim100", "openvino", "fp32", "ddim", 100),
    row("openvino-ddim50-forecast3-2", "openvino", "fp32", "ddim", 50, cache="forecast:3:2"),
    row("openvino-bf16-ddim50", "openvino", "bf16", "ddim", 50),
    row("openvino-ddim25", "openvino", "fp32", "ddim", 25),
    row("openvino-ddim50-fora2", "openvino", "fp32", "ddim", 50, cache="fora:2"),
    row("openvino-dpm++20", "openvino", "fp32", "dpm++", 20),
    row("openvino-ddim50-fora3", "openvino", "fp32", "ddim", 50, cache="fora:3"),
    row("openvino-ddim50-fora4", "openvino", "fp32", "ddim", 50, cache="fora:4"),
)
PAIR_COUNTS = (16, 32, 64, 128, 256)
SUBSETS = 200  # random subsets of k pairs per count: the median width and the share resolved settle to ~2%
RESAMPLES = 1000  # bootstrap resamples per interval
APART_DB = (2.0, 4.0)  # settings whose mean PSNRs differ by this much count as "about 3 dB apart"


def parse_convergence(families) -> dict[str, tuple[int, ...]]:
    """("ddim:100,250", ...) -> {"ddim": (100, 250), ...}: each sampler's step counts, coarse to fine."""
    parsed = {}
    for family in families:
        sampler, _, counts = family.partition(":")
        parsed[sampler] = tuple(sorted(int(steps) for steps in counts.split(",")))
    return parsed


def converged_settings(convergence: dict) -> list:
    """One FP32 OpenVINO setting per sampler and step count."""
    return [row(f"openvino-{sampler}{steps}", "openvino", "fp32", sampler, steps)
            for sampler, counts in convergence.items() for steps in counts]


def sample_all(settings, pairs: int, work_dir: Path, threads: int | None, echo, graph: Path | None = None):
    """({name: float samples (N, C, L, L)}, {name: seconds}) of each setting, labels i % 10; graph: the model's
    FP32 graph (None: the fashion model's, exported as the setting needs it)."""
    from runtime.sampling import sampler_from_name

    labels = [i % 10 for i in range(pairs)]
    samples, seconds = {}, {}
    for setting in settings:
        path = quality.artifact(setting, work_dir) if graph is None else graph
        with quality.load_for(setting, path, threads, "cpu") as denoiser:
            samples[setting.name], seconds[setting.name] = quality.sample(
                denoiser, labels, sampler_from_name(setting.sampler, setting.steps), setting.cfg_scale, 0,
                setting.options)
        echo(f"{setting.name}: {pairs} samples in {seconds[setting.name]:.1f} s")
    return samples, seconds


def pair_values(candidate: np.ndarray, reference: np.ndarray) -> dict:
    """{"image": {"psnr", "ssim"}, "float": {...}}: per-pair values of the uint8 images and of the float pixels."""
    import torch

    from runtime.tuning.fidelity import image_pairs, latent_pairs
    from runtime.vae import pixels_from_images

    def images(x):
        return pixels_from_images(torch.from_numpy(x))  # uint8 (N, 28, 28, 1), as dit-run writes them

    return {"image": image_pairs(images(candidate), images(reference)), "float": latent_pairs(candidate, reference)}


def latent_values(candidate: np.ndarray, reference: np.ndarray) -> dict:
    """{"latent": {"psnr", "ssim"}}: per-pair values of a latent model's latents (its random decoder says nothing)."""
    from runtime.tuning.fidelity import latent_pairs

    return {"latent": latent_pairs(candidate, reference)}


def summary_of(values: dict) -> dict:
    from runtime.tuning.fidelity import summarise

    return {form: summarise(pairs, RESAMPLES) for form, pairs in values.items()}


def convergence(samples: dict, families: dict, values=pair_values) -> list[dict]:
    """Each setting against the next finer of its family, and against the finest of every family."""
    finest = [f"openvino-{sampler}{counts[-1]}" for sampler, counts in families.items()]
    comparisons = []
    for sampler, counts in families.items():
        names = [f"openvino-{sampler}{steps}" for steps in counts]
        comparisons += list(zip(names[:-1], names[1:])) + [(name, last) for last in finest for name in names
                                                           if name != last]
    return [{"candidate": a, "reference": b, **summary_of(values(samples[a], samples[b]))}
            for a, b in dict.fromkeys(comparisons)]


def interval_widths(values: np.ndarray, k: int, subsets: np.ndarray) -> np.ndarray:
    """(S,) width of the 95% bootstrap interval of the mean over each subset (S, k) of values."""
    from runtime.tuning.bootstrap import mean_interval

    return np.array([np.subtract(*mean_interval(values[rows], RESAMPLES, seed)[::-1])
                     for seed, rows in enumerate(subsets[:, :k])])


def resolution(psnr: dict[str, np.ndarray], pairs: int) -> dict:
    """Per setting: spread and interval widths at each k; per pair of settings about 3 dB apart, the share of
    subsets where their intervals lie apart, and where the interval of their per-pair difference excludes 0
    (the same seeds: a paired comparison)."""
    from runtime.tuning.bootstrap import mean_interval

    counts = [k for k in PAIR_COUNTS if k <= pairs]
    rng = np.random.default_rng(0)
    subsets = np.stack([rng.permutation(pairs) for _ in range(SUBSETS)])  # (S, pairs): the first k of each row
    settings = {name: {"mean": float(v.mean()), "sd": float(v.std(ddof=1)), "p10": float(np.percentile(v, 10)),
                       "median_width": {k: float(np.median(interval_widths(v, k, subsets))) for k in counts}}
                for name, v in psnr.items()}
    apart = []
    for a, b in itertools.combinations(psnr, 2):
        gap = abs(settings[a]["mean"] - settings[b]["mean"])
        if not APART_DB[0] <= gap <= APART_DB[1]:
            continue
        separate, different = {}, {}
        for k in counts:
            rows = subsets[:, :k]
            intervals = [[mean_interval(psnr[name][r], RESAMPLES, seed) for seed, r in enumerate(rows)]
                         for name in (a, b)]
            separate[k] = float(np.mean([ha < lb or hb < la for (la, ha), (lb, hb) in zip(*intervals)]))
            differences = [mean_interval(psnr[a][r] - psnr[b][r], RESAMPLES, seed) for seed, r in enumerate(rows)]
            different[k] = float(np.mean([low > 0 or high < 0 for low, high in differences]))
        apart.append({"settings": [a, b], "gap_db": gap, "sd_of_difference": float(np.std(psnr[a] - psnr[b], ddof=1)),
                      "share_intervals_apart": separate, "share_difference_excludes_0": different})
    return {"settings": settings, "about_3_db_apart": apart}


def cpu_record() -> dict:
    """lscpu's model name and the instruction-set flags that decide speed, and that the machine was shared."""
    from dit_ref.machine.cpu import cpu_flags, cpu_model, cpu_summary, physical_cores

    wanted = sorted(flag for flag in cpu_flags() if flag.startswith(("avx", "amx")) or flag in ("fma", "f16c"))
    return {"summary": cpu_summary(), "model_name": cpu_model(), "physical_cores": physical_cores(),
            "flags": wanted, "bf16_units": any("bf16" in flag for flag in wanted),
            "shared": "the 2 cores were shared with other jobs: timings are indicative only"}


@click.command()
@click.option("--model", default=quality.MODEL, show_default=True,
              help="fashion (both parts), or a DiT config name with random weights (convergence on its latents).")
@click.option("--pairs", default=256, show_default=True, help="Samples per setting (the resolution's largest k).")
@click.option("--convergence", "families", multiple=True, default=CONVERGENCE, show_default=True,
              metavar="SAMPLER:STEPS,STEPS", help="A sampler's step counts to converge (repeatable).")
@click.option("--convergence-pairs", default=128, show_default=True, help="Samples per convergence setting.")
@click.option("--skip", default="", metavar="NAME,NAME", help="Candidates to leave out (e.g. a slow emulated one).")
@click.option("--threads", type=int, help="CPU threads (default: physical cores).")
@click.option("--work-dir", type=click.Path(path_type=Path), required=True, help="Where the graphs are exported.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), required=True, help="Write the record here.")
def main(model, pairs, families, convergence_pairs, skip, threads, work_dir, json_path):
    """Convergence of many-step references and the resolution of paired PSNR, on the shipped fashion model."""
    from dit_ref.files import write_text_atomic

    echo = lambda line: click.echo(line, err=True)  # noqa: E731
    work_dir.mkdir(parents=True, exist_ok=True)
    start, families = time.perf_counter(), parse_convergence(families)
    graph = None if model == quality.MODEL else step_costs.graphs(model, work_dir)  # random weights, FP32
    converged, converged_seconds = sample_all(converged_settings(families), convergence_pairs, work_dir, threads,
                                              echo, graph)
    record = {
        "benchmark": "paired fidelity: convergence of the reference and resolution", "date": str(date.today()),
        "machine": cpu_record(), "versions": quality.package_versions(), "model": model,
        "weights": "shipped" if graph is None else "random (seed 0)", "threads": threads,
        "seed": 0, "seeding": "per-sample", "labels": "i % 10", "cfg_scale": 4.0,
        "metrics": {"image": "uint8 images, range 255", "float": "float pixels before rounding, range per pair "
                    "(max - min of the reference sample)", "latent": "latents, range per pair",
                    "psnr_ceiling_db": 100.0, "bootstrap_resamples": RESAMPLES},
        "convergence": {"pairs": convergence_pairs, "seconds": converged_seconds,
                        "rows": convergence(converged, families, pair_values if graph is None else latent_values)},
    }
    if graph is None:
        record["resolution"] = resolution_record(pairs, skip, work_dir, threads, echo)
    record["wall_seconds"] = time.perf_counter() - start
    write_text_atomic(json_path, json.dumps(record, indent=1) + "\n")
    echo(f"wrote {json_path}")


def resolution_record(pairs: int, skip: str, work_dir: Path, threads: int | None, echo) -> dict:
    """The candidates against REFERENCE: summaries, and the resolution of image and float-pixel PSNR."""
    candidates = [REFERENCE, *(s for s in CANDIDATES if s.name not in skip.split(","))]
    samples, seconds = sample_all(candidates, pairs, work_dir, threads, echo)
    against = {s.name: pair_values(samples[s.name], samples[REFERENCE.name]) for s in candidates[1:]}
    return {"pairs": pairs, "reference": REFERENCE.name, "seconds": seconds, "subsets": SUBSETS,
            "against_reference": {name: summary_of(values) for name, values in against.items()},
            "image": resolution({n: v["image"]["psnr"] for n, v in against.items()}, pairs),
            "float": resolution({n: v["float"]["psnr"] for n, v in against.items()}, pairs)}


if __name__ == "__main__":
    main()
