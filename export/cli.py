"""`dit-export`: checkpoint -> guided ONNX graph (+ manifest) -> TensorRT engine when possible; --vae: the VAE
decoder likewise (export.vae_export), alone or beside the DiT."""

import contextlib
import logging
import sys
import time
from pathlib import Path

import click

from dit_ref import configs
from dit_ref.contract import DEFAULT_BATCH, PRECISIONS, RANDOM_WEIGHTS, BatchRange
from dit_ref.errors import DiTError
from export.pipeline import export
from export.quantize import EXCLUSION_LIMIT
from export.vae_export import check_decoder_request, export_decoder

RUN_HINT = "dit-run {graph} --class {label}"
QUIET_LOGGERS = ("torch", "onnxscript", "onnx_ir", "onnxruntime", "root")  # third-party chatter below WARNING


@contextlib.contextmanager
def stage(name: str, detail: str):
    """Print a stage's start and, when it ends, its result and wall time; yields a dict for the result."""
    click.echo(f"{name:<6} {detail} ...")
    start = time.perf_counter()
    result = {"done": "done"}
    yield result
    click.echo(f"{'':<6} {result['done']} ({time.perf_counter() - start:.1f} s)")


def models_table() -> str:
    """Every config with its shape, parameter count (millions) and Gflops at its image sizes."""
    header = (f"{'model':<8}{'depth':>6}{'hidden':>7}{'heads':>6}{'patch':>6}"
              f"{'params@256 (M)':>16}{'params@512 (M)':>16}{'Gflops@256':>12}{'Gflops@512':>12}"
              f"  {'channels':>8}{'classes':>8}  decoder, sizes")
    rows = [header]
    for config in configs.all_configs():
        sizes = (list(config.image_sizes) * 2)[:2]  # a one-size model shows its size in both columns
        rows.append(
            f"{config.short_name:<8}{config.depth:>6}{config.hidden_size:>7}{config.num_heads:>6}"
            f"{config.patch_size:>6}"
            f"{configs.param_count(config, sizes[0]) / 1e6:>16.2f}{configs.param_count(config, sizes[1]) / 1e6:>16.2f}"
            f"{configs.gflops(config, sizes[0]):>12.2f}{configs.gflops(config, sizes[1]):>12.2f}"
            f"  {config.latent_channels:>8}{config.num_classes:>8}  {config.decoder}, "
            f"{' and '.join(map(str, config.image_sizes))} px"
        )
    return "\n".join(rows)


def summary(result) -> None:
    if result.engine_skipped:
        click.echo(f"engine skipped: {result.engine_skipped}; run the graph meanwhile with: "
                   f"{RUN_HINT.format(graph=result.graph, label=min(207, result.manifest.num_classes - 1))}")
    click.echo(f"wrote {result.engine or result.graph} ({result.manifest.precision}) and "
               f"{result.graph.with_suffix('.json').name}")
    if result.manifest.random_weights:
        click.echo(f"{RANDOM_WEIGHTS} ({result.manifest.checkpoint.source}); use --ckpt for real weights")


def decoder_summary(result, dit_graph) -> None:
    decoder = result.engine or result.graph
    if result.engine_skipped:
        click.echo(f"engine skipped: {result.engine_skipped}; decode with the graph meanwhile")
    click.echo(f"wrote {decoder} ({result.manifest.precision} VAE decoder) and {result.graph.with_suffix('.json').name}"
               f"; use it with: dit-run {dit_graph or 'G.onnx'} --vae {decoder}")
    if result.manifest.random_weights:
        click.echo(f"RANDOM VAE: the decoder has random weights ({result.manifest.vae.source}); use --vae ema or mse")


def decoder_image_size(model: str | None, image_size: int | None, vae: str, precision: str) -> int:
    """The image size of the decoder to export (the DiT's when there is one); DiTError before anything loads."""
    if model is not None:
        config = configs.get_config(model)
        if config.decoder != "vae":
            raise DiTError(f"--vae {vae}: {config.name} makes pixels, not latents, and needs no VAE; drop --vae")
        image_size = config.image_sizes[0] if image_size is None else image_size
        config.check_image_size(image_size)
    image_size = 256 if image_size is None else image_size
    check_decoder_request(vae, image_size, precision)
    return image_size


def set_verbosity(verbose: bool) -> None:
    """Quiet by default: our stage lines and third-party warnings; --verbose: every library's INFO too."""
    logging.basicConfig(level=logging.INFO, format=f"{'':<6} %(message)s")  # engine build progress
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)
    logging.getLogger().setLevel(logging.INFO if verbose else logging.WARNING)
    logging.getLogger("export").setLevel(logging.INFO)


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--model", help="DiT config, e.g. XL/2 (see --list-models).")
@click.option("--image-size", type=int, help="256 or 512 for the paper's models (default 256); fashion: 28.")
@click.option("--ckpt", help="Checkpoint: a .pt/.safetensors file, a diffusers folder, 'auto' or 'hf:ORG/NAME'.")
@click.option("--random-init", type=int, metavar="SEED", help="Random weights instead of a checkpoint (tests, timing).")
@click.option("--precision", type=click.Choice(PRECISIONS), help="fp32 (the default), fp16 or bf16 (typed graphs: "
              "float32 I/O and float32 islands), int8 or fp8 (Q/DQ graphs, calibrated on sampling runs).")
@click.option("--fp16", is_flag=True, help="Short for --precision fp16.")
@click.option("--exclusion-limit", type=click.FloatRange(min=0), help="int8/fp8: a layer kind whose own "
              f"quantization moves the samples by more than this (relative RMS) stays float (default: "
              f"{', '.join(f'{p} {limit:g}' for p, limit in EXCLUSION_LIMIT.items())}).")
@click.option("--qdq-base", type=click.Choice(["auto", "fp16", "fp32"]), default="auto", show_default=True,
              help="int8/fp8: the type of the unquantized ops: fp16 (the FP16 graph's float32 islands: for "
              "TensorRT), fp32 (faster on a CPU), auto: fp16 when this export builds an engine, else fp32.")
@click.option("--cached-steps", is_flag=True, help="Also export the refresh and reuse graphs of cached steps "
              "(every block's attention and MLP outputs given, then taken: dit-run --cache fora:N).")
@click.option("--cfg-channels", type=int, help="Guided eps channels: 3 = official sample.py (default for "
              "4-channel latents), 4 = textbook; other models: all latent channels (default).")
@click.option("--batch", "batch_text", default=str(DEFAULT_BATCH), show_default=True, metavar="MIN:OPT:MAX",
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
@click.option("--num-classes", type=click.IntRange(min=1), help="Class count of a checkpoint that does not say "
              "(a bare state dict; train.py checkpoints carry theirs). Default: the config's (1000).")
@click.option("--vae", help="Also (or, without --model, only) export the SD VAE decoder: ema | mse (the hub) | DIR "
              "(a local diffusers VAE) | random (offline demo); at the DiT's image size and precision (fp32, fp16, "
              "bf16), latents in, images out.")
@click.option("--vae-batch", "vae_batch_text", metavar="MIN:OPT:MAX", help="The decoder's batch range (default: 1 "
              "up to the images the runtime decodes per call: 1:8:8 at 256 px, 1:2:2 at 512 px).")
@click.option("--verbose", is_flag=True, help="Also show the exporter's and libraries' own progress logs.")
@click.pass_context
def cli(ctx, model, image_size, ckpt, random_init, precision, fp16, exclusion_limit, qdq_base, cached_steps,
        cfg_channels, batch_text, out, engine, opt_level, timing_cache, no_check, list_models, num_classes, vae, vae_batch_text,
        verbose):
    """Export a DiT as a guided ONNX graph (FP32 or FP16) with a manifest, then a TensorRT engine.

    \b
    dit-export --model XL/2 --ckpt auto --fp16 --out engines/
    dit-export --model fashion --ckpt auto --fp16 --out graphs/   (the shipped small model)
    dit-export --model fashion --ckpt auto --precision int8 --out graphs/
    dit-export --model S/2 --random-init 0 --engine skip
    dit-export --model XL/2 --ckpt auto --fp16 --vae mse --out engines/   (the DiT and its VAE decoder)
    dit-export --vae ema --image-size 512 --precision fp16   (the decoder alone)
    dit-export build engines/DiT-XL-2-256-fp16.onnx --batch 1:8:16
    dit-export --list-models
    """
    set_verbosity(verbose)
    if ctx.invoked_subcommand:
        return
    if list_models:
        click.echo(models_table())
        return
    if model is None and vae is None:
        raise click.UsageError("--model or --vae is required (or --list-models, or the build command)")
    if fp16 and precision not in (None, "fp16"):
        raise click.UsageError(f"--fp16 is short for --precision fp16; drop it or --precision {precision}")
    if vae_batch_text and vae is None:
        raise click.UsageError("--vae-batch is the decoder's batch range: add --vae")
    precision = "fp16" if fp16 else precision or "fp32"
    vae_size = None if vae is None else decoder_image_size(model, image_size, vae, precision)
    vae_batch = BatchRange.parse(vae_batch_text) if vae_batch_text else None
    graph = None
    if model is not None:
        result = export(model, image_size, ckpt=ckpt, random_init=random_init, precision=precision,
                        exclusion_limit=exclusion_limit, qdq_base=qdq_base, cached_steps=cached_steps,
                        cfg_channels=None if cfg_channels is None else int(cfg_channels),
                        batch=BatchRange.parse(batch_text), out=out, engine=engine, check=not no_check,
                        opt_level=opt_level, timing_cache=timing_cache, num_classes=num_classes, stage=stage)
        summary(result)
        graph = result.engine or result.graph
    if vae is not None:
        decoder_summary(export_decoder(vae, vae_size, precision=precision, batch=vae_batch, out=out, engine=engine,
                                       check=not no_check, opt_level=opt_level, timing_cache=timing_cache,
                                       stage=stage), graph)


@cli.command()
@click.argument("graph", type=click.Path(path_type=Path))
@click.option("--batch", "batch_text", metavar="MIN:OPT:MAX", help="Batch range (default: the manifest's).")
@click.option("--opt-level", type=click.IntRange(0, 5), default=3, show_default=True,
              help="TensorRT builder optimization level.")
@click.option("--timing-cache", type=click.Path(path_type=Path), help="TensorRT timing cache file.")
def build(graph, batch_text, opt_level, timing_cache):
    """Build a TensorRT engine (.plan, beside it) from an exported GRAPH."""
    from export.engine import build_engines

    batch = BatchRange.parse(batch_text) if batch_text else None
    with stage("engine", f"TensorRT engine from {graph} (and its cached-steps pair), level {opt_level}") as result:
        result["done"] = ", ".join(map(str, build_engines(graph, batch, opt_level, timing_cache)))


def main(argv=None) -> None:
    """Console entry point: errors become one line on stderr (exit 1; 2 for usage errors)."""
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
