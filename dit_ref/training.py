"""Training a class-conditional DiT with the official objective, small enough for a CPU.

What facebookresearch/DiT's train.py does, on one process: the official initialisation, uniform
timesteps over 1000, MSE on eps plus the variational-bound term for the learned sigma
(dit_ref.diffusion.training_losses), labels dropped to the null class with probability 0.1 so that
classifier-free guidance works, AdamW without weight decay, and EMA weights for sampling. One
seeded generator draws every random number, so a run is reproducible on the same machine, and the
learning rate does not depend on the total step count, so the EMA after K steps of a long run is
the EMA of a run with --steps K.

    python -m dit_ref.training --steps 6000 --out dit_ref/shipped   # the shipped "fashion" model
"""

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from dit_ref import configs, fashion_mnist
from dit_ref.diffusion import q_sample, schedule_from_timesteps, training_losses
from dit_ref.files import write_text_atomic
from dit_ref.model import DiT

WEIGHTS_FILE = "fashion.safetensors"


@dataclass(frozen=True)
class TrainSettings:
    """Everything that decides the weights (recorded in the model card)."""

    model: str = "fashion"
    steps: int = 6000
    batch_size: int = 128
    learning_rate: float = 5e-4  # above DiT's 1e-4: a small model and few steps
    ema_decay: float = 0.999
    ema_warmup: int = 10  # EMA decay min(ema_decay, (1 + step) / (ema_warmup + step)): a short warm-up
    class_dropout: float = 0.1
    seed: int = 0
    threads: int = 2


def official_init_(model: DiT) -> DiT:
    """facebookresearch/DiT's initialize_weights: xavier linears, adaLN-Zero, zero final layer."""
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            nn.init.zeros_(module.bias)
    weight = model.x_embedder.proj.weight.data
    nn.init.xavier_uniform_(weight.view(weight.shape[0], -1))
    nn.init.zeros_(model.x_embedder.proj.bias)
    nn.init.normal_(model.y_embedder.embedding_table.weight, std=0.02)
    nn.init.normal_(model.t_embedder.mlp[0].weight, std=0.02)
    nn.init.normal_(model.t_embedder.mlp[2].weight, std=0.02)
    for layer in [block.adaLN_modulation[-1] for block in model.blocks] + [
            model.final_layer.adaLN_modulation[-1], model.final_layer.linear]:
        nn.init.zeros_(layer.weight)
        nn.init.zeros_(layer.bias)
    return model


@torch.no_grad()
def update_ema(ema: DiT, model: DiT, decay: float) -> None:
    for ema_param, param in zip(ema.parameters(), model.parameters()):
        if param.requires_grad:
            ema_param.mul_(decay).add_(param.detach(), alpha=1 - decay)


def train_step(model, optimizer, schedule, x0, y, settings, generator) -> dict:
    """One optimiser step on a batch x0 (N, C, L, L) in [-1, 1], labels y (N,); returns the mean losses."""
    n = len(x0)
    t = torch.randint(0, configs.NUM_TIMESTEPS, (n,), generator=generator)  # (N,)
    noise = torch.randn(x0.shape, generator=generator)  # (N, C, L, L)
    dropped = torch.rand(n, generator=generator) < settings.class_dropout
    y = torch.where(dropped, model.config.null_class, y)  # (N,)
    x_t = q_sample(schedule, x0, t, noise)
    losses = training_losses(schedule, model(x_t, t, y), x0, x_t, t, noise)
    optimizer.zero_grad(set_to_none=True)
    losses["loss"].mean().backward()
    optimizer.step()
    return {name: float(value.detach().mean()) for name, value in losses.items()}


def train(settings: TrainSettings, images: torch.Tensor, labels: torch.Tensor, on_step=None):
    """Train from scratch; returns (EMA model, per-step loss records). images (N, C, L, L) in [-1, 1]."""
    torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)
    config = configs.get_config(settings.model)
    model = official_init_(DiT(config, config.image_sizes[0])).train()
    ema = official_init_(DiT(config, config.image_sizes[0])).requires_grad_(False)
    ema.load_state_dict(model.state_dict())
    trainable = [param for param in model.parameters() if param.requires_grad]  # pos_embed is fixed
    optimizer = torch.optim.AdamW(trainable, lr=settings.learning_rate, weight_decay=0)
    schedule = schedule_from_timesteps(range(configs.NUM_TIMESTEPS))
    generator = torch.Generator().manual_seed(settings.seed)
    order, cursor, history = torch.randperm(len(images), generator=generator), 0, []
    for step in range(settings.steps):
        if cursor + settings.batch_size > len(order):  # a new epoch: reshuffle
            order, cursor = torch.randperm(len(images), generator=generator), 0
        batch = order[cursor:cursor + settings.batch_size]
        cursor += settings.batch_size
        record = train_step(model, optimizer, schedule, images[batch], labels[batch], settings, generator)
        update_ema(ema, model, min(settings.ema_decay, (1 + step) / (settings.ema_warmup + step)))
        history.append(record)
        if on_step is not None:
            on_step(step, record, ema)
    return ema.eval(), history


def save_weights(model: DiT, path: Path) -> None:
    """The EMA weights as safetensors (official key layout), written atomically."""
    from safetensors.torch import save_file

    from dit_ref.files import atomic_path

    with atomic_path(path) as temporary:
        save_file({name: tensor.contiguous() for name, tensor in model.state_dict().items()}, str(temporary))


def smoothed(values: list[float], window: int = 50) -> list[float]:
    """Running mean over the last `window` values."""
    out, total = [], 0.0
    for k, value in enumerate(values):
        total += value - (values[k - window] if k >= window else 0.0)
        out.append(total / min(k + 1, window))
    return out


def plot_losses(history: list[dict], path: Path) -> None:
    """Loss curve PNG: mse and vb, running mean over 50 steps."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axis = pyplot.subplots(figsize=(6, 3.5), dpi=100)
    for key in ("loss", "mse", "vb"):
        axis.plot(smoothed([record[key] for record in history]), label=key)
    axis.set_yscale("log")
    axis.set_xlabel("step")
    axis.set_ylabel("loss (running mean of 50 steps)")
    axis.legend()
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)
    pyplot.close(figure)


def model_card(record: dict) -> str:
    """The model card of the shipped weights, from training.json's record."""
    settings, config = record["settings"], configs.get_config(record["settings"]["model"])
    command = "python -m dit_ref.training " + " ".join(
        f"--{key.replace('_', '-')} {value}" for key, value in settings.items() if key != "model") + " --out dit_ref/shipped"
    final = record["final_loss_mean_of_last_100"]
    return f"""# fashion: a small class-conditional DiT trained on Fashion-MNIST

Weights: `fashion.safetensors` (EMA, official DiT key layout, float32). Trained by this project on
its CI-class machine to give the toolchain a model that really draws, offline.

- **Data**: Fashion-MNIST (Xiao, Rasul & Vollgraf 2017, MIT licence), the 60,000 training images
  from Debian's `dataset-fashion-mnist`, 28 x 28 grayscale scaled to [-1, 1], 10 classes
  ({", ".join(f"{k} {name}" for k, name in enumerate(fashion_mnist.CLASS_NAMES))}).
- **Model**: DiT in pixel space, depth {config.depth}, width {config.hidden_size}, {config.num_heads} heads,
  patch {config.patch_size} ({config.num_tokens(28)} tokens), 1 channel, learned sigma,
  {configs.param_count(config, 28) / 1e6:.2f} M parameters; `dit-export --list-models` shows it as `fashion`.
- **Objective** (facebookresearch/DiT train.py): MSE on eps + the variational bound term for the
  learned sigma, 1000 linear-beta timesteps, labels dropped to the null class with probability
  {settings["class_dropout"]} (classifier-free guidance), official initialisation (adaLN-Zero).
- **Optimisation**: AdamW, learning rate {settings["learning_rate"]:g}, no weight decay, batch {settings["batch_size"]},
  {settings["steps"]} steps ({settings["steps"] * settings["batch_size"] / 60000:.1f} epochs); EMA decay {settings["ema_decay"]}
  with warm-up min(decay, (1 + step) / ({settings["ema_warmup"]} + step)); seed {settings["seed"]}, {settings["threads"]} threads.
- **Run**: {record["wall_seconds"] / 60:.0f} min wall time ({record["images_per_second"]:.0f} images/s) on 2 CPU cores shared
  with other work, torch {record["torch"]}. Final loss (mean of the last 100 steps): {final["loss"]:.4f}
  (mse {final["mse"]:.4f}, vb {final["vb"]:.4f}). Loss curve: `loss.png`; every step's loss: `training.json`.
- **Reproduce** (one seeded generator draws every random number, so the same command on the same
  machine type and thread count gives the same weights; checked on a tiny slice in
  tests/dit_ref/test_training.py, not by a second full run):

      {command}

- **Quality**: see README.md "The small trained model" (class accuracy and Fréchet distance from
  the shipped classifier, per precision, sampler and guidance scale).
"""


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Train the small Fashion-MNIST DiT (the shipped 'fashion' model).")
    defaults = TrainSettings()
    for field, value in asdict(defaults).items():
        parser.add_argument(f"--{field.replace('_', '-')}", type=type(value), default=value)
    parser.add_argument("--out", type=Path, default=Path("dit_ref/shipped"))
    parser.add_argument("--data", type=Path, default=fashion_mnist.DATA_DIR)
    parser.add_argument("--snapshot-every", type=int, default=500, help="also write the EMA weights every N steps")
    args = parser.parse_args(argv)
    settings = TrainSettings(**{field: getattr(args, field) for field in asdict(defaults)})
    images, labels = fashion_mnist.load("train", args.data)
    x0, y = fashion_mnist.to_model_range(images), torch.from_numpy(labels)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    def on_step(step, record, ema):
        done = step + 1
        if done % 50 == 0 or done == settings.steps:
            rate = done * settings.batch_size / (time.perf_counter() - start)
            print(f"step {done}/{settings.steps} loss {record['loss']:.4f} mse {record['mse']:.4f} "
                  f"vb {record['vb']:.4f} ({rate:.0f} img/s)", flush=True)
        if done % args.snapshot_every == 0 and done < settings.steps:
            save_weights(ema, args.out / f"snapshot-{done}.safetensors")

    ema, history = train(settings, x0, y, on_step)
    seconds = time.perf_counter() - start
    save_weights(ema, args.out / WEIGHTS_FILE)
    record = {"settings": asdict(settings), "wall_seconds": round(seconds, 1), "torch": torch.__version__,
              "images_per_second": round(settings.steps * settings.batch_size / seconds, 1),
              "final_loss_mean_of_last_100": {key: sum(r[key] for r in history[-100:]) / min(100, len(history))
                                              for key in ("loss", "mse", "vb")},
              "loss_every_step": [round(r["loss"], 5) for r in history]}
    write_text_atomic(args.out / "training.json", json.dumps(record, indent=1) + "\n")
    plot_losses(history, args.out / "loss.png")
    write_text_atomic(args.out / "MODEL_CARD.md", model_card(record))
    print(f"wrote {args.out / WEIGHTS_FILE} after {settings.steps} steps in {seconds / 60:.1f} min")


if __name__ == "__main__":
    main()
