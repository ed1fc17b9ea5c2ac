"""Runtime fixtures: the tiny S/8 graphs (FP32, FP16), its PyTorch reference, a tiny local VAE."""

import pytest
import torch

from runtime.backends.torch_backend import TorchDenoiser

MODEL, IMAGE_SIZE, SEED = "S/8", 256, 0  # 16 tokens: the fastest DiT at 256 px


@pytest.fixture(scope="session")
def graphs(exported_graph):
    """{"fp32": path, "fp16": path} of the random S/8 (seed 0) graphs, exported once per session."""
    return {precision: exported_graph(MODEL, IMAGE_SIZE, precision, seed=SEED) for precision in ("fp32", "fp16")}


@pytest.fixture(scope="session")
def reference(tiny_model):
    """The same random S/8 through the PyTorch backend, float32 on CPU."""
    return TorchDenoiser(tiny_model(MODEL, IMAGE_SIZE, SEED), device="cpu", cfg_channels=3,
                         source=f"random init (seed {SEED})", random_weights=True)


@pytest.fixture(scope="session")
def tiny_vae_dir(tmp_path_factory):
    """A diffusers AutoencoderKL folder with the SD VAE's 8x upsampling but 8 channels (fast)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(8, 8, 8, 8), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=1, latent_channels=4,
                        norm_num_groups=4, sample_size=256)
    path = tmp_path_factory.mktemp("tiny-vae")
    vae.save_pretrained(path)
    return path


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One intra-op thread: on a shared 2-core machine, spinning thread pools make S/8 calls 20x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
