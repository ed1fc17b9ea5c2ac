"""How good the pictures are: the shipped Fashion-MNIST DiT under every precision, sampler and guidance.

    python benchmarks/quality.py [--per-class 20] [--seed 0] [--json PATH]

Per setting (backend and precision, sampler and steps, cfg scale) it generates the same balanced
labels from the same seed with runtime.generate() and scores the samples with the shipped classifier
(benchmarks/fashion_classifier.py): class accuracy (the share assigned to the requested class) and
the Fréchet distance of the classifier's features against the test set's (lower is better; it
grows as the sample count falls, so compare rows of one run only), plus seconds per image on this
machine. Every row starts from the same initial noise, so rows differ only by the setting.
"""

import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import click
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from a checkout

from dit_ref.errors import DiTError  # noqa: E402

MODEL = "fashion"
NUM_CLASSES = 10


@dataclass(frozen=True)
class Setting:
    backend: str  # "torch" (the PyTorch float32 reference) or "onnxruntime"
    precision: str  # "fp32" or "fp16" (the graph's; the torch reference is float32)
    sampler: str
    steps: int
    cfg_scale: float

    @property
    def label(self) -> str:
        return f"{self.backend} {self.precision}, {self.sampler} {self.steps}, cfg {self.cfg_scale:g}"


# The deployed path (ONNX Runtime on the FP16 graph) under every sampler and guidance scale, and the
# FP32 graph and the PyTorch reference at sample.py's setting (DDPM 250, cfg 4) to compare against.
DEFAULT_SETTINGS = [
    Setting("torch", "fp32", "ddpm", 250, 4.0),
    Setting("onnxruntime", "fp32", "ddpm", 250, 4.0),
    *(Setting("onnxruntime", "fp16", "ddpm", 250, cfg) for cfg in (1.0, 1.5, 4.0)),
    Setting("onnxruntime", "fp16", "ddpm", 50, 4.0),
    *(Setting("onnxruntime", "fp16", "ddim", steps, 4.0) for steps in (50, 25)),
    Setting("onnxruntime", "fp16", "ddim", 25, 1.5),
    Setting("onnxruntime", "fp16", "dpm++", 20, 4.0),
]


def balanced_labels(per_class: int) -> list[int]:
    """per_class samples of each class, class-major: [0]*n + [1]*n + ..."""
    return [label for label in range(NUM_CLASSES) for _ in range(per_class)]


def sample_and_score(denoiser, labels: list[int], sampler, cfg_scale: float, seed: int = 0) -> dict:
    """Generate labels' samples (seeded) and score them: class accuracy, Fréchet distance, s/image."""
    from benchmarks.fashion_classifier import score
    from runtime.generate import generate

    start = time.perf_counter()
    batches = list(generate(denoiser, labels, sampler, seed=seed, cfg_scale=cfg_scale, decoder=None))
    seconds = time.perf_counter() - start
    samples = np.concatenate([batch.samples for batch in batches])  # (N, 1, 28, 28) float32 pixels in [-1, 1]
    return {**score(samples, np.asarray(labels)), "seconds_per_image": seconds / len(labels)}


def graphs(work_dir: Path) -> dict[str, Path]:
    """The shipped model's FP32 and FP16 graphs, exported once into work_dir."""
    from export import export

    found = {}
    for precision in ("fp32", "fp16"):
        path = work_dir / f"{MODEL}-28-{precision}.onnx"
        if not path.exists():
            path = export(MODEL, ckpt="auto", precision=precision, out=work_dir, engine="skip").graph
        found[precision] = path
    return found


def denoiser_for(setting: Setting, graph_paths: dict, threads: int | None):
    from runtime.backends import load_denoiser

    if setting.backend == "torch":
        return load_denoiser(None, "torch", model=MODEL, ckpt="auto", device="cpu", threads=threads)
    return load_denoiser(graph_paths[setting.precision], setting.backend, device="cpu", threads=threads)


def run(settings: list[Setting], per_class: int, seed: int, work_dir: Path, threads: int | None) -> list[dict]:
    from runtime.sampling import sampler_from_name

    graph_paths = graphs(work_dir)
    labels = balanced_labels(per_class)
    rows = []
    for setting in settings:
        click.echo(f"sampling {len(labels)} images: {setting.label} ...", err=True)
        with denoiser_for(setting, graph_paths, threads) as denoiser:
            scores = sample_and_score(denoiser, labels, sampler_from_name(setting.sampler, setting.steps),
                                      setting.cfg_scale, seed)
        rows.append({**asdict(setting), **scores})
    return rows


def table(rows: list[dict]) -> str:
    """A Markdown table, one row per setting."""
    lines = ["| backend | precision | sampler | steps | cfg | class accuracy | Fréchet distance | s/image |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['backend']} | {row['precision'].upper()} | {row['sampler']} | {row['steps']} | "
                     f"{row['cfg_scale']:g} | {100 * row['class_accuracy']:.1f}% | {row['frechet_distance']:.1f} | "
                     f"{row['seconds_per_image']:.3f} |")
    return "\n".join(lines)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--per-class", default=20, show_default=True, help="Samples per class (10 classes).")
@click.option("--seed", default=0, show_default=True)
@click.option("--threads", type=int, help="CPU threads (default: physical cores).")
@click.option("--work-dir", type=click.Path(path_type=Path), default=Path.home() / ".cache/dit-deploy/quality",
              show_default=True, help="Where the graphs are exported once.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Also write the rows as JSON.")
def main(per_class, seed, threads, work_dir, json_path):
    """Class accuracy and Fréchet distance of the shipped Fashion-MNIST DiT per precision, sampler and cfg."""
    try:
        work_dir.mkdir(parents=True, exist_ok=True)
        rows = run(DEFAULT_SETTINGS, per_class, seed, work_dir, threads)
    except DiTError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(1)
    click.echo(table(rows))
    if json_path:
        from dit_ref.files import write_text_atomic

        write_text_atomic(json_path, json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
