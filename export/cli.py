"""`dit-export`: checkpoint -> guided ONNX graph (+ manifest) -> TensorRT engine when possible."""

import contextlib
import gc
import logging
import sys
import time
from pathlib import Path

import click

from dit_ref import configs
from dit_ref.errors import DiTError

TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2}  # the check stage's limit on max|err| / max|ref|
RUN_HINT = "dit-run {graph} --class 207"


def parse_batch(text: str) -> dict:
    """"1:8:32" -> {"min": 1, "opt": 8, "max": 32} (checked by export_onnx.check_batch)."""
    from export.onnx_export import check_batch

    parts = text.split(":")
    if len(parts) != 3 or not all(part.strip().isdigit() for part in parts):
        raise DiTError(f"--batch {text!r} must be MIN:OPT:MAX, for example 1:8:32")
    return check_batch(dict(zip(("min", "opt", "max"), map(int, parts))))


@contextlib.contextmanager
def stage(name: str, detail: str):
    """Print a stage's start and, when it ends, its result and wall time; yields a dict for the result."""
    click.echo(f"{name:<6} {detail} ...")
    start = time.perf_counter()
    result = {"done": "done"}
    yield result
    click.echo(f"{'':<6} {result['done']} ({time.perf_counter() - start:.1f} s)")


def models_table() -> str:
    """Every config with its parameter count (millions) and Gflops at 256 and 512 pixels."""
    header = (f"{'model':<8}{'depth':>6}{'hidden':>7}{'heads':>6}{'patch':>6}"
              f"{'params@256 (M)':>16}{'params@512 (M)':>16}{'Gflops@256':>12}{'Gflops@512':>12}")
    rows = [header]
    for config in configs.CONFIGS.values():
        rows.append(
            f"{config.short_name:<8}{config.depth:>6}{config.hidden_size:>7}{config.num_heads:>6}"
            f"{config.patch_size:>6}"
            f"{configs.param_count(config, 256) / 1e6:>16.2f}{configs.param_count(config, 512) / 1e6:>16.2f}"
            f"{configs.gflops(config, 256):>12.2f}{configs.gflops(config, 512):>12.2f}"
        )
    return "\n".join(rows)


def engine_reason(engine: str) -> str | None:
    """Why no engine will be built (None: build one); DiTError when --engine required cannot be met."""
    if engine == "skip":
        return "--engine skip"
    from export.engine import engine_unavailable_reason

    reason = engine_unavailable_reason()
    if reason and engine == "required":
        raise DiTError(f"--engine required, but no engine can be built here: {reason}")
    return reason


def load_stage(model: str, image_size: int, ckpt: str | None, random_init: int | None):
    """Load the weights (dit_ref.weights.load_dit); returns the model and its checkpoint record."""
    from dit_ref.weights import load_dit

    with stage("load", f"{configs.get_config(model).name} at {image_size} px") as result:
        loaded = load_dit(model, image_size, ckpt=ckpt, random_init=random_init)
        label = "RANDOM WEIGHTS" if loaded.random_weights else f"sha256 {loaded.sha256[:12]}..."
        result["done"] = f"{loaded.source} ({label})"
    checkpoint = {"source": loaded.source, "sha256": loaded.sha256, "random_weights": loaded.random_weights}
    return loaded.model, checkpoint


def reference_stage(model, cfg_channels: int):
    """The PyTorch float32 outputs for the check, computed before export may turn the model to float16."""
    from export.verify import reference_outputs

    with stage("check", "PyTorch float32 reference at batch 1") as result:
        inputs, expected = reference_outputs(model, cfg_channels, batch=1)
        result["done"] = f"max |eps| {abs(expected[0]).max():.3g}"
    return inputs, expected


def export_stages(model, checkpoint: dict, out: Path, precision: str, cfg_channels: int, batch: dict) -> Path:
    """Trace, then save with the static checks (operators, onnx.checker, shape inference).

    The model is converted to float16 in place for --fp16: no float32 copy stays in memory.
    """
    from export.onnx_export import graph_file_name, graph_manifest, save_graph, trace_graph

    manifest = graph_manifest(model, precision, cfg_channels, batch, 18, checkpoint)
    name = graph_file_name(model, precision)
    with stage("trace", f"torch.onnx.export (dynamo), {precision}, cfg on {cfg_channels} channels"):
        program = trace_graph(model, precision, cfg_channels, opset=18, copy_model=False)
    with stage("save", f"{out / name} + manifest; TensorRT operator check, onnx.checker") as result:
        graph = save_graph(program, out, name, manifest)
        result["done"] = f"{graph.stat().st_size / 1e6:.1f} MB" + (
            " + external data" if graph.with_name(graph.name + ".data").exists() else "")
    return graph


def check_stage(graph: Path, reference, precision: str) -> None:
    """ONNX Runtime (CPU) on the graph against the PyTorch float32 reference outputs."""
    from export.verify import compare_outputs

    limit = TOLERANCE[precision]
    with stage("check", f"onnxruntime on the graph vs the reference, limit {limit:g}") as result:
        errors = compare_outputs(graph, *reference)
        result["done"] = ", ".join(f"{name} max rel err {value:.2e}" for name, value in errors.items())
    if max(errors.values()) > limit:
        raise DiTError(f"the graph disagrees with PyTorch (errors {errors}, limit {limit:g}); "
                       f"{graph} is kept for inspection")


def engine_stage(graph: Path, reason: str | None, batch: dict, opt_level: int, timing_cache) -> None:
    """Build the engine, or say in one line why not and how to run the graph meanwhile."""
    if reason:
        click.echo(f"engine skipped: {reason}; run the graph meanwhile with: {RUN_HINT.format(graph=graph)}")
        return
    from export.engine import build_engine

    with stage("engine", f"TensorRT, batch {batch['min']}:{batch['opt']}:{batch['max']}, level {opt_level}") as result:
        result["done"] = str(build_engine(graph, batch, opt_level, timing_cache))


def summary(graph: Path, checkpoint: dict, precision: str) -> None:
    click.echo(f"wrote {graph} ({precision}) and {graph.with_suffix('.json').name}")
    if checkpoint["random_weights"]:
        click.echo(f"RANDOM WEIGHTS ({checkpoint['source']}): the graph computes noise, not images; "
                   "use --ckpt for real weights")


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--model", help="DiT config, e.g. XL/2 (see --list-models).")
@click.option("--image-size", type=int, default=256, show_default=True, help="256 or 512.")
@click.option("--ckpt", help="Checkpoint: a .pt/.safetensors file, a diffusers folder, 'auto' or 'hf:ORG/NAME'.")
@click.option("--random-init", type=int, metavar="SEED", help="Random weights instead of a checkpoint (tests, timing).")
@click.option("--fp16", is_flag=True, help="FP16-typed graph (float32 I/O and float32 islands).")
@click.option("--cfg-channels", type=click.Choice(["3", "4"]), default="3", show_default=True,
              help="Guided eps channels: 3 = official sample.py, 4 = textbook.")
@click.option("--batch", "batch_text", default="1:8:32", show_default=True, metavar="MIN:OPT:MAX",
              help="Batch range recorded in the manifest and used for the engine profile.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("."), show_default=True,
              help="Output directory.")
@click.option("--engine", type=click.Choice(["auto", "required", "skip"]), default="auto", show_default=True,
              help="Build the TensorRT engine: when possible, or fail without it, or never.")
@click.option("--opt-level", type=click.IntRange(0, 5), default=3, show_default=True,
              help="TensorRT builder optimization level.")
@click.option("--timing-cache", type=click.Path(path_type=Path), help="TensorRT timing cache file.")
@click.option("--no-check", is_flag=True, help="Skip the ONNX Runtime vs PyTorch check (large models).")
@click.option("--list-models", is_flag=True, help="List the DiT configs with params and Gflops, then exit.")
@click.pass_context
def cli(ctx, model, image_size, ckpt, random_init, fp16, cfg_channels, batch_text, out, engine,
        opt_level, timing_cache, no_check, list_models):
    """Export a DiT as a guided ONNX graph (FP32 or FP16) with a manifest, then a TensorRT engine.

    \b
    dit-export --model XL/2 --ckpt auto --fp16 --out engines/
    dit-export --model S/2 --random-init 0 --engine skip
    dit-export build engines/DiT-XL-2-256-fp16.onnx --batch 1:8:16
    dit-export --list-models
    """
    if ctx.invoked_subcommand:
        return
    if list_models:
        click.echo(models_table())
        return
    if model is None:
        raise click.UsageError("--model is required (or --list-models, or the build command)")
    configs.get_config(model)  # unknown names and sizes fail before any work
    configs.check_image_size(image_size)
    export_command(model, image_size, ckpt, random_init, "fp16" if fp16 else "fp32", int(cfg_channels),
                   parse_batch(batch_text), out, engine, opt_level, timing_cache, not no_check)


def export_command(model_name, image_size, ckpt, random_init, precision, cfg_channels, batch, out,
                   engine, opt_level, timing_cache, check) -> None:
    """The export pipeline: load, trace, save, check, engine."""
    from export.onnx_export import check_out_dir

    check_out_dir(out)
    reason = engine_reason(engine)  # before any work: --engine required fails fast
    model, checkpoint = load_stage(model_name, image_size, ckpt, random_init)
    reference = reference_stage(model, cfg_channels) if check else None
    graph = export_stages(model, checkpoint, out, precision, cfg_channels, batch)
    del model  # the graph file holds the weights now (onnxscript 0.7.2 may keep them until exit)
    gc.collect()
    if check:
        check_stage(graph, reference, precision)
    engine_stage(graph, reason, batch, opt_level, timing_cache)
    summary(graph, checkpoint, precision)


@cli.command()
@click.argument("graph", type=click.Path(path_type=Path))
@click.option("--batch", "batch_text", metavar="MIN:OPT:MAX", help="Batch range (default: the manifest's).")
@click.option("--opt-level", type=click.IntRange(0, 5), default=3, show_default=True,
              help="TensorRT builder optimization level.")
@click.option("--timing-cache", type=click.Path(path_type=Path), help="TensorRT timing cache file.")
def build(graph, batch_text, opt_level, timing_cache):
    """Build a TensorRT engine (.plan, beside it) from an exported GRAPH."""
    from export.engine import build_engine

    batch = parse_batch(batch_text) if batch_text else None
    with stage("engine", f"TensorRT engine from {graph}, level {opt_level}") as result:
        result["done"] = str(build_engine(graph, batch, opt_level, timing_cache))


def main(argv=None) -> None:
    """Console entry point: errors become one line on stderr (exit 1; 2 for usage errors)."""
    logging.basicConfig(level=logging.INFO, format=f"{'':<6} %(message)s")  # engine build progress
    try:
        code = cli.main(args=argv, prog_name="dit-export", standalone_mode=False)
    except DiTError as error:
        click.echo(f"error: {error}", err=True)
        code = 1
    except click.ClickException as error:
        click.echo(f"error: {error.format_message()} (see dit-export --help)", err=True)
        code = error.exit_code
    except (KeyboardInterrupt, click.exceptions.Abort):
        click.echo("error: interrupted", err=True)
        code = 1
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
