"""dit-run: sample images from a TensorRT engine, an ONNX graph, or a checkpoint (PyTorch reference).

    dit-run DiT-XL-2-256-fp16.plan --class 207 --class 360,387 --out sample.png
    dit-run --backend torch --ckpt auto --model XL/2 --image-size 256 --seed 0

With --seed S the initial latents, the labels sample_ddp.py would draw, and every step's noise
come from one generator on the sampling device in the official order, so sample.py and dit-run
give the same latents for the same checkpoint on the same device.
"""

import logging
import sys

import click
import torch
from tqdm import tqdm

from dit_ref.configs import NUM_CLASSES
from dit_ref.errors import DiTError
from runtime.backends import BACKENDS, batch_range, load_denoiser, model_facts
from runtime.backends.onnxruntime_backend import check_batch
from runtime.images import open_output, output_kind
from runtime.noise import OfficialNoise
from runtime.samplers import DIFFUSERS_SCHEDULERS, sampler_from_name
from runtime.vae import decode, load_vae

DEMO_LABELS = (207, 360, 387, 974, 88, 979, 417, 279)  # sample.py's class_labels
DEFAULT_BATCH_SIZE = 32  # when the manifest gives no batch range (torch backend)
RANDOM_BANNER = "RANDOM WEIGHTS: these images are noise from an untrained network, not DiT samples"


def parse_classes(values) -> list[int] | None:
    """--class values (repeats and comma lists) -> labels; DiTError unless each is in 0..999."""
    labels = []
    for value in values:
        for part in str(value).split(","):
            part = part.strip()
            if not part:
                continue
            try:
                label = int(part)
            except ValueError:
                raise DiTError(f"--class {part!r} is not an integer; ImageNet classes are 0..{NUM_CLASSES - 1}") from None
            if not 0 <= label < NUM_CLASSES:
                raise DiTError(f"--class {label} is out of range: ImageNet classes are 0..{NUM_CLASSES - 1} "
                               f"({NUM_CLASSES} is the null class used for guidance)")
            labels.append(label)
    return labels or None


def plan_labels(given: list[int] | None, num_samples: int | None) -> list[int | None]:
    """One entry per sample: a given label, or None for a random (seeded) one.

    No --class and no --num-samples: sample.py's demo labels. No --class with --num-samples: all
    random, as sample_ddp.py draws them. More samples than --class labels: the rest random.
    """
    if num_samples is not None and num_samples < 1:
        raise DiTError(f"--num-samples must be at least 1, not {num_samples}")
    if given is None:
        return list(DEMO_LABELS) if num_samples is None else [None] * num_samples
    num_samples = len(given) if num_samples is None else num_samples
    return (given + [None] * num_samples)[:num_samples]


def batch_labels(planned: list, noise: OfficialNoise, device) -> torch.Tensor:
    """Labels of one batch; random ones drawn (for the whole batch, after z) as sample_ddp.py does."""
    if all(label is not None for label in planned):
        return torch.tensor(planned, dtype=torch.int64, device=device)
    drawn = noise.labels(len(planned))  # (n,)
    given = torch.tensor([-1 if label is None else label for label in planned], device=device)
    return torch.where(given >= 0, given, drawn)


def choose_batch_size(requested: int | None, num_samples: int, denoiser) -> int:
    """--batch-size, or as many samples as fit the manifest's batch range (32 for the torch backend)."""
    path = getattr(denoiser, "graph_path", None) or getattr(denoiser, "plan_path", None)
    batch = batch_range(denoiser.manifest, path) if denoiser.manifest is not None else {}
    size = requested or min(num_samples, int(batch.get("max", DEFAULT_BATCH_SIZE)))
    if size < 1:
        raise DiTError(f"--batch-size must be at least 1, not {size}")
    if denoiser.manifest is not None:
        for n in {min(size, num_samples), num_samples % size or size}:  # full and last batch
            check_batch(n, batch, path)
    return size


def set_threads(threads: int | None) -> None:
    """--threads: torch's intra-op threads (ONNX Runtime gets the same number via load_denoiser)."""
    if threads is not None:
        if threads < 1:
            raise DiTError(f"--threads must be at least 1, not {threads}")
        torch.set_num_threads(threads)


def describe(facts: dict, sampler, seed: int, cfg_scale: float, denoiser, vae) -> dict:
    """Provenance written into PNG text chunks and printed at the end."""
    info = {"Software": "dit-run", "model": f"{facts['model']} {facts['image_size']}px",
            "weights": facts["source"], "backend": denoiser.name,
            "sampler": f"{sampler.name} ({sampler.num_calls} denoiser calls)", "seed": seed,
            "cfg_scale": cfg_scale, "vae": vae.source if vae else "none"}
    warnings = []
    if facts["random_weights"]:
        warnings.append(RANDOM_BANNER)
    if vae is not None and vae.random_weights:
        warnings.append("RANDOM VAE: the decoder has random weights (offline demo)")
    if warnings:
        info["Warning"] = "; ".join(warnings)
    return info


def sample_all(denoiser, sampler, planned, batch_size, seed, cfg_scale, vae, output, latent_size):
    """Run every batch through the sampler (and the VAE) into output, with progress bars."""
    device = denoiser.device
    noise = OfficialNoise(seed, device)
    images_bar = tqdm(total=len(planned), desc="images", unit="img", disable=None)
    steps_bar = tqdm(total=sampler.num_calls, desc="steps", unit="step", leave=False, disable=None)
    with images_bar, steps_bar, torch.inference_mode():
        for start in range(0, len(planned), batch_size):
            chunk = planned[start:start + batch_size]
            x = noise.initial(len(chunk), latent_size)  # (n, 4, L, L): drawn first, as sample.py
            y = batch_labels(chunk, noise, device)  # (n,)
            scale = torch.full((len(chunk),), cfg_scale, dtype=torch.float32, device=device)
            steps_bar.reset()
            x = sampler(denoiser, x, y, scale, noise, lambda info: steps_bar.update())
            if vae is None:
                output.add(x.float().cpu().numpy())  # (n, 4, L, L) float32 latents
            else:
                output.add(decode(vae, x))  # (n, H, W, 3) uint8
            images_bar.update(len(chunk))


SAMPLER_HELP = f"ddpm (learned sigma, 250 steps), ddim (eta 0, 50 steps), or a diffusers scheduler: " \
               f"{', '.join(DIFFUSERS_SCHEDULERS)} (20 steps) or a scheduler class name"


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("engine_or_graph", required=False)
@click.option("--class", "classes", multiple=True, help="ImageNet class 0..999; repeat or comma-separate. "
              "Default: sample.py's demo labels, or random ones with --num-samples.")
@click.option("--num-samples", type=int, help="Number of images (default: one per class).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds latents, labels and noise.")
@click.option("--steps", type=int, help="Sampling steps (default per sampler).")
@click.option("--sampler", default="ddpm", show_default=True, help=SAMPLER_HELP)
@click.option("--cfg-scale", type=float, default=4.0, show_default=True, help="Guidance scale (sample.py: 4.0; FID runs: 1.5).")
@click.option("--cfg-channels", type=click.Choice(["3", "4"]), help="Guided eps channels (graphs: from the manifest; torch: 3).")
@click.option("--vae", default="mse", show_default=True, help="ema | mse (hub) | PATH (local diffusers VAE) | random (offline demo) | none (write latents .npy).")
@click.option("--out", help="FILE.png (grid, 4 per row), FILE.npz (uint8 arr_0 for FID tools), DIR (one PNG each), FILE.npy with --vae none.")
@click.option("--batch-size", type=int, help="Samples per denoiser batch (default: up to the manifest's max).")
@click.option("--backend", type=click.Choice(BACKENDS), default="auto", show_default=True)
@click.option("--device", help="cpu, cuda, cuda:1 (default: cuda when available).")
@click.option("--threads", type=int, help="CPU threads for ONNX Runtime and torch (default: physical cores).")
@click.option("--ckpt", help="torch backend: PATH | auto | hf:ORG/NAME.")
@click.option("--random-init", type=int, help="torch backend: random weights with this seed (labelled as such).")
@click.option("--model", help="torch backend: XL/2, S/2, ... (with a file: must match its manifest).")
@click.option("--image-size", type=int, help="torch backend: 256 or 512 (with a file: must match its manifest).")
@click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16"]), default="float32",
              show_default=True, help="torch backend compute dtype.")
@click.option("--cuda-graphs", is_flag=True, help="TensorRT: capture one CUDA graph per batch size and replay it.")
def run(engine_or_graph, classes, num_samples, seed, steps, sampler, cfg_scale, cfg_channels, vae, out,
        batch_size, backend, device, threads, ckpt, random_init, model, image_size, dtype, cuda_graphs):
    """Sample DiT images from ENGINE_OR_GRAPH (.plan or .onnx), or from a checkpoint with --backend torch."""
    planned = plan_labels(parse_classes(classes), num_samples)
    chosen_sampler = sampler_from_name(sampler, steps)
    out = out or ("samples.npy" if vae == "none" else "sample.png")
    output_kind(out, latents=vae == "none")  # check --out before any slow work
    loaded_vae = load_vae(vae, "cpu")  # before the denoiser: an unreachable hub fails fast
    set_threads(threads)
    denoiser = load_denoiser(engine_or_graph, backend, device, ckpt, model, image_size,
                             None if cfg_channels is None else int(cfg_channels), dtype, random_init,
                             threads=threads, cuda_graphs=cuda_graphs)
    facts = model_facts(denoiser)
    batch_size = choose_batch_size(batch_size, len(planned), denoiser)
    if loaded_vae is not None:
        loaded_vae.model.to(denoiser.device)
    info = describe(facts, chosen_sampler, seed, cfg_scale, denoiser, loaded_vae)
    if "Warning" in info:
        click.secho(f"warning: {info['Warning']}", fg="red", bold=True, err=True)
    image_px = None if loaded_vae is None else facts["image_size"]
    with open_output(out, len(planned), image_px, facts["latent_size"], info) as output:
        sample_all(denoiser, chosen_sampler, planned, batch_size, seed, cfg_scale, loaded_vae, output,
                   facts["latent_size"])
    what = "latents" if loaded_vae is None else "images"
    click.echo(f"wrote {len(planned)} {what} to {out} ({info['model']}, {denoiser.name}, {info['sampler']}, "
               f"cfg {cfg_scale}, seed {seed}){' [' + info['Warning'] + ']' if 'Warning' in info else ''}",
               err=True)


def main(argv=None) -> None:
    """Console entry point: one line on stderr and exit 1 for user errors and Ctrl-C, no traceback."""
    logging.basicConfig(level=logging.WARNING, format="warning: %(message)s")  # e.g. CUDA graph fallback
    try:
        code = run.main(args=argv, prog_name="dit-run", standalone_mode=False)
    except DiTError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(1)
    except (KeyboardInterrupt, click.exceptions.Abort):
        click.echo("error: interrupted; no output was written", err=True)
        sys.exit(1)
    except click.ClickException as error:
        error.show()
        sys.exit(error.exit_code)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
