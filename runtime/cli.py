"""dit-run: sample images from a TensorRT engine, an ONNX graph, or a checkpoint (PyTorch reference).

    dit-run DiT-XL-2-256-fp16.plan --class 207 --class 360,387 --out sample.png
    dit-run fashion-28-fp16.onnx --class 0,1,7,8 --sampler ddim --out fashion.png
    dit-run --backend torch --ckpt auto --model XL/2 --image-size 256 --seed 0
    dit-run fashion-28-fp16.onnx --num-samples 50000 --out samples.npz --ray       # Ray Data, resumable

A thin front end: the flags become one request plan (runtime.plan), checked with the model's facts
before anything loads; then the decoder (VAE or pixels) loads before the denoiser, on its device, and
generate_plan() streams the samples into an atomically written file.
"""

import logging
import sys

import click

from dit_ref import configs
from dit_ref.contract import RANDOM_WEIGHTS, read_manifest
from dit_ref.errors import DiTError
from runtime.backends import BACKEND_CHOICES, NOTHING_TO_RUN, auto_backend, backend_for, device_for, load_denoiser
from runtime.backends.torch_backend import NEEDS_MODEL, TORCH_BATCH
from runtime.generate import write_samples
from runtime.images import open_output, output_kind
from runtime.options import NAMED, OPTIONS, click_flags, given_flags
from runtime.plan import ModelFacts, Plan, make_plan, split_classes
from runtime.profile import load_point
from runtime.scaleout.shards import DEFAULT_SHARD_SIZE
from runtime.vae import load_decoder

RAY_FLAGS = ("workers", "gpus_per_worker", "shard_size", "keep_shards")  # only with --ray
NOT_FOR_RAY = ("ckpt", "random_init", "model", "num_classes", "image_size", "device", "cfg_channels")


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def model_facts(path, flags: dict) -> ModelFacts:
    """What is known before loading, from the manifest or the config; DiTError when neither a file nor
    --model says. A checkpoint may hold another class count (train.py --num-classes): dit-run checks the
    plan again once it is loaded."""
    backend_for(path, flags["backend"])  # a file no backend runs is refused here, before its manifest is sought
    if path is not None:
        return ModelFacts.from_manifest(read_manifest(path))
    if flags["ckpt"] is None and flags["random_init"] is None:
        raise DiTError(NOTHING_TO_RUN)
    if flags["model"] is None:
        raise DiTError(NEEDS_MODEL)
    return ModelFacts.from_config(flags["model"], TORCH_BATCH, flags["num_classes"],
                                  flags["image_size"] or configs.get_config(flags["model"]).image_sizes[0])


def plan_from_flags(flags: dict, facts: ModelFacts, **overrides) -> tuple[Plan, Plan]:
    """(the plan as asked, the plan checked against facts) from dit-run's flags (and overrides of them)."""
    if flags["threads"] is not None and flags["threads"] < 1:
        raise DiTError(f"--threads must be at least 1, not {flags['threads']}")
    classes = split_classes(flags["classes"]) or None
    options = {**{name: flags[name] for name in OPTIONS}, **overrides}
    asked = make_plan(classes, decoder=flags["vae"], **options)
    return asked, asked.check(facts)


def chosen_backend(path, backend: str) -> str:
    """The backend that runs the file; for --backend auto on a graph, said on stderr with the reason."""
    if backend == "auto" and path is not None and str(path).lower().endswith(".onnx"):
        name, why = auto_backend(path)
        click.echo(f"backend: {name} (auto: {why}; --backend onnxruntime or openvino to choose)", err=True)
        return name
    return backend_for(path, backend)


def provenance_info(denoiser, plan: Plan, decoder) -> dict:
    """Provenance written into PNG text chunks and printed at the end."""
    facts = denoiser.provenance
    info = {"Software": "dit-run", "model": f"{facts.model} {facts.image_size}px",
            "weights": facts.source, "backend": denoiser.name,
            "sampler": f"{plan.sampler.name} ({plan.sampler.num_calls} denoiser calls)", "seed": plan.seed,
            "cfg_scale": plan.cfg_scale, "vae": decoder.source if decoder else "none"}
    info.update(named_options(plan))
    warnings = []
    if facts.random_weights:
        warnings.append(RANDOM_WEIGHTS)
    if decoder is not None and decoder.random_weights:
        warnings.append("RANDOM VAE: the decoder has random weights (offline demo)")
    if warnings:
        info["Warning"] = "; ".join(warnings)
    return info


def with_profile(path, flags: dict) -> tuple:
    """The file and flags --profile makes: the point's graph or engine, its backend and the backend's options,
    and its request options, each where the user gave none (runtime.profile)."""
    if flags["profile"] is None:
        return path, flags
    profile, point = load_point(flags["profile"], path)
    given = flags["given"]
    backend = flags["backend"] if "backend" in given else point.backend
    chosen = {**point.request_for(given), "backend": backend, **point.load_for(backend)}
    flags = {**flags, **{name: value for name, value in chosen.items() if name not in given}}
    path = profile.graph_path(point)
    click.echo(f"profile {point.name} ({profile.path.name}): {path.name} on {flags['backend']}", err=True)
    return path, flags


def named_options(plan: Plan) -> dict:
    """The options that provenance names when they are set (a guidance interval, a cache policy), spelled as
    their flags take them."""
    return {name: ":".join(map(str, value)) if isinstance(value, list) else value
            for name, value in plan.spelled(NAMED).items() if value is not None}


def run_on_ray_from_cli(path, flags: dict) -> None:
    """dit-run --ray: the same plan, made on Ray Data into resumable shards (runtime.scaleout)."""
    from runtime.scaleout.cluster import parse_address
    from runtime.scaleout.job import Job, RayOptions, run_on_ray

    parse_address(flags["ray_address"])  # `--ray G.onnx` took the graph for an address: say so first
    if "seeding" in flags["given"] and flags["seeding"] == "official":
        raise DiTError("--ray uses per-sample seeding (a sample must not depend on the worker that makes it); "
                       "drop --seeding official, or drop --ray for sample.py's order")
    not_for_ray = [flag(name) for name in NOT_FOR_RAY if flags[name] is not None]
    if path is None or not_for_ray:
        what = not_for_ray[0] if not_for_ray else "a checkpoint"
        raise DiTError(f"--ray runs an engine (.plan) or graph (.onnx) file on every worker, not {what}; export one "
                       f"with dit-export (workers are placed with --workers and --gpus-per-worker)")
    manifest = read_manifest(path)
    _, plan = plan_from_flags(flags, ModelFacts.from_manifest(manifest), seeding="per-sample")
    if manifest.random_weights:
        click.secho(f"warning: {RANDOM_WEIGHTS}", fg="red", bold=True, err=True)
    job = Job(path=path, plan=plan, backend=chosen_backend(path, flags["backend"]), cuda_graphs=flags["cuda_graphs"],
              load_options={} if flags["dtype"] == "float32" else {"dtype": flags["dtype"]})
    out = flags["out"] or ("samples.npy" if plan.decoder == "none" else "samples.npz")
    options = RayOptions(flags["ray_address"], flags["workers"], flags["gpus_per_worker"], flags["threads"],
                         flags["shard_size"] or DEFAULT_SHARD_SIZE, flags["keep_shards"])
    summary = run_on_ray(job, out, options)
    what = "latents" if plan.decoder == "none" else "images"
    click.echo(f"{summary.describe()}", err=True)
    click.echo(f"wrote {len(plan.labels)} {what} to {out} (per-sample seeding, seed {plan.seed}, "
               f"{plan.sampler.name}, cfg {plan.cfg_scale:g})", err=True)


def run_here(path, flags: dict) -> None:
    """dit-run on this machine: check the plan, load the decoder then the denoiser, write the samples."""
    misplaced = [flag(name) for name in RAY_FLAGS if flags[name] not in (None, False)]
    if misplaced:
        raise DiTError(f"{misplaced[0]} is for --ray runs; add --ray (a local instance) or drop it")
    facts = model_facts(path, flags)
    asked, plan = plan_from_flags(flags, facts)
    out = flags["out"] or ("samples.npy" if plan.decoder == "none" else "sample.png")
    output_kind(out, latents=plan.decoder == "none")  # check --out before any slow work
    backend = chosen_backend(path, flags["backend"])
    device = device_for(path, backend, flags["device"])
    decoder = load_decoder(plan.decoder, facts.decoder, facts.latent_channels, device, facts.latent_size,
                           flags["threads"])  # first: fail fast offline
    cfg_channels = flags["cfg_channels"]
    denoiser = load_denoiser(path, backend, model=flags["model"], image_size=flags["image_size"],
                             cfg_channels=None if cfg_channels is None else int(cfg_channels), device=device,
                             threads=flags["threads"], cuda_graphs=flags["cuda_graphs"],
                             dtype=None if flags["dtype"] == "float32" else flags["dtype"], ckpt=flags["ckpt"],
                             random_init=flags["random_init"], num_classes=flags["num_classes"])
    with denoiser:
        if denoiser.provenance.num_classes != facts.num_classes:  # a checkpoint's own count (train.py args)
            plan = asked.check(ModelFacts.of(denoiser))
        info = provenance_info(denoiser, plan, decoder)
        if "Warning" in info:
            click.secho(f"warning: {info['Warning']}", fg="red", bold=True, err=True)
        provenance = denoiser.provenance
        image_px = None if decoder is None else provenance.image_size
        with open_output(out, len(plan.labels), image_px, provenance.latent_size, info,
                         channels=decoder.channels if decoder else 3, latent_channels=provenance.latent_channels,
                         columns=flags["grid_columns"]) as output:
            write_samples(denoiser, plan, decoder, output)
    what = "latents" if decoder is None else "images"
    extras = "".join(f", {key.replace('_', ' ')} {value}" for key, value in named_options(plan).items())
    extras += f", decoder {decoder.runs_on}" if decoder is not None and decoder.runs_on else ""
    click.echo(f"wrote {len(plan.labels)} {what} to {out} ({info['model']}, {denoiser.name}, {info['sampler']}, "
               f"cfg {plan.cfg_scale:g}{extras}, seed {plan.seed})"
               f"{' [' + info['Warning'] + ']' if 'Warning' in info else ''}", err=True)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("engine_or_graph", required=False)
@click.option("--class", "classes", multiple=True, help="Class label or name (ImageNet 0..999, \"golden "
              "retriever\"; fashion 0..9, \"sneaker\"); repeat or comma-separate. Default: sample.py's demo labels (fashion: every class), or random ones with --num-samples.")
@click_flags(tuple(OPTIONS))
@click.option("--cfg-channels", type=click.Choice(["3", "4"]), help="Guided eps channels (graphs: from the manifest; torch: 3).")
@click.option("--vae", default="auto", show_default=True, help="auto (mse; pixels for pixel-space models) | ema | mse (hub) | PATH (local diffusers VAE) | DECODER.onnx|.plan (made by dit-export --vae) | random (offline demo) | none (write latents .npy).")
@click.option("--out", help="FILE.png (grid, --grid-columns per row), FILE.npz (uint8 arr_0 for FID tools), DIR (one PNG each), FILE.npy with --vae none.")
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
              show_default=True, help="Compute dtype: torch backend (float32, float16, bfloat16); openvino "
              "(float32, or bfloat16 on a CPU with bf16 units: faster, drops the graph's float32 islands).")
@click.option("--cuda-graphs", is_flag=True, help="TensorRT: capture one CUDA graph per batch size and replay it.")
@click.option("--grid-columns", type=click.IntRange(min=1), default=4, show_default=True,
              help="Images per row of a .png grid (4: sample.py's layout).")
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
@click.pass_context
def run(context, engine_or_graph, **flags):
    """Sample DiT images from ENGINE_OR_GRAPH (.plan or .onnx), or from a checkpoint with --backend torch."""
    flags["given"] = given_flags(context)
    engine_or_graph, flags = with_profile(engine_or_graph, flags)
    if flags["ray_address"] is not None:
        return run_on_ray_from_cli(engine_or_graph, flags)
    return run_here(engine_or_graph, flags)


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
