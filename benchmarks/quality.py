"""The yardstick: how good the shipped Fashion-MNIST DiT's pictures are under each setting, and how fast.

    python benchmarks/quality.py [--per-class 100] [--settings NAME,NAME] [--json PATH] [--plot PATH]

Per setting (backend, graph precision, backend options, sampler and steps, cfg scale, generate()
options) it generates the same balanced labels (per_class of each class, class-major) from the same
seed with per-sample seeding, so sample i starts from the same noise and draws the same step noise
in every setting, whatever the batch. The samples are scored with the fashion model's judge, the
shipped classifier (runtime.tuning.judge): class accuracy (the share assigned to the requested class) and
the Fréchet distance of its 128-d features against the test set's (lower is better; it grows as the
sample count falls, so compare rows of equal n only), each with a 95% bootstrap interval
(runtime.tuning.bootstrap), plus seconds per image measured in the same run, and each row's paired
fidelity: PSNR and SSIM of its pictures against those of the same seed and label in the row the
reference rule picks (benchmarks/paired.py: its plain self, or the converged ODE solution; references
the run lacks are added), which tells apart settings the population metrics call equal. Rows are paired
only when they run on the same device (the noise generators live there).

A setting is one line in SETTINGS; options it gives to generate() or load_denoiser() need no code here.
"""

import json
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path

import click
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from a checkout

from dit_ref.errors import DiTError  # noqa: E402

MODEL = "fashion"
NUM_CLASSES = 10
RESAMPLES = 2000  # bootstrap resamples per metric: bounds stable to ~0.1 point / ~0.1 FD; ~5 s of FD per row
BOOTSTRAP_SEED = 0  # one seed for every row's resamples: intervals are reproducible and rows resampled alike
SPEED_NOTE = "s/image is wall time on this machine in this run: compare it between rows of one run only"


@dataclass(frozen=True)
class Setting:
    """One row of the yardstick: everything that decides how the samples are made."""

    name: str  # short and stable: --settings picks it, the JSON and the plot carry it
    backend: str  # a runtime.backends.BACKENDS name: "torch" (the float32 reference), "onnxruntime", ...
    precision: str  # the graph's ("fp32", "fp16"); the torch backend's compute type, set by load_options
    sampler: str  # a runtime.sampling.sampler_from_name name
    steps: int
    cfg_scale: float
    load_options: dict = field(default_factory=dict)  # load_denoiser(**), e.g. {"dtype": "bfloat16"}
    options: dict = field(default_factory=dict)  # runtime.generate.generate(**), e.g. a guidance interval


# The FP32 reference and the paths deployed before the precision, guidance-interval and cached-steps work
# (ONNX Runtime on the FP16 graph: the demo; on the FP32 graph at DDIM 50), then every precision, interval
# and cache policy on the frontier. Names: backend[-precision]-<sampler><steps>[-cfg<scale> when not 4]
# [-gi<LO>-<HI>][-<cache policy>]. OpenVINO computes in float32 unless a setting says bf16compute.
BF16_COMPUTE = {"dtype": "bfloat16"}  # OpenVINO's own bfloat16 compute (its default on a CPU with bf16 units)
PAPER_INTERVAL = "82:468"  # Kynkaenniemi et al. 2024's EDM2 interval sigma (0.28, 2.9] on DiT's schedule
RECOMMENDED_INTERVAL = "0:600"  # the best interval of the shipped model's frontier (docs/sampling.md)


def row(name, backend, precision, sampler, steps, cfg=4.0, load=None, **options) -> Setting:
    return Setting(name, backend, precision, sampler, steps, cfg, load or {}, options)


SETTINGS = {setting.name: setting for setting in (
    row("torch-ddpm250", "torch", "fp32", "ddpm", 250),
    row("onnxruntime-ddpm250", "onnxruntime", "fp32", "ddpm", 250),
    row("onnxruntime-fp16-ddpm250-cfg1", "onnxruntime", "fp16", "ddpm", 250, 1.0),
    row("onnxruntime-fp16-ddpm250-cfg1.5", "onnxruntime", "fp16", "ddpm", 250, 1.5),
    row("onnxruntime-fp16-ddpm250", "onnxruntime", "fp16", "ddpm", 250),
    row("onnxruntime-fp16-ddpm50", "onnxruntime", "fp16", "ddpm", 50),
    row("onnxruntime-fp16-ddim50", "onnxruntime", "fp16", "ddim", 50),
    row("onnxruntime-fp16-ddim25", "onnxruntime", "fp16", "ddim", 25),
    row("onnxruntime-fp16-ddim25-cfg1.5", "onnxruntime", "fp16", "ddim", 25, 1.5),
    row("onnxruntime-fp16-dpm++20", "onnxruntime", "fp16", "dpm++", 20),
    # precisions
    row("onnxruntime-ddim50", "onnxruntime", "fp32", "ddim", 50),
    row("openvino-ddpm250", "openvino", "fp32", "ddpm", 250),
    row("openvino-ddim50", "openvino", "fp32", "ddim", 50),
    row("openvino-fp16-ddpm250", "openvino", "fp16", "ddpm", 250),
    row("openvino-fp16-ddim50", "openvino", "fp16", "ddim", 50),
    row("openvino-bf16-ddpm250", "openvino", "bf16", "ddpm", 250),
    row("openvino-bf16-ddim50", "openvino", "bf16", "ddim", 50),
    row("openvino-bf16compute-ddpm250", "openvino", "fp32", "ddpm", 250, load=BF16_COMPUTE),
    row("openvino-bf16compute-ddim50", "openvino", "fp32", "ddim", 50, load=BF16_COMPUTE),
    row("onnxruntime-int8-ddim50", "onnxruntime", "int8", "ddim", 50),
    row("openvino-int8-ddim50", "openvino", "int8", "ddim", 50),
    row("onnxruntime-fp8-ddim50", "onnxruntime", "fp8", "ddim", 50),
    # guidance intervals (timesteps LO:HI guided; docs/sampling.md)
    row("openvino-ddpm250-gi82-468", "openvino", "fp32", "ddpm", 250, guidance_interval=PAPER_INTERVAL),
    row("openvino-ddim50-gi82-468", "openvino", "fp32", "ddim", 50, guidance_interval=PAPER_INTERVAL),
    row("openvino-ddpm250-gi0-600", "openvino", "fp32", "ddpm", 250, guidance_interval=RECOMMENDED_INTERVAL),
    row("openvino-ddim50-gi0-600", "openvino", "fp32", "ddim", 50, guidance_interval=RECOMMENDED_INTERVAL),
    row("openvino-ddim50-gi200-800", "openvino", "fp32", "ddim", 50, guidance_interval="200:800"),
    row("openvino-ddim50-gi400-999", "openvino", "fp32", "ddim", 50, guidance_interval="400:999"),
    # cached steps
    row("openvino-ddpm250-fora3", "openvino", "fp32", "ddpm", 250, cache="fora:3"),
    row("openvino-ddim50-fora2", "openvino", "fp32", "ddim", 50, cache="fora:2"),
    row("openvino-ddim50-fora3", "openvino", "fp32", "ddim", 50, cache="fora:3"),
    row("openvino-ddim50-fora4", "openvino", "fp32", "ddim", 50, cache="fora:4"),
    row("openvino-ddim50-forecast3-2", "openvino", "fp32", "ddim", 50, cache="forecast:3:2"),
    row("openvino-dpm++20", "openvino", "fp32", "dpm++", 20),
    row("openvino-dpm++20-fora2", "openvino", "fp32", "dpm++", 20, cache="fora:2"),
    row("openvino-dpm++20-forecast3-2", "openvino", "fp32", "dpm++", 20, cache="forecast:3:2"),
    # everything at once: the fastest precision that holds accuracy, the paper's interval, a cache policy
    row("openvino-bf16-ddim50-gi82-468-fora3", "openvino", "bf16", "ddim", 50, guidance_interval=PAPER_INTERVAL,
        cache="fora:3"),
    row("openvino-bf16-ddpm250-gi82-468-fora3", "openvino", "bf16", "ddpm", 250, guidance_interval=PAPER_INTERVAL,
        cache="fora:3"),
    row("openvino-bf16compute-ddim50-fora3", "openvino", "fp32", "ddim", 50, load=BF16_COMPUTE, cache="fora:3"),
    row("openvino-bf16compute-ddim50-gi0-600-fora3", "openvino", "fp32", "ddim", 50, load=BF16_COMPUTE,
        guidance_interval=RECOMMENDED_INTERVAL, cache="fora:3"),
    row("openvino-bf16compute-ddpm250-gi0-600-fora3", "openvino", "fp32", "ddpm", 250, load=BF16_COMPUTE,
        guidance_interval=RECOMMENDED_INTERVAL, cache="fora:3"),
)}

# generate() arguments a setting may not override: they are what makes the rows comparable.
FIXED_BY_THE_RUN = ("denoiser", "labels", "sampler", "seed", "seeding", "cfg_scale", "decoder", "first_index",
                    "on_step")


def select_settings(names: str | None) -> list["Setting"]:
    """The settings named in a comma-separated list (all of SETTINGS for None), in the list's order."""
    if not names:
        return list(SETTINGS.values())
    chosen = [name.strip() for name in names.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in SETTINGS]
    if unknown or not chosen:
        raise DiTError(f"unknown setting {', '.join(unknown) or repr(names)}; choose from {', '.join(SETTINGS)} "
                       f"(--list-settings shows them)")
    return [SETTINGS[name] for name in dict.fromkeys(chosen)]


def check_setting(setting: Setting) -> None:
    """DiTError saying what is wrong with a setting, before anything is exported or sampled."""
    from runtime.backends import BACKENDS
    from runtime.options import OPTIONS
    from runtime.sampling import sampler_from_name

    if setting.backend not in BACKENDS:
        raise DiTError(f"setting {setting.name}: unknown backend {setting.backend!r}; "
                       f"choose from {', '.join(BACKENDS)}")
    foreign = sorted(set(setting.load_options) - set(BACKENDS[setting.backend].options))
    if foreign:
        raise DiTError(f"setting {setting.name}: the {setting.backend} backend takes no option {foreign[0]!r} "
                       f"(it takes {', '.join(BACKENDS[setting.backend].options)})")
    fixed = sorted(set(setting.options) & set(FIXED_BY_THE_RUN))
    if fixed:
        raise DiTError(f"setting {setting.name}: {fixed[0]!r} is fixed by the run for every row; drop it from options")
    unknown = sorted(set(setting.options) - set(OPTIONS))  # the request options (runtime.options)
    if unknown:
        raise DiTError(f"setting {setting.name}: runtime.generate.generate() takes no option {unknown[0]!r}")
    sampler_from_name(setting.sampler, setting.steps)  # DiTError for an unknown sampler or a bad step count


def balanced_labels(per_class: int) -> list[int]:
    """per_class samples of each class, class-major: [0]*n + [1]*n + ..."""
    return [label for label in range(NUM_CLASSES) for _ in range(per_class)]


def sample(denoiser, labels: list[int], sampler, cfg_scale: float, seed: int = 0,
           options: dict | None = None) -> tuple[np.ndarray, float]:
    """(samples (N, 1, 28, 28) float32 pixels, wall seconds) of labels, seeded per sample."""
    from runtime.generate import generate

    start = time.perf_counter()
    batches = list(generate(denoiser, labels, sampler, seed=seed, cfg_scale=cfg_scale, seeding="per-sample",
                            decoder=None, **(options or {})))
    seconds = time.perf_counter() - start
    return np.concatenate([batch.samples for batch in batches]), seconds  # a pixel model: latents are pixels


def score_samples(samples: np.ndarray, labels, resamples: int | None = RESAMPLES, judge=None) -> dict:
    """Class accuracy and Fréchet distance to the test set by the fashion model's judge (runtime.tuning.judge),
    each with its 95% bootstrap interval (resamples None: the estimates alone, for a caller that needs no
    interval; the Fréchet one costs ~2.5 ms a resample)."""
    from runtime.tuning.judge import fashion_judge, score

    return score(fashion_judge() if judge is None else judge, samples, labels, resamples, BOOTSTRAP_SEED)


def sample_and_score(denoiser, labels: list[int], sampler, cfg_scale: float, seed: int = 0,
                     options: dict | None = None, resamples: int | None = RESAMPLES, judge=None) -> dict:
    """Generate labels' samples (seeded per sample) and score them: accuracy, Fréchet distance, s/image."""
    samples, seconds = sample(denoiser, labels, sampler, cfg_scale, seed, options)
    return {**score_samples(samples, labels, resamples, judge), "seconds_per_image": seconds / len(labels)}


def artifact(setting: Setting, work_dir: Path) -> Path | None:
    """The graph (or engine) the setting runs, exported once into work_dir; None for the torch reference."""
    from export import export

    if setting.backend == "torch":
        return None
    graph = work_dir / f"{MODEL}-28-{setting.precision}.onnx"
    wanted = graph.with_suffix(".plan") if setting.backend == "tensorrt" else graph
    if not wanted.exists():
        engine = "required" if setting.backend == "tensorrt" else "skip"
        cached_steps = setting.precision in ("fp32", "fp16", "bf16")  # the cache rows need the pair beside it
        result = export(MODEL, ckpt="auto", precision=setting.precision, out=work_dir, engine=engine,
                        cached_steps=cached_steps)
        wanted = result.engine if setting.backend == "tensorrt" else result.graph
    return wanted


def load_for(setting: Setting, path: Path | None, threads: int | None, device: str):
    """The setting's denoiser on device; its load_options go to load_denoiser as they are."""
    from runtime.backends import load_denoiser

    options = {"device": device, "threads": threads, **setting.load_options}
    if path is None:
        return load_denoiser(None, setting.backend, model=MODEL, **{"ckpt": "auto", **options})
    return load_denoiser(path, setting.backend, **options)


def run(settings: list[Setting], per_class: int, seed: int = 0, work_dir: Path = Path("."),
        threads: int | None = None, device: str = "cpu", resamples: int = RESAMPLES, echo=print,
        converged="auto") -> list[dict]:
    """One row per setting, and per reference the paired rule needs that the settings lack (benchmarks/paired.py,
    sampled first): the setting, n, both metrics with their intervals, seconds per image, the paired fidelity."""
    import torch

    from benchmarks.paired import paired_scores, with_references
    from runtime.sampling import sampler_from_name
    from runtime.tuning.judge import fashion_judge
    from runtime.vae import pixels_from_images

    for setting in settings:
        check_setting(setting)
    ordered, references = with_references(settings, list(SETTINGS.values()), converged)
    paths = {setting.name: artifact(setting, work_dir) for setting in ordered}
    labels, judge, rows, images = balanced_labels(per_class), fashion_judge(), [], {}
    for setting in ordered:
        echo(f"sampling {len(labels)} images: {setting.name} ...")
        with load_for(setting, paths[setting.name], threads, device) as denoiser:
            samples, seconds = sample(denoiser, labels, sampler_from_name(setting.sampler, setting.steps),
                                      setting.cfg_scale, seed, setting.options)
        images[setting.name] = pixels_from_images(torch.from_numpy(samples))  # uint8 (N, 28, 28, 1), as dit-run's
        rows.append({**asdict(setting), **score_samples(samples, labels, resamples, judge),
                     "seconds_per_image": seconds / len(labels), "added_as_reference": setting not in settings,
                     "paired": paired_scores(images, setting.name, references, resamples, BOOTSTRAP_SEED)})
        echo(table_line(rows[-1]))
    return rows


def package_versions() -> dict:
    """Versions of what made and scored the samples (None for a package that is not installed)."""
    from dit_ref.machine.gpu_stack import versions

    return versions("dit-deploy", "torch", "onnxruntime", "openvino", "numpy")


def record(rows: list[dict], per_class: int, seed: int, resamples: int, threads: int | None, device: str) -> dict:
    """The JSON record of a run: every row, and the machine, date and versions it was measured with."""
    from benchmarks.paired import METHOD
    from dit_ref.machine.cpu import cpu_summary

    return {"benchmark": "quality (the yardstick)", "date": str(date.today()), "machine": cpu_summary(),
            "device": device, "threads": threads, "versions": package_versions(), "model": MODEL,
            "per_class": per_class, "seed": seed, "seeding": "per-sample",
            "bootstrap": {"resamples": resamples, "seed": BOOTSTRAP_SEED, "level": 0.95,
                          "accuracy": "percentile", "frechet_distance": "percentile, bias-corrected"},
            "paired": METHOD, "note": SPEED_NOTE, "rows": rows}


def options_text(row: dict) -> str:
    """A row's load and generate options as "key=value, ...", or "-"."""
    options = {**row.get("load_options", {}), **row.get("options", {})}
    return ", ".join(f"{key}={value}" for key, value in options.items()) or "-"


HEADER = ["| setting | backend | precision | sampler | steps | cfg | options | n | class accuracy [95%] | "
          "Fréchet distance [95%] | s/image | paired reference | PSNR dB [95%], p10 | SSIM [95%], p10 |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]


def table_line(row: dict) -> str:
    """One row of the Markdown table: "91.5% [89.6, 93.3]", "50.8 [47.1, 54.9]", then the paired fidelity
    against the row's reference ("-" for a row without one)."""
    from benchmarks.paired import paired_cells

    accuracy_low, accuracy_high = (100 * bound for bound in row["class_accuracy_interval"])
    distance_low, distance_high = row["frechet_distance_interval"]
    return (f"| {row['name']} | {row['backend']} | {row['precision'].upper()} | {row['sampler']} | {row['steps']} | "
            f"{row['cfg_scale']:g} | {options_text(row)} | {row['n']} | "
            f"{100 * row['class_accuracy']:.1f}% [{accuracy_low:.1f}, {accuracy_high:.1f}] | "
            f"{row['frechet_distance']:.1f} [{distance_low:.1f}, {distance_high:.1f}] | "
            f"{row['seconds_per_image']:.3f} | {' | '.join(paired_cells(row))} |")


def table(rows: list[dict]) -> str:
    """A Markdown table, one row per setting."""
    return "\n".join([*HEADER, *map(table_line, rows)])


def profile_settings(path: Path) -> list[Setting]:
    """A row per named point of a dit-tune profile (runtime.profile), named profile-<point>; its graphs are those
    beside the profile."""
    from dit_ref.contract import read_manifest
    from runtime.profile import read_profile

    profile = read_profile(path)
    rows = []
    for name in profile.record["points"]:
        point = profile.point(name)
        precision = read_manifest(profile.graph_path(point)).precision
        options = {key: value for key in ("guidance_interval", "cache") if (value := point.request[key]) is not None}
        rows.append(row(f"profile-{name}", point.backend, precision, point.request["sampler"], point.request["steps"],
                        profile.record.get("tuned_at", {}).get("cfg_scale", 4.0), point.load, **options))
    return rows


def parse_converged(text: str):
    """"ddim:1000" -> ("ddim", 1000); "none" -> None (plain rows get no paired reference); "auto" as it is."""
    if text in ("auto", "none"):
        return None if text == "none" else text
    sampler, _, steps = text.partition(":")
    if not steps.isdigit():
        raise DiTError(f"--converged {text!r}: give SAMPLER:STEPS (e.g. ddim:1000) or none")
    return sampler, int(steps)


def settings_list() -> str:
    """Every setting's name and what it is, one per line."""
    return "\n".join(f"{s.name:34s} {s.backend} {s.precision}, {s.sampler} {s.steps}, cfg {s.cfg_scale:g}"
                     + (f", {options_text(asdict(s))}" if s.load_options or s.options else "")
                     for s in SETTINGS.values())


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--per-class", default=100, show_default=True, type=click.IntRange(min=1),
              help="Samples per class (10 classes): 100 gives the yardstick's 1,000 per row; fewer for a quick look.")
@click.option("--settings", "names", metavar="NAME,NAME", help="Run only these settings (default: all; see --list-settings).")
@click.option("--list-settings", is_flag=True, help="Print the settings' names and exit.")
@click.option("--seed", default=0, show_default=True, help="The run's seed; sample i is seeded by (seed, i).")
@click.option("--resamples", default=RESAMPLES, show_default=True, type=click.IntRange(min=100),
              help="Bootstrap resamples per metric for the 95% intervals.")
@click.option("--threads", type=int, help="CPU threads (default: physical cores).")
@click.option("--device", default="cpu", show_default=True, help="Device of every denoiser (rows pair up on one device).")
@click.option("--work-dir", type=click.Path(path_type=Path), default=Path.home() / ".cache/dit-deploy/quality",
              show_default=True, help="Where the graphs are exported once.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Also write the run's record as JSON.")
@click.option("--plot", "plot_path", type=click.Path(path_type=Path), help="Also draw the speed-quality frontier (PNG).")
@click.option("--profile", "profile_path", type=click.Path(exists=True, path_type=Path),
              help="Also a row per named point of this dit-tune profile (its graphs beside it: the work dir).")
@click.option("--converged", default="auto", show_default=True, metavar="SAMPLER:STEPS|auto|none",
              help="The converged ODE solution plain deterministic rows are paired with (auto: DDIM 1000, "
              "runtime.tuning.reference); none: no paired reference for them.")
def main(per_class, names, list_settings, seed, resamples, threads, device, work_dir, json_path, plot_path,
         profile_path, converged):
    """The yardstick: class accuracy and Fréchet distance (95% bootstrap intervals) and seconds per image of
    the shipped Fashion-MNIST DiT under each setting, printed as a Markdown table."""
    if list_settings:
        click.echo(settings_list())
        return
    try:
        settings = select_settings(names)
        if profile_path is not None:
            settings, work_dir = settings + profile_settings(profile_path), profile_path.parent
        work_dir.mkdir(parents=True, exist_ok=True)
        rows = run(settings, per_class, seed, work_dir, threads, device, resamples,
                   echo=lambda line: click.echo(line, err=True), converged=parse_converged(converged))
        report = record(rows, per_class, seed, resamples, threads, device)
        write_outputs(report, json_path, plot_path)
    except DiTError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(1)
    click.echo(f"{report['machine']}, {report['date']}, {10 * per_class} samples per row, seed {seed}, "
               f"95% bootstrap intervals ({resamples} resamples). {SPEED_NOTE}.\n")
    click.echo(table(rows))


def write_outputs(report: dict, json_path: Path | None, plot_path: Path | None) -> None:
    """The JSON record and the frontier plot, each written atomically where a path was given."""
    if json_path:
        from dit_ref.files import write_text_atomic

        write_text_atomic(json_path, json.dumps(report, indent=1, default=repr) + "\n")
        click.echo(f"wrote {json_path}", err=True)
    if plot_path:
        from benchmarks.frontier import plot_frontier

        plot_frontier(report, plot_path)
        click.echo(f"wrote {plot_path}", err=True)


if __name__ == "__main__":
    main()
