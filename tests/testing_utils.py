"""Helpers the tests import by name (conftest.py files are per folder, so they are not importable)."""

import functools

from dit_ref import build_model, randomize_weights_
from export.verify import relative_error as max_rel_error  # noqa: F401 (one definition, for the tests)


GPU_MARKERS = ("gpu", "trt", "onnxruntime_cuda")  # tests needing a CUDA device, TensorRT, ORT's CUDA provider


def required_markers(value: str) -> set[str]:
    """The markers whose missing piece fails a test instead of skipping it (conftest.py): DIT_REQUIRE_GPU "1" (all),
    "" or "0" (none), or a comma list of markers."""
    if value in ("", "0"):
        return set()
    return set(GPU_MARKERS) if value == "1" else {marker.strip() for marker in value.split(",") if marker.strip()}


@functools.cache
def random_model(name: str, image_size: int = 256, seed: int = 0, numerics: str = "official"):
    """A DiT with every tensor randomised (seeded), in eval mode; cached for the session."""
    model = randomize_weights_(build_model(name, image_size, numerics), seed)
    return model.eval().requires_grad_(False)


# A VAE of the SD VAE's form (four up blocks, 8x upsampling, a mid-block attention, GroupNorm) at a width that
# decodes 256 px in a fraction of a second.
TINY_VAE_CONFIG = {"block_out_channels": (8, 8, 16, 16), "down_block_types": ("DownEncoderBlock2D",) * 4,
                   "up_block_types": ("UpDecoderBlock2D",) * 4, "layers_per_block": 1, "latent_channels": 4,
                   "norm_num_groups": 4, "sample_size": 256}


@functools.cache
def random_vae_dir(root, seed: int = 0) -> str:
    """A diffusers AutoencoderKL folder of TINY_VAE_CONFIG with every tensor randomised (seeded) under root."""
    from dit_ref.vae import random_vae

    path = f"{root}/tiny-vae-seed{seed}"
    random_vae(seed, TINY_VAE_CONFIG, every_tensor=True).save_pretrained(path)
    return path
