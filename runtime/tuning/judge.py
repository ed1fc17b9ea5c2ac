"""The population judge: how good a set of samples is as a whole, for the yardstick and the tuner alike.

A Judge predicts the class of each sample and gives its features; the samples are scored two ways:
  - class accuracy: the share of samples the judge assigns to the class they were asked for;
  - Fréchet distance (runtime.tuning.frechet) between Gaussians fitted to the judge's features of the
    samples and of real images (the judge's reference statistics).
Both depend on the judge, so numbers compare only between runs scored by the same one.

The shipped judge is the fashion model's: a small classifier trained on Fashion-MNIST
(benchmarks/fashion_classifier.py trains it), shipped beside the model in dit_ref/shipped/ with the mean
and covariance of its features on the 10,000 test images; the statistics file records the weights'
sha256 and is refused if they differ.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn

from dit_ref.errors import DiTError
from dit_ref.fashion_mnist import CLASS_NAMES
from dit_ref.files import sha256_of_files
from dit_ref.weights import SHIPPED_DIR
from runtime.tuning import bootstrap
from runtime.tuning.frechet import frechet_distance, statistics

WEIGHTS_PATH = SHIPPED_DIR / "fashion-classifier.safetensors"
STATISTICS_PATH = SHIPPED_DIR / "fashion-test-features.npz"
CARD_PATH = SHIPPED_DIR / "fashion-classifier.md"
FEATURE_DIM = 128
BATCH = 500  # images per forward pass when scoring: bounds memory, not results
TRAIN_COMMAND = "python -m benchmarks.fashion_classifier --train"


class Judge(Protocol):
    """What scores a model's samples as a population: a classifier of its classes and feature statistics of real
    images. Images come as the model's generate() gives them (see each judge for the forms it takes)."""

    name: str

    def predict(self, images) -> np.ndarray: ...  # (N,) int64 classes

    def features(self, images) -> np.ndarray: ...  # (N, F) float64

    def reference_statistics(self) -> tuple[np.ndarray, np.ndarray]: ...  # (mu (F,), sigma (F, F)) of real images


class FashionClassifier(nn.Module):
    """Three conv blocks (28 -> 14 -> 7 -> 3 px), a 128-d feature layer, a 10-way linear head."""

    def __init__(self, widths=(32, 64, 128), feature_dim: int = FEATURE_DIM, dropout: float = 0.3):
        super().__init__()
        blocks, channels = [], 1
        for width in widths:
            blocks += [nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                       nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            channels = width
        self.convs = nn.Sequential(*blocks)
        self.embed = nn.Sequential(nn.Flatten(), nn.Linear(channels * 3 * 3, feature_dim), nn.ReLU(inplace=True))
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(feature_dim, len(CLASS_NAMES)))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, 1, 28, 28) in [-1, 1] -> (N, F), the penultimate activations the Fréchet distance uses."""
        return self.embed(self.convs(x))  # (N, C, 3, 3) -> (N, F)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # (N, 10) logits


def as_model_input(images) -> torch.Tensor:
    """uint8 (N, 28, 28) or (N, 28, 28, 1) (as generate() decodes), or float (N, 1, 28, 28) in [-1, 1], numpy or
    torch -> float32 (N, 1, 28, 28).

    Floats are clamped to [-1, 1], as they would be when saved as an image, so a sampler's small
    overshoot is not scored as a different distribution.
    """
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.array(images))  # a copy: fashion_mnist's arrays are read-only
    if not isinstance(images, torch.Tensor):
        raise DiTError(f"images must be a numpy array or torch tensor, not {type(images).__name__}")
    if images.dtype == torch.uint8:
        if images.ndim == 4 and images.shape[3] == 1:
            images = images[..., 0]  # (N, 28, 28, 1) -> (N, 28, 28)
        if images.ndim != 3 or tuple(images.shape[1:]) != (28, 28):
            raise DiTError(f"uint8 images must be (N, 28, 28) or (N, 28, 28, 1), got {tuple(images.shape)}")
        return images.float().div(127.5).sub(1.0).unsqueeze(1)  # (N, 1, 28, 28), as to_model_range
    if not images.is_floating_point() or images.ndim != 4 or tuple(images.shape[1:]) != (1, 28, 28):
        raise DiTError(f"images must be uint8 (N, 28, 28) or float (N, 1, 28, 28) in [-1, 1], "
                       f"got {images.dtype} {tuple(images.shape)}")
    return images.detach().float().cpu().clamp(-1.0, 1.0)


@torch.no_grad()
def _batched(function, images) -> torch.Tensor:
    """function applied to images in chunks of BATCH, concatenated."""
    x = as_model_input(images)
    return torch.cat([function(x[i:i + BATCH]) for i in range(0, len(x), BATCH)])


def features(model: FashionClassifier, images) -> np.ndarray:
    """Penultimate features (N, F) float64 of images (see as_model_input for accepted forms)."""
    return _batched(model.eval().features, images).double().numpy()


def predict(model: FashionClassifier, images) -> np.ndarray:
    """Predicted class (N,) int64."""
    return _batched(model.eval(), images).argmax(1).numpy()


def load_classifier(path: Path = WEIGHTS_PATH) -> FashionClassifier:
    """The shipped classifier in eval mode; every key and shape checked."""
    from safetensors.torch import load_file

    if not Path(path).is_file():
        raise DiTError(f"{path} not found; train it with: {TRAIN_COMMAND}")
    state = load_file(str(path))
    model = FashionClassifier()
    expected = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    found = {name: tuple(tensor.shape) for name, tensor in state.items()}
    if expected != found:
        wrong = sorted(set(expected.items()) ^ set(found.items()))[:3]
        raise DiTError(f"{path} is not a FashionClassifier checkpoint (first differences: {wrong}); retrain with "
                       f"{TRAIN_COMMAND}")
    model.load_state_dict(state)
    return model.eval().requires_grad_(False)


def load_test_statistics(path: Path = STATISTICS_PATH, weights: Path = WEIGHTS_PATH) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) of the test set's features, refused if they were made with other weights."""
    if not Path(path).is_file():
        raise DiTError(f"{path} not found; make it with: {TRAIN_COMMAND}")
    with np.load(path) as stored:
        mu, sigma, made_with = stored["mu"], stored["sigma"], str(stored["classifier_sha256"])
    if made_with != sha256_of_files(weights):
        raise DiTError(f"{path} was computed with other classifier weights than {weights}; rerun {TRAIN_COMMAND}")
    return mu, sigma


@dataclass(frozen=True)
class FashionJudge:
    """The fashion model's judge: the shipped classifier and its test-set statistics (a Judge)."""

    model: FashionClassifier
    mu: np.ndarray  # (F,) mean of the test images' features
    sigma: np.ndarray  # (F, F) their covariance
    name: str = "fashion-classifier"

    def predict(self, images) -> np.ndarray:
        return predict(self.model, images)

    def features(self, images) -> np.ndarray:
        return features(self.model, images)

    def reference_statistics(self) -> tuple[np.ndarray, np.ndarray]:
        return self.mu, self.sigma


def fashion_judge() -> FashionJudge:
    """The shipped classifier with the test set's statistics."""
    return FashionJudge(load_classifier(), *load_test_statistics())


JUDGES = {"fashion": fashion_judge}  # model name -> its judge's loader


def judge_for(model: str) -> Judge | None:
    """The judge of a model (None: the model has none, so it is judged by paired fidelity alone)."""
    return JUDGES[model]() if model in JUDGES else None


def score(judge: Judge, images, labels, resamples: int | None = None, seed: int = 0) -> dict:
    """{"n", "class_accuracy", "frechet_distance"} of images asked for labels, and with resamples each one's 95%
    bootstrap interval ("class_accuracy_interval", "frechet_distance_interval"; the Fréchet one costs ~2.5 ms a
    resample at 1,000 images). The distance is biased upwards for small n: compare scores of equal n only."""
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)  # (N,)
    if len(labels) != len(images):
        raise DiTError(f"{len(images)} images but {len(labels)} labels")
    correct = judge.predict(images) == labels  # (N,) bool
    feature_rows = judge.features(images)  # (N, F) float64
    mu, sigma = judge.reference_statistics()
    scores = {"n": len(labels), "class_accuracy": float(correct.mean()),
              "frechet_distance": frechet_distance(*statistics(feature_rows), mu, sigma)}
    if resamples is not None:
        scores["class_accuracy_interval"] = bootstrap.mean_interval(correct, resamples, seed)
        scores["frechet_distance_interval"] = bootstrap.frechet_interval(feature_rows, mu, sigma, resamples, seed)
    return scores
