"""What a denoiser call costs by what it computes: guided rows (U of B) and cached steps (refresh, reuse).

    python benchmarks/step_costs.py [--model S/2,fashion] [--batch 8] [--backends onnxruntime,openvino]

Per model and backend, the median ms of one call at batch B with U = 0, B/2 and B rows guided (the
transformer over B + U rows), and of a cached-steps refresh (the guided forward that also gives every
block's features) and reuse (embeddings, adaLN, gates, residual sums, final layer) with every row
guided; the ratios say what guiding fewer rows and reusing features save. S/2 has random weights (speed
does not depend on them), fashion its shipped ones. CPU figures compare only within one run.
"""

import sys
import time
from pathlib import Path

import click
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from a checkout

from dit_ref.errors import DiTError  # noqa: E402
from dit_ref.machine.cpu import cpu_summary  # noqa: E402
from runtime.tuning.costs import median_ms  # noqa: E402


def graphs(model: str, work_dir: Path) -> Path:
    """The model's FP32 guided graph with its cached-steps pair, exported once into work_dir."""
    from export import export

    folder = work_dir / model.replace("/", "-")
    found = sorted(folder.glob("*-fp32.onnx")) if folder.is_dir() else []
    if found:
        return found[0]
    weights = {"ckpt": "auto"} if model == "fashion" else {"random_init": 0}
    return export(model, precision="fp32", out=folder, engine="skip", check=False, cached_steps=True, **weights).graph


def measure(model: str, backend: str, batch: int, repeats: int, threads: int | None, work_dir: Path) -> dict:
    from dit_ref.contract import read_manifest
    from runtime.backends import load_denoiser

    graph = graphs(model, work_dir)
    pair = read_manifest(graph).cached_steps
    guided, refresh, reuse = (load_denoiser(path, backend, threads=threads) for path in
                              (graph, graph.parent / pair["refresh"], graph.parent / pair["reuse"]))
    generator = torch.Generator().manual_seed(0)
    inputs = {"x": torch.randn(batch, *guided.latent_shape, generator=generator),
              "t": torch.full((batch,), 500), "y": torch.arange(batch) % guided.provenance.num_classes}
    row = {"model": model, "backend": guided.name, "batch": batch}
    for rows in sorted({0, batch // 2, batch}):
        scales = torch.tensor([4.0] * rows + [1.0] * (batch - rows))  # the first `rows` guided
        row[f"U={rows}"] = median_ms(lambda: guided(*inputs.values(), scales), repeats, warmup=2)
    named = {**inputs, "cfg_scale": torch.full((batch,), 4.0), "guided": torch.arange(batch)}
    features = refresh.run_named(named)
    row["refresh"] = median_ms(lambda: refresh.run_named(named), repeats, warmup=2)
    reused = {**named, "features": features["features"], "null_features": features["null_features"]}
    row["reuse"] = median_ms(lambda: reuse.run_named(reused), repeats, warmup=2)
    return row


def table(rows: list[dict]) -> str:
    lines = ["| model | backend | batch | ms U=0 | ms U=B/2 | ms U=B | U=B / U=0 | ms refresh | ms reuse | "
             "refresh / reuse |", "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        half = row.get(f"U={row['batch'] // 2}")
        full, none = row[f"U={row['batch']}"], row["U=0"]
        lines.append(f"| {row['model']} | {row['backend']} | {row['batch']} | {none:.1f} | {half:.1f} | {full:.1f} | "
                     f"{full / none:.2f}x | {row['refresh']:.1f} | {row['reuse']:.1f} | "
                     f"{row['refresh'] / row['reuse']:.1f}x |")
    return "\n".join(lines)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--model", "models", default="S/2,fashion", show_default=True, help="Comma list of models.")
@click.option("--batch", default=8, show_default=True, help="Images per call.")
@click.option("--backends", default="onnxruntime,openvino", show_default=True, help="Comma list of graph backends.")
@click.option("--repeats", default=10, show_default=True, help="Timed calls per figure (after 2 untimed).")
@click.option("--threads", type=int, help="CPU threads (default: physical cores).")
@click.option("--work-dir", type=click.Path(path_type=Path), default=Path.home() / ".cache/dit-deploy/step-costs",
              show_default=True, help="Where the graphs are exported once.")
def main(models, batch, backends, repeats, threads, work_dir):
    """ms per call by guided rows (U = 0, B/2, B) and per cached-steps refresh and reuse, side by side."""
    try:
        rows = [measure(model.strip(), backend.strip(), batch, repeats, threads, work_dir)
                for model in models.split(",") for backend in backends.split(",")]
    except DiTError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(1)
    click.echo(f"{cpu_summary()}; {time.strftime('%Y-%m-%d')}; median of {repeats} calls")
    click.echo(table(rows))


if __name__ == "__main__":
    main()
