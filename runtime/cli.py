"""dit-run: sample images from a TensorRT engine, an ONNX graph, or a checkpoint (PyTorch reference).

    dit-run DiT-XL-2-256-fp16.plan --class 207 --class 360,387 --out sample.png
    dit-run fashion-28-fp16.onnx --class 0,1,7,8 --sampler ddim --out fashion.png
    dit-run --backend torch --ckpt auto --model XL/2 --image-size 256 --seed 0
    dit-run fashion-28-fp16.onnx --num-samples 50000 --out samples.npz --ray       # Ray Data, resumable

A thin front end over runtime.generate.generate(): options are checked before anything loads, the
decoder (VAE or pixels) before the denoiser, and the samples stream into an atomically written file.
"""

import logging
import re
import sys

import click
from tqdm import tqdm

from dit_ref import configs
from dit_ref.class_names import class_names, resolve_label
from dit_ref.contract import read_manifest
from dit_ref.errors import DiTError
from runtime.backends import BACKEND_CHOICES, backend_for, load_denoiser
from runtime.generate import SEEDINGS, check_labels, check_options, check_seeding, generate
from runtime.images import open_output, output_kind
from runtime.samplers import DIFFUSERS_SCHEDULERS, sampler_from_name
from runtime.shards import DEFAULT_SHARD_SIZE
from runtime.vae import load_decoder

DEMO_LABELS = (207, 360, 387, 974, 88, 979, 417, 279)  # sample.py's class_labels
RANDOM_BANNER = "RANDOM WEIGHTS: these images are noise from an untrained network, not DiT samples"


def parse_classes(values, num_classes: int = configs.NUM_CLASSES, names: tuple[str, ...] | None = None) -> list[int] | None:
    """--class values (repeats and comma lists of numbers or class names) -> labels; DiTError unless each
    is in 0..num_classes-1 or a name in the model's class-name table (dit_ref.class_names)."""
    labels = []
    for value in values:
        for part in str(value).split(","):
            part = part.strip()
            if part:
                number = re.fullmatch(r"[+-]?\d+", part)
                labels.append(int(part) if number else resolve_label(part, names, num_classes, "--class"))
    return check_labels(labels, num_classes, "--class") or None


def plan_labels(given: list[int] | None, num_samples: int | None, num_classes: int) -> list[int | None]:
    """One entry per sample: a given label, or None for a random (seeded) one.

    No --class and no --num-samples: sample.py's demo labels (ImageNet models; other models: each
    class once). No --class with --num-samples: all random, as sample_ddp.py draws them. More
    samples than --class labels: the rest random.
    """
    if given is None:
        demo = list(DEMO_LABELS) if num_classes == configs.NUM_CLASSES else list(range(num_classes))
        return demo if num_samples is None else [None] * num_samples
    num_samples = len(given) if num_samples is None else num_samples
    return (given + [None] * num_samples)[:num_samples]


def model_facts(path, backend: str, model: str | None, num_classes: int | None = None) -> dict | None:
    """What is known before loading: {"model", "num_classes", "decoder", "channels"} from the manifest or the
    config (None when neither a file nor --model is given; the loader then says what to pass). A
    checkpoint may hold another class count (train.py --num-classes): dit-run re-plans after loading."""
    if path is not None:
        backend_for(path, backend)  # a file no backend runs is refused here, before its manifest is sought
        manifest = read_manifest(path)
        return {"model": manifest.model, "num_classes": manifest.num_classes, "decoder": manifest.decoder,
                "channels": manifest.latent_channels}
    if model is not None:
        config = configs.get_config(model)
        return {"model": config.name, "num_classes": num_classes or config.num_classes, "decoder": config.decoder,
                "channels": config.latent_channels}
    return None


def labels_from_cli(classes, facts: dict) -> list[int] | None:
    """--class values for the model the facts describe (numbers, or names from its class-name table)."""
    return parse_classes(classes, facts["num_classes"], class_names(facts["model"], facts["num_classes"]))


def describe(denoiser, sampler, seed: int, cfg_scale: float, decoder) -> dict:
    """Provenance written into PNG text chunks and printed at the end."""
    facts = denoiser.provenance
    info = {"Software": "dit-run", "model": f"{facts.model} {facts.image_size}px",
            "weights": facts.source, "backend": denoiser.name,
            "sampler": f"{sampler.name} ({sampler.num_calls} denoiser calls)", "seed": seed,
            "cfg_scale": cfg_scale, "vae": decoder.source if decoder else "none"}
    warnings = []
    if facts.random_weights:
        warnings.append(RANDOM_BANNER)
    if decoder is not None and decoder.random_weights:
        warnings.append("RANDOM VAE: the decoder has random weights (offline demo)")
    if warnings:
        info["Warning"] = "; ".join(warnings)
    return info


def sample_all(denoiser, sampler, planned, batch_size, seed, cfg_scale, decoder, output, seeding="official") -> None:
    """generate() into output, with progress bars over images and steps."""
    images_bar = tqdm(total=len(planned), desc="images", unit="img", disable=None)
    steps_bar = tqdm(total=sampler.num_calls, desc="steps", unit="step", leave=False, disable=None)

    def on_step(info):
        if info["i"] == 0:
            steps_bar.reset()
        steps_bar.update()

    with images_bar, steps_bar:
        for batch in generate(denoiser, planned, sampler, seed=seed, cfg_scale=cfg_scale, batch_size=batch_size,
                              decoder=decoder, on_step=on_step, seeding=seeding):
            output.add(batch.samples)
            images_bar.update(len(batch.samples))


def run_on_ray_from_cli(path, classes, num_samples, seed, steps, sampler, cfg_scale, vae, out, batch_size, backend,
                        threads, cuda_graphs, seeding, address, ray_options, not_for_ray) -> None:
    """dit-run --ray: the same labels and options, made on Ray Data into resumable shards (runtime.scaleout)."""
    from runtime.ray_cluster import parse_address
    from runtime.scaleout import Job, run_on_ray

    parse_address(address)  # `--ray G.onnx` took the graph for an address: say so first
    check_seeding("per-sample", seed)
    if seeding == "official":
        raise DiTError("--ray uses per-sample seeding (a sample must not depend on the worker that makes it); "
                       "drop --seeding official, or drop --ray for sample.py's order")
    if path is None or not_for_ray:
        what = not_for_ray[0] if not_for_ray else "a checkpoint"
        raise DiTError(f"--ray runs an engine (.plan) or graph (.onnx) file on every worker, not {what}; export one "
                       f"with dit-export (workers are placed with --workers and --gpus-per-worker)")
    facts = model_facts(path, backend, None)
    if read_manifest(path).random_weights:
        click.secho(f"warning: {RANDOM_BANNER}", fg="red", bold=True, err=True)
    planned = plan_labels(labels_from_cli(classes, facts), num_samples, facts["num_classes"])
    sampler_from_name(sampler, steps)  # an unknown sampler fails here, not in every worker
    job = Job(path=path, labels=tuple(planned), sampler=sampler, steps=steps, seed=seed, cfg_scale=cfg_scale,
              vae=vae, backend=backend, cuda_graphs=cuda_graphs)
    out = out or ("samples.npy" if vae == "none" else "samples.npz")
    summary = run_on_ray(job, out, address=address, workers=ray_options["--workers"],
                         gpus_per_worker=ray_options["--gpus-per-worker"], threads=threads, batch_size=batch_size,
                         shard_size=ray_options["--shard-size"] or DEFAULT_SHARD_SIZE,
                         keep_shards=bool(ray_options["--keep-shards"]))
    what = "latents" if vae == "none" else "images"
    click.echo(f"{summary.describe()}", err=True)
    click.echo(f"wrote {len(planned)} {what} to {out} (per-sample seeding, seed {seed}, {sampler}, cfg {cfg_scale})",
               err=True)


SAMPLER_HELP = f"ddpm (learned sigma, 250 steps), ddim (eta 0, 50 steps), or a diffusers scheduler: " \
               f"{', '.join(DIFFUSERS_SCHEDULERS)} (20 steps) or a scheduler class name"


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("engine_or_graph", required=False)
@click.option("--class", "classes", multiple=True, help="Class label or name (ImageNet 0..999, \"golden "
              "retriever\"; fashion 0..9, \"sneaker\"); repeat or comma-separate. Default: sample.py's demo labels (fashion: every class), or random ones with --num-samples.")
@click.option("--num-samples", type=int, help="Number of images (default: one per class).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds latents, labels and noise.")
@click.option("--steps", type=int, help="Sampling steps (default per sampler).")
@click.option("--sampler", default="ddpm", show_default=True, help=SAMPLER_HELP)
@click.option("--cfg-scale", type=float, default=4.0, show_default=True, help="Guidance scale (sample.py: 4.0; FID runs: 1.5).")
@click.option("--cfg-channels", type=click.Choice(["3", "4"]), help="Guided eps channels (graphs: from the manifest; torch: 3).")
@click.option("--vae", default="auto", show_default=True, help="auto (mse; pixels for pixel-space models) | ema | mse (hub) | PATH (local diffusers VAE) | random (offline demo) | none (write latents .npy).")
@click.option("--out", help="FILE.png (grid, --grid-columns per row), FILE.npz (uint8 arr_0 for FID tools), DIR (one PNG each), FILE.npy with --vae none.")
@click.option("--batch-size", type=int, help="Samples per denoiser batch (default: up to the manifest's max).")
@click.option("--backend", type=click.Choice(BACKEND_CHOICES), default="auto", show_default=True)
@click.option("--device", help="cpu, cuda, cuda:1 (default: cuda when available).")
@click.option("--threads", type=int, help="CPU threads for ONNX Runtime and torch (default: physical cores).")
@click.option("--ckpt", help="torch backend: PATH | auto | hf:ORG/NAME.")
@click.option("--random-init", type=int, help="torch backend: random weights with this seed (labelled as such).")
@click.option("--model", help="torch backend: XL/2, S/2, fashion, ... (with a file: must match its manifest).")
@click.option("--num-classes", type=click.IntRange(min=1), help="torch backend: the class count of a checkpoint "
              "that does not say (a bare state dict; train.py checkpoints carry theirs).")
@click.option("--image-size", type=int, help="torch backend: 256 or 512 (fashion: 28; with a file: must match its manifest).")
@click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16"]), default="float32",
              show_default=True, help="torch backend compute dtype.")
@click.option("--cuda-graphs", is_flag=True, help="TensorRT: capture one CUDA graph per batch size and replay it.")
@click.option("--grid-columns", type=click.IntRange(min=1), default=4, show_default=True,
              help="Images per row of a .png grid (4: sample.py's layout).")
@click.option("--seeding", type=click.Choice(SEEDINGS), help="official (default; not with --ray): one stream in "
              "sample.py's order (bitwise sample.py); per-sample (--ray's): sample i's own stream keyed by (seed, i), "
              "the same in any batch size, order, worker or cluster.")
@click.option("--ray", "ray_address", is_flag=False, flag_value="local", metavar="[ADDRESS]",
              help="Generate on Ray Data into resumable <out>.shards/: no ADDRESS starts a local instance; auto or "
                   "ray://HOST:PORT joins a cluster. Writes .npz (or .npy with --vae none).")
@click.option("--workers", type=click.IntRange(min=1), help="--ray: denoiser actors (default: one per GPU; on CPU "
              "one per core).")
@click.option("--gpus-per-worker", type=click.FloatRange(min=0), help="--ray: GPUs per actor (default 1 on a "
              "cluster with GPUs, else 0).")
@click.option("--shard-size", type=click.IntRange(min=1), help=f"--ray: samples per resumable shard "
              f"(default {DEFAULT_SHARD_SIZE}).")
@click.option("--keep-shards", is_flag=True, help="--ray: keep <out>.shards/ after assembling the output.")
def run(engine_or_graph, classes, num_samples, seed, steps, sampler, cfg_scale, cfg_channels, vae, out,
        batch_size, backend, device, threads, ckpt, random_init, model, num_classes, image_size, dtype, cuda_graphs,
        grid_columns, seeding, ray_address, workers, gpus_per_worker, shard_size, keep_shards):
    """Sample DiT images from ENGINE_OR_GRAPH (.plan or .onnx), or from a checkpoint with --backend torch."""
    check_options(batch_size=batch_size, threads=threads, steps=steps, cfg_scale=cfg_scale, num_samples=num_samples)
    ray_options = {"--workers": workers, "--gpus-per-worker": gpus_per_worker, "--shard-size": shard_size,
                   "--keep-shards": keep_shards or None}
    if ray_address is not None:
        not_for_ray = [name for name, value in (("--ckpt", ckpt), ("--random-init", random_init), ("--model", model),
                       ("--num-classes", num_classes),
                       ("--image-size", image_size), ("--device", device), ("--cfg-channels", cfg_channels))
                       if value is not None]
        return run_on_ray_from_cli(engine_or_graph, classes, num_samples, seed, steps, sampler, cfg_scale, vae, out,
                                   batch_size, backend, threads, cuda_graphs, seeding, ray_address, ray_options,
                                   not_for_ray)
    misplaced = [name for name, value in ray_options.items() if value is not None]
    if misplaced:
        raise DiTError(f"{misplaced[0]} is for --ray runs; add --ray (a local instance) or drop it")
    seeding = seeding or "official"
    check_seeding(seeding, seed)
    facts = model_facts(engine_or_graph, backend, model, num_classes) or {
        "model": "DiT-XL/2", "num_classes": configs.NUM_CLASSES, "decoder": "vae", "channels": configs.LATENT_CHANNELS}
    planned = plan_labels(labels_from_cli(classes, facts), num_samples, facts["num_classes"])
    chosen_sampler = sampler_from_name(sampler, steps)
    out = out or ("samples.npy" if vae == "none" else "sample.png")
    output_kind(out, latents=vae == "none")  # check --out before any slow work
    decoder = load_decoder(vae, facts["decoder"], facts["channels"], "cpu")  # before the denoiser: fail fast offline
    denoiser = load_denoiser(engine_or_graph, backend, model=model, image_size=image_size,
                             cfg_channels=None if cfg_channels is None else int(cfg_channels),
                             batch_size=batch_size, device=device, threads=threads, cuda_graphs=cuda_graphs,
                             dtype=None if dtype == "float32" else dtype, ckpt=ckpt, random_init=random_init,
                             num_classes=num_classes)
    with denoiser:
        if denoiser.provenance.num_classes != facts["num_classes"]:  # a checkpoint's own count (train.py args)
            facts = {**facts, "num_classes": denoiser.provenance.num_classes}
            planned = plan_labels(labels_from_cli(classes, facts), num_samples, facts["num_classes"])
        if decoder is not None:
            decoder.to(denoiser.device)
        info = describe(denoiser, chosen_sampler, seed, cfg_scale, decoder)
        if "Warning" in info:
            click.secho(f"warning: {info['Warning']}", fg="red", bold=True, err=True)
        provenance = denoiser.provenance
        image_px = None if decoder is None else provenance.image_size
        with open_output(out, len(planned), image_px, provenance.latent_size, info,
                         channels=decoder.channels if decoder else 3, latent_channels=provenance.latent_channels,
                         columns=grid_columns) as output:
            sample_all(denoiser, chosen_sampler, planned, batch_size, seed, cfg_scale, decoder, output, seeding)
    what = "latents" if decoder is None else "images"
    click.echo(f"wrote {len(planned)} {what} to {out} ({info['model']}, {denoiser.name}, {info['sampler']}, "
               f"cfg {cfg_scale}, seed {seed}){' [' + info['Warning'] + ']' if 'Warning' in info else ''}",
               err=True)


def run_command(command, argv, prog_name: str, interrupted: str = "interrupted", interrupts: tuple = ()) -> None:
    """A click command as a console entry point (dit-run, dit-serve): one line on stderr and exit 1 for
    user errors and interrupts (Ctrl-C, and the command's own `interrupts`), no traceback."""
    logging.basicConfig(level=logging.WARNING, format="warning: %(message)s")  # e.g. CUDA graph fallback
    try:
        code = command.main(args=argv, prog_name=prog_name, standalone_mode=False)
    except DiTError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(1)
    except (KeyboardInterrupt, click.exceptions.Abort, *interrupts):
        click.echo(f"error: {interrupted}", err=True)
        sys.exit(1)
    except click.ClickException as error:
        error.show()
        sys.exit(error.exit_code)
    sys.exit(code if isinstance(code, int) else 0)


def main(argv=None) -> None:
    """dit-run's console entry point."""
    run_command(run, argv, "dit-run", "interrupted; no output was written")


if __name__ == "__main__":
    main()
