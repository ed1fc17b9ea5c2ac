"""Training and evaluation of the fashion model's judge: the small Fashion-MNIST classifier whose class accuracy
and feature distance score generated samples (runtime.tuning.judge defines, loads and applies it; its
weights, test-set statistics and card ship in dit_ref/shipped/).

    python -m benchmarks.fashion_classifier --train   # retrain and rewrite the three shipped files
    python -m benchmarks.fashion_classifier           # report the shipped classifier on the test set
"""

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from a checkout

from dit_ref import fashion_mnist  # noqa: E402
from dit_ref.errors import DiTError  # noqa: E402
from dit_ref.files import atomic_path, sha256_of_files, write_text_atomic  # noqa: E402
from runtime.tuning.frechet import frechet_distance, statistics  # noqa: E402
from runtime.tuning.judge import (CARD_PATH, FEATURE_DIM, STATISTICS_PATH, WEIGHTS_PATH,  # noqa: E402
                                  FashionClassifier, as_model_input, features, load_classifier, load_test_statistics,
                                  predict)

FLOOR_SAMPLE = 10_000  # training images compared with the test set for the card's reference FD


@dataclass(frozen=True)
class TrainSettings:
    """Everything that decides the weights (recorded in the card)."""

    seed: int = 0
    epochs: int = 6  # about 50 s each on one CPU thread; 6 reach 92.9 % test accuracy
    batch_size: int = 128
    learning_rate: float = 3e-3  # peak of a one-cycle schedule (linear warm-up, cosine down to ~0)
    weight_decay: float = 5e-4
    flip: bool = True  # random horizontal flips: clothes are nearly mirror-symmetric, labels unchanged


def train_classifier(seed: int = 0, epochs: int = 6, images=None, labels=None, max_steps: int | None = None,
                     on_step=None) -> FashionClassifier:
    """Train from scratch on images (default: the 60,000 training images); returns the model in eval mode.

    One seeded generator draws the order and the flips, torch.manual_seed the init and dropout, so a
    run is reproducible on the same machine and thread count. max_steps cuts a run short (tests).
    """
    settings = TrainSettings(seed=seed, epochs=epochs)
    if images is None:
        images, labels = fashion_mnist.load("train")
    x_all, y_all = as_model_input(images), torch.as_tensor(np.asarray(labels, dtype=np.int64))  # (N, 1, 28, 28), (N,)
    torch.manual_seed(seed)
    model = FashionClassifier().train()
    steps_per_epoch = len(x_all) // settings.batch_size  # the last partial batch is dropped
    total = steps_per_epoch * epochs if max_steps is None else min(max_steps, steps_per_epoch * epochs)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, settings.learning_rate, total_steps=max(total, 1))
    generator = torch.Generator().manual_seed(seed)
    for step in range(total):
        if step % steps_per_epoch == 0:
            order = torch.randperm(len(x_all), generator=generator)
        batch = order[(step % steps_per_epoch) * settings.batch_size:][:settings.batch_size]
        x, y = augment(x_all[batch], settings, generator), y_all[batch]
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if on_step is not None:
            on_step(step, total, float(loss.detach()))
    return model.eval().requires_grad_(False)


def augment(x: torch.Tensor, settings: TrainSettings, generator: torch.Generator) -> torch.Tensor:
    """x (N, 1, 28, 28) with a random half mirrored left-right (if settings.flip)."""
    if not settings.flip:
        return x
    flipped = torch.rand(len(x), generator=generator) < 0.5  # (N,)
    return torch.where(flipped[:, None, None, None], x.flip(3), x)


def per_class_accuracy(predictions: np.ndarray, labels: np.ndarray) -> list[float]:
    """Accuracy within each of the 10 classes, in CLASS_NAMES order."""
    return [float((predictions[labels == k] == k).mean()) for k in range(len(fashion_mnist.CLASS_NAMES))]


def noise_images(n: int, seed: int = 0) -> torch.Tensor:
    """n images of standard Gaussian noise clamped to [-1, 1]: what an untrained DiT returns."""
    return torch.randn((n, 1, 28, 28), generator=torch.Generator().manual_seed(seed)).clamp(-1.0, 1.0)


def evaluate(model: FashionClassifier, test_mu=None, test_sigma=None) -> dict:
    """Test accuracy (overall, per class) and reference Fréchet distances against the test statistics."""
    images, labels = fashion_mnist.load("test")
    train_images, _ = fashion_mnist.load("train")
    if test_mu is None:
        test_mu, test_sigma = statistics(features(model, images))
    picked = np.random.default_rng(0).choice(len(train_images), FLOOR_SAMPLE, replace=False)
    predictions = predict(model, images)

    def distance(sample) -> float:
        return frechet_distance(*statistics(features(model, sample)), test_mu, test_sigma)

    return {"test_accuracy": float((predictions == labels).mean()),
            "per_class_accuracy": per_class_accuracy(predictions, labels),
            "fd_train_10k": distance(train_images[picked]), "fd_train_2k": distance(train_images[picked[:2000]]),
            "fd_test_2k": distance(images[:2000]), "fd_noise_2k": distance(noise_images(2000))}


def save_classifier(model: FashionClassifier, path: Path = WEIGHTS_PATH) -> None:
    """The weights as safetensors, written atomically."""
    from safetensors.torch import save_file

    with atomic_path(path) as temporary:
        save_file({name: tensor.contiguous() for name, tensor in model.state_dict().items()}, str(temporary))


def save_test_statistics(model: FashionClassifier, path: Path = STATISTICS_PATH, weights: Path = WEIGHTS_PATH):
    """Mean and covariance of the test set's features, tagged with the weights' sha256; returns (mu, sigma)."""
    images, _ = fashion_mnist.load("test")
    mu, sigma = statistics(features(model, images))
    with atomic_path(path) as temporary, open(temporary, "wb") as stream:
        np.savez(stream, mu=mu, sigma=sigma, n=len(images), classifier_sha256=sha256_of_files(weights))
    return mu, sigma


def card_text(settings: TrainSettings, results: dict, run: dict) -> str:
    """The markdown card shipped beside the weights."""
    rows = "\n".join(f"| {name} | {accuracy:.3f} |"
                     for name, accuracy in zip(fashion_mnist.CLASS_NAMES, results["per_class_accuracy"]))
    return f"""# Fashion-MNIST quality classifier

Scores generated Fashion-MNIST samples (runtime/tuning/judge.py; trained by benchmarks/fashion_classifier.py):
class accuracy, and the
Fréchet distance of its {FEATURE_DIM}-d penultimate features to the test set's (statistics in
fashion-test-features.npz, tied to these weights by sha256).

- Architecture: 3 x (conv 3x3, BatchNorm, ReLU, max-pool 2) with 32/64/128 channels (28 -> 14 -> 7 -> 3 px),
  flatten, linear {128 * 9} -> {FEATURE_DIM} + ReLU (the features), dropout 0.3, linear {FEATURE_DIM} -> 10.
  {run["parameters"]:,} parameters, {run["file_bytes"] / 1e6:.2f} MB float32.
- Training: the 60,000 training images, {settings.epochs} epochs, batch {settings.batch_size}, AdamW
  (weight decay {settings.weight_decay}), one-cycle learning rate peaking at {settings.learning_rate},
  random horizontal flips, seed {settings.seed}; {run["wall_seconds"]:.0f} s wall, {run["cpu_seconds"]:.0f} s CPU
  on {run["threads"]} thread(s), torch {torch.__version__}.
- Test accuracy (10,000 images): **{results["test_accuracy"]:.4f}**

| class | accuracy |
|---|---|
{rows}

Reference Fréchet distances to the test-set statistics (lower is closer; biased upwards for small n):

| images | n | FD |
|---|---|---|
| training images (random sample, numpy seed 0): the floor a perfect generator reaches | {FLOOR_SAMPLE:,} | {results["fd_train_10k"]:.2f} |
| the first 2,000 of that sample: the floor at n = 2,000 | 2,000 | {results["fd_train_2k"]:.2f} |
| the first test images (part of the statistics themselves) | 2,000 | {results["fd_test_2k"]:.2f} |
| Gaussian noise clamped to [-1, 1] | 2,000 | {results["fd_noise_2k"]:.1f} |

Reproduce (about {run["wall_seconds"] / 60:.0f} min on one CPU thread; same machine and thread count give identical weights):

    python -m benchmarks.fashion_classifier --train --seed {settings.seed} --epochs {settings.epochs}
"""


def report(results: dict) -> None:
    print(f"test accuracy {results['test_accuracy']:.4f}")
    for name, accuracy in zip(fashion_mnist.CLASS_NAMES, results["per_class_accuracy"]):
        print(f"  {name:12s} {accuracy:.3f}")
    print(f"FD train 10k {results['fd_train_10k']:.3f}, train 2k {results['fd_train_2k']:.3f}, "
          f"test 2k {results['fd_test_2k']:.3f}, "
          f"noise 2k {results['fd_noise_2k']:.1f}")


def train_and_ship(settings: TrainSettings, threads: int) -> dict:
    """Train, then write the weights, the test statistics and the card; returns the evaluation."""
    start, cpu_start = time.perf_counter(), time.process_time()

    def on_step(step, total, loss):
        if (step + 1) % 100 == 0 or step + 1 == total:
            print(f"step {step + 1}/{total} loss {loss:.4f} ({time.perf_counter() - start:.0f} s)", flush=True)

    model = train_classifier(settings.seed, settings.epochs, on_step=on_step)
    run = {"wall_seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu_start,
           "threads": threads, "parameters": sum(p.numel() for p in model.parameters())}
    save_classifier(model)
    run["file_bytes"] = WEIGHTS_PATH.stat().st_size
    results = evaluate(model, *save_test_statistics(model))
    write_text_atomic(CARD_PATH, card_text(settings, results, run))
    print(json.dumps({**run, "settings": asdict(settings)}))
    print(f"wrote {WEIGHTS_PATH}, {STATISTICS_PATH}, {CARD_PATH}")
    return results


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="The Fashion-MNIST quality classifier: train it, or report it.")
    parser.add_argument("--train", action="store_true", help="train from scratch and rewrite the shipped files")
    parser.add_argument("--seed", type=int, default=TrainSettings.seed)
    parser.add_argument("--epochs", type=int, default=TrainSettings.epochs)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the weights depend on it)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        if args.train:
            results = train_and_ship(TrainSettings(seed=args.seed, epochs=args.epochs), args.threads)
        else:
            model = load_classifier()
            results = evaluate(model, *load_test_statistics())
        report(results)
    except DiTError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
