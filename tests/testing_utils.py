"""Helpers the tests import by name (conftest.py files are per folder, so they are not importable)."""

import functools

import torch

from dit_ref import build_model, randomize_weights_


@functools.cache
def random_model(name: str, image_size: int = 256, seed: int = 0, numerics: str = "official"):
    """A DiT with every tensor randomised (seeded), in eval mode; cached for the session."""
    model = randomize_weights_(build_model(name, image_size, numerics), seed)
    return model.eval().requires_grad_(False)


def max_rel_error(actual, expected) -> float:
    """max |actual - expected| / max |expected|: error relative to the output's scale."""
    actual, expected = torch.as_tensor(actual).double(), torch.as_tensor(expected).double()
    return ((actual - expected).abs().max() / expected.abs().max()).item()
