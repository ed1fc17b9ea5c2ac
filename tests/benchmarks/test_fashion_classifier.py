"""Training the fashion model's judge (benchmarks/fashion_classifier.py): reproducible weights, and the shipped
statistics tied to the shipped weights. The judge itself is tested in tests/runtime/test_judge.py.
"""

import numpy as np
import pytest
import torch

from benchmarks import fashion_classifier
from dit_ref import DiTError
from runtime.tuning import judge


def test_statistics_refused_for_other_weights(tmp_path):
    other = tmp_path / "other.safetensors"
    torch.manual_seed(0)
    fashion_classifier.save_classifier(judge.FashionClassifier(), other)
    with pytest.raises(DiTError, match="other classifier weights"):
        judge.load_test_statistics(weights=other)


def test_training_is_reproducible():
    """Same seed, same weights, bit for bit (20 steps on 256 random images: no dataset needed)."""
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (256, 28, 28), dtype=np.uint8), rng.integers(0, 10, 256)
    runs = [fashion_classifier.train_classifier(seed, 10, images, labels, max_steps=20).state_dict() for seed in (0, 0, 1)]
    largest = max(float((runs[0][k].float() - runs[1][k].float()).abs().max()) for k in runs[0])
    moved = max(float((runs[0][k].float() - runs[2][k].float()).abs().max()) for k in runs[0])
    print(f"max |difference| between two seed-0 runs: {largest}; seed 0 vs seed 1: {moved:.3f}")
    assert largest == 0.0
    assert moved > 0.01
