"""Reference PyTorch DiT with the official numerics, weight formats and diffusion math."""

from dit_ref.configs import CONFIGS, DiTConfig, get_config, gflops, latent_size, param_count
from dit_ref.errors import DiTError
from dit_ref.model import DiT, build_model, randomize_weights_
from dit_ref.weights import LoadedDiT, load_dit

__all__ = [
    "CONFIGS", "DiT", "DiTConfig", "DiTError", "LoadedDiT", "build_model", "get_config", "gflops",
    "latent_size", "load_dit", "param_count", "randomize_weights_",
]
