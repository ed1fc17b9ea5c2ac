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


# --- the halves of tests/gpu/test_tensorrt_gpu.py that need no GPU: the CPU suite runs them too -----------------

def engine_case_inputs(name: str, image_size: int, batch: int, seed: int):
    """(x, t, y, cfg_scale) of one engine check on the CPU: export's seeded inputs, row 0 unguided (cfg scale 1), so
    the graph's `guided` input holds a strict subset of the rows."""
    from export.guided import example_inputs

    x, t, y, cfg_scale = example_inputs(random_model(name, image_size), batch, seed)
    cfg_scale[0] = 1.0
    return x, t, y, cfg_scale


def graph_feeds(manifest, x, t, y, cfg_scale) -> dict:
    """The graph's named inputs for one call, as every denoiser builds them (Denoiser.graph_inputs: `guided`, the rows
    whose cfg scale is not 1, for a graph of format 4)."""
    from runtime.denoiser import Denoiser

    class Feeds(Denoiser):
        def __init__(self):
            self.manifest = manifest

    return Feeds().graph_inputs(x, t, y, cfg_scale)


def onnxruntime_outputs(graph, x, t, y, cfg_scale):
    """The graph in ONNX Runtime on the CPU, its I/O checked against its manifest: eps and var_values, (B, 2C, L, L)."""
    import torch

    from dit_ref.contract import read_manifest
    from dit_ref.runners import open_runner

    manifest = read_manifest(graph)
    with open_runner(graph, "onnxruntime", "cpu", manifest=manifest) as runner:
        outputs = runner.run(graph_feeds(manifest, x, t, y, cfg_scale))
    return torch.cat([outputs[name] for name in manifest.output_names], dim=1)


def reference_outputs(name: str, image_size: int, x, t, y, cfg_scale, cfg_channels: int = 3):
    """The PyTorch guided forward of random_model(name, image_size): eps and var_values, (B, 2C, L, L)."""
    import torch

    with torch.no_grad():
        return torch.cat(random_model(name, image_size).guided_forward(x, t, y, cfg_scale, cfg_channels), dim=1)


def capture_keys(manifest, calls) -> list:
    """The CUDA graphs a TensorRT runner with cuda_graphs captures for these calls ((x, t, y, cfg_scale) each), sorted:
    one per set of input shapes (dit_ref.runners.tensorrt_binding.capture_key), i.e. per (B, U)."""
    from dit_ref.runners.tensorrt_binding import capture_key

    return sorted({capture_key(graph_feeds(manifest, *call)) for call in calls})
