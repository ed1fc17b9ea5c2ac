"""Helpers the tests import by name (conftest.py files are per folder, so they are not importable)."""

import functools

from dit_ref import build_model, randomize_weights_
from export.verify import relative_error as max_rel_error  # noqa: F401 (one definition, for the tests)


@functools.cache
def random_model(name: str, image_size: int = 256, seed: int = 0, numerics: str = "official"):
    """A DiT with every tensor randomised (seeded), in eval mode; cached for the session."""
    model = randomize_weights_(build_model(name, image_size, numerics), seed)
    return model.eval().requires_grad_(False)
