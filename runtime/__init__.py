"""The runtime: denoiser backends, samplers, decoders and generate() behind `dit-run`.

    from runtime import generate, load_denoiser, sampler_from_name

    with load_denoiser("fashion-28-fp16.onnx") as denoiser:  # or a .plan, or backend="torch", ckpt=...
        for batch in generate(denoiser, [0, 1, 2], sampler_from_name("ddim", 50), seed=0, decoder="auto"):
            ...  # batch.samples: uint8 (n, H, W, channels)

Heavy optional dependencies (tensorrt, onnxruntime, diffusers) load only when used; nothing here
imports export/ or onnx.
"""

from runtime.backends import BACKENDS, load_denoiser
from runtime.generate import Batch, generate
from runtime.sampling import sampler_from_name
from runtime.vae import load_decoder

__all__ = ["BACKENDS", "Batch", "generate", "load_decoder", "load_denoiser", "sampler_from_name"]
