"""The SD VAE decoder -> ONNX graph (FP32, or FP16- or BF16-typed) + its manifest -> TensorRT engine: dit-export --vae.

    from export.vae_export import export_decoder

    result = export_decoder("mse", 256, precision="fp16", out="engines/")   # ema | mse | DIR | random
    result.graph, result.manifest, result.engine   # sd-vae-ft-mse-256-fp16.onnx, DecoderManifest, .plan or None

The graph: latents (B, C, L, L) float32 -> images (B, 3, 8L, 8L) float32 in about [-1, 1], that is
AutoencoderKL's post_quant_conv and decoder (diffusers' own modules) on latents / 0.18215, as the runtime's
PyTorch VAE decodes. The stages are export()'s: load, check (the reference: diffusers' AutoencoderKL.decode in
float32), trace, save (operator check, onnx.checker), check (ONNX Runtime; OpenVINO for BF16), engine.

FP16 and BF16 are traced from a 16-bit copy of the decoder with float32 islands (FLOAT32_ISLANDS): the latent
scaling and the output, every GroupNorm (its statistics square activations: float16 overflows from |x| > 256,
and a strongly typed TensorRT normalization computes in its input's type), and the attention logits and softmax
of the mid block (dot products over 512 channels). Measured on random weights (docs/export.md): nothing there
comes near float16's range, and the islands change the error by less than 1%; they are kept for the real VAE's
larger activations, at a few percent of the decoder's FLOPs.
"""

import copy
import importlib.metadata
import re
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from dit_ref import contract
from dit_ref.configs import VAE_DOWNSAMPLE
from dit_ref.contract import (
    DECODER_INPUT, DECODER_OUTPUT, DECODER_PRECISIONS, BatchRange, Checkpoint, DecoderManifest,
)
from dit_ref.errors import DiTError
from dit_ref.files import sha256_of_files
from dit_ref.vae import HUB_VAES, SCALING_FACTOR, chunk_size, load_autoencoder, vae_identity
from export.onnx_export import check_dynamic_batch, check_out_dir, package_versions, quiet_exporter, save_file
from export.pipeline import ExportResult, engine_reason, engine_stage, silent_stage
from export.typed import DTYPES

TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2, "bf16": 3e-2}  # max|graph - diffusers| / max|diffusers|, batch 1
FLOAT32_ISLANDS = ("latent scaling", "GroupNorm statistics and affine", "attention logits and softmax", "output")
OPSET, TRACE_BATCH = 18, 2  # torch.export specialises a dimension traced at size 1


class DecoderGraph(nn.Module):
    """latents (B, C, L, L) float32 -> images (B, 3, 8L, 8L) float32: AutoencoderKL.decode(latents / 0.18215)."""

    def __init__(self, vae, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.post_quant_conv, self.decoder, self.dtype = vae.post_quant_conv, vae.decoder, dtype

    def forward(self, latents):
        z = (latents / SCALING_FACTOR).to(self.dtype)  # (B, C, L, L), scaled in float32
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z).float()  # (B, 3, 8L, 8L)


class Float32GroupNorm(nn.GroupNorm):
    """GroupNorm computed in float32 whatever its weights are, the result in its input's dtype."""

    def forward(self, x):
        weight, bias = self.weight.float(), self.bias.float()
        return F.group_norm(x.float(), self.num_groups, weight, bias, self.eps).to(x.dtype)


class Float32Attention:
    """A diffusers attention processor for the VAE's mid-block self-attention (AttnProcessor2_0's arithmetic)
    with the logits and softmax in float32."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args,
                 **kwargs):
        batch, channels, height, width = hidden_states.shape
        x = hidden_states.view(batch, channels, height * width).transpose(1, 2)  # (B, T, C)
        if attn.group_norm is not None:
            x = attn.group_norm(x.transpose(1, 2)).transpose(1, 2)
        heads = attn.heads
        q, k, v = (projection(x).view(batch, -1, heads, channels // heads).transpose(1, 2)  # (B, H, T, C/H)
                   for projection in (attn.to_q, attn.to_k, attn.to_v))
        logits = (q.float() * attn.scale) @ k.float().transpose(-1, -2)  # (B, H, T, T)
        out = logits.softmax(dim=-1).to(v.dtype) @ v  # (B, H, T, C/H)
        out = attn.to_out[1](attn.to_out[0](out.transpose(1, 2).reshape(batch, -1, channels)))  # (B, T, C)
        out = out.transpose(1, 2).reshape(batch, channels, height, width)
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor


def typed_decoder(vae, dtype: torch.dtype) -> DecoderGraph:
    """A float16 or bfloat16 copy of the decoder with its float32 islands; vae itself stays float32."""
    parts = nn.Module()
    parts.post_quant_conv, parts.decoder = copy.deepcopy(vae.post_quant_conv), copy.deepcopy(vae.decoder)
    parts.to(dtype)
    for module in parts.modules():
        if type(module) is nn.GroupNorm:
            module.__class__ = Float32GroupNorm
        if hasattr(module, "set_processor") and hasattr(module, "to_q"):  # a diffusers Attention
            module.set_processor(Float32Attention())
    return DecoderGraph(parts, dtype).eval()


def decoder_module(vae, precision: str) -> DecoderGraph:
    """What to trace: diffusers' decoder as it is for FP32; a 16-bit copy with its float32 islands otherwise."""
    return DecoderGraph(vae).eval() if precision == "fp32" else typed_decoder(vae, DTYPES[precision])


def trace_decoder(module: DecoderGraph, latent_shape: tuple[int, int, int]):
    """The decoder as an in-memory torch.onnx.ONNXProgram with a dynamic batch."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    latents = torch.randn(TRACE_BATCH, *latent_shape, generator=torch.Generator().manual_seed(0))
    with quiet_exporter(), torch.no_grad():
        program = torch.onnx.export(module, (latents,), dynamo=True, opset_version=OPSET, optimize=True,
                                    input_names=[DECODER_INPUT], output_names=[DECODER_OUTPUT],
                                    dynamic_shapes={DECODER_INPUT: {0: batch}}, verbose=False)
    check_dynamic_batch(program)
    return program


def save_quietly(program, path: Path) -> None:
    with quiet_exporter():
        program.save(path)


def decoder_file_name(spec: str, image_size: int, precision: str) -> str:
    """"sd-vae-ft-mse-256-fp16.onnx", "sd-vae-random-256-fp32.onnx", "<folder>-512-bf16.onnx" (vae-<folder>-...
    for a folder whose name does not say vae)."""
    if spec in HUB_VAES:
        stem = HUB_VAES[spec].split("/")[-1]
    elif spec == "random":
        stem = "sd-vae-random"
    else:
        folder = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(spec).expanduser().resolve().name).strip("-.")
        stem = folder if "vae" in folder.lower() else f"vae-{folder}"
    return f"{stem}-{image_size}-{precision}.onnx"


def default_batch(image_size: int) -> BatchRange:
    """1 up to the runtime's chunk (dit_ref.vae.DECODE_PIXELS): 1:8:8 at 256 px, 1:2:2 at 512 px."""
    size = chunk_size(image_size)
    return BatchRange(1, size, size)


def check_decoder_request(vae: str, image_size: int, precision: str) -> None:
    """DiTError for an option no decoder export can take, before anything loads."""
    vae_identity(vae)
    if precision not in DECODER_PRECISIONS:
        raise DiTError(f"the VAE decoder exports as {', '.join(DECODER_PRECISIONS)}, not {precision}; pass "
                       f"--precision fp16 (or export the decoder in a call of its own)")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < VAE_DOWNSAMPLE or \
            image_size % VAE_DOWNSAMPLE:
        raise DiTError(f"--image-size {image_size}: the VAE makes images of 8 x the latent size; pass a multiple of "
                       f"8 such as 256 or 512")


def decoder_manifest(loaded, image_size: int, precision: str, batch: BatchRange) -> DecoderManifest:
    """The manifest known before the graph is written (the graph record is added on save)."""
    config = loaded.model.config
    sha256 = sha256_of_files(*loaded.files) if loaded.files else None
    versions = package_versions()
    versions["diffusers"] = importlib.metadata.version("diffusers")
    return DecoderManifest(
        vae=Checkpoint(loaded.source, sha256, loaded.random_weights), latent_channels=config.latent_channels,
        latent_size=image_size // VAE_DOWNSAMPLE, image_size=image_size, image_channels=config.out_channels,
        scaling_factor=SCALING_FACTOR, precision=precision,
        float32_islands=() if precision == "fp32" else FLOAT32_ISLANDS, batch=batch, opset=OPSET,
        versions=versions, created=contract.now_iso())


def reference_images(vae, latent_shape: tuple[int, int, int], batch: int = 1, seed: int = 0):
    """(latents, diffusers' AutoencoderKL.decode of latents / 0.18215 in float32), seeded, as numpy."""
    latents = torch.randn(batch, *latent_shape, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        images = vae.decode(latents / SCALING_FACTOR).sample
    return latents.numpy(), images.numpy()


def check_decoder_graph(graph: Path, reference, precision: str) -> float:
    """The graph's max relative error against the reference images; DiTError beyond TOLERANCE."""
    from export.verify import check_runner, relative_error

    latents, expected = reference
    with check_runner(graph, precision) as runner:
        error = relative_error(runner.run({DECODER_INPUT: torch.from_numpy(latents)})[DECODER_OUTPUT], expected)
    if error > TOLERANCE[precision]:
        raise DiTError(f"the decoder graph disagrees with diffusers' decode (error {error:.2e}, limit "
                       f"{TOLERANCE[precision]:g}); {graph} is kept for inspection")
    return error


def export_decoder(vae: str, image_size: int = 256, *, precision: str = "fp16", batch: BatchRange | None = None,
                   out=".", engine: str = "auto", check: bool = True, opt_level: int = 3, timing_cache=None,
                   stage=silent_stage) -> ExportResult:
    """Export the decoder of a VAE (ema | mse | DIR | random) for image_size px images into out with its
    manifest, check it against diffusers' decode, and build its TensorRT engine when possible.
    batch None: default_batch(image_size). errors: {"images": max relative error} (None without a check)."""
    check_decoder_request(vae, image_size, precision)
    check_out_dir(out)
    batch = batch or default_batch(image_size)
    reason = engine_reason(engine)
    with stage("load", f"VAE {vae} for {image_size} px images") as result:
        loaded = load_autoencoder(vae)
        result["done"] = loaded.source + (" (RANDOM WEIGHTS)" if loaded.random_weights else "")
    manifest = decoder_manifest(loaded, image_size, precision, batch)
    reference = None
    if check:
        with stage("check", "diffusers' AutoencoderKL.decode, float32, batch 1") as result:
            reference = reference_images(loaded.model, manifest.latent_shape)
            result["done"] = f"max |image| {abs(reference[1]).max():.3g}"
    name = decoder_file_name(vae, image_size, precision)
    islands = f", float32 islands: {', '.join(FLOAT32_ISLANDS)}" if precision != "fp32" else ""
    with stage("trace", f"torch.onnx.export (dynamo), {precision} decoder{islands}"):
        program = trace_decoder(decoder_module(loaded.model, precision), manifest.latent_shape)
    with stage("save", f"{Path(out) / name} + manifest; TensorRT operator check, onnx.checker") as result:
        graph = save_file(lambda staged: save_quietly(program, staged), Path(out), name, manifest)
        result["done"] = f"{graph.stat().st_size / 1e6:.1f} MB"
    errors = None
    if check:
        runner = "openvino" if precision == "bf16" else "onnxruntime"
        with stage("check", f"{runner} on the graph vs diffusers, limit {TOLERANCE[precision]:g}") as result:
            errors = {DECODER_OUTPUT: check_decoder_graph(graph, reference, precision)}
            result["done"] = f"images max rel err {errors[DECODER_OUTPUT]:.2e}"
    engine_path = None if reason else engine_stage(graph, batch, opt_level, timing_cache, stage)
    return ExportResult(graph, contract.read_decoder_manifest(graph), engine_path, reason, errors)
