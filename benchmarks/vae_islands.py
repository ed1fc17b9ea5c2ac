"""What the decoder graph's float32 islands (export/vae_export.py) change: the fp16 and bf16 graphs' error against
diffusers' float32 decode with the islands and without them (the plain 16-bit copy), per VAE, and the largest
activations (float16's headroom). Run by `python benchmarks/vae_decode.py --islands`
(and --activations).

Two VAEs of the SD VAE's architecture: diffusers' own random init (--vae random) and every tensor randomised
(dit_ref.vae.random_vae(every_tensor=True), the tests' kind), unless --vae names another. fp16 runs in ONNX
Runtime and bf16 in OpenVINO, as dit-export checks them; batch 2 of standard normal latents, the DiT's scale.
"""

import copy
import tempfile
from pathlib import Path

import torch


def plain_16_bit(vae, dtype):
    """The decoder in dtype without islands: what the islands are measured against."""
    from export.vae_export import DecoderGraph

    parts = torch.nn.Module()
    parts.post_quant_conv, parts.decoder = copy.deepcopy(vae.post_quant_conv), copy.deepcopy(vae.decoder)
    return DecoderGraph(parts.to(dtype), dtype).eval()


def graph_error(module, vae, image_size: int, precision: str, work_dir: Path) -> float:
    from dit_ref.vae import SCALING_FACTOR
    from export.onnx_export import quiet_exporter
    from export.vae_export import trace_decoder
    from export.verify import check_runner, relative_error

    latent_shape = (vae.config.latent_channels, image_size // 8, image_size // 8)
    latents = torch.randn(2, *latent_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = vae.decode(latents / SCALING_FACTOR).sample
    with tempfile.TemporaryDirectory(dir=work_dir) as scratch:
        path = Path(scratch) / "decoder.onnx"
        program = trace_decoder(module, latent_shape)
        with quiet_exporter():
            program.save(path)
        with check_runner(path, precision) as runner:
            return relative_error(runner.run({"latents": latents})["images"], expected)


def activation_maxima(vae: str, image_size: int) -> dict:
    """max |activation| of each decoder block in float32 (and of the mid-block attention logits), on latents of
    the DiT's scale (standard normal), with float16's limits beside them."""
    from dit_ref.vae import SCALING_FACTOR, load_autoencoder

    model = load_autoencoder(vae).model
    found = {}

    def keep(name):
        def hook(module, inputs, output):
            found[name] = max(found.get(name, 0.0), float(output.abs().max()))
        return hook

    decoder = model.decoder
    named = [("post_quant_conv", model.post_quant_conv), ("conv_in", decoder.conv_in)]
    named += [(f"mid_block.{kind}.{i}", block) for kind in ("resnets", "attentions")
              for i, block in enumerate(getattr(decoder.mid_block, kind))]
    named += [(f"up_blocks.{i}", block) for i, block in enumerate(decoder.up_blocks)]
    named += [("conv_norm_out", decoder.conv_norm_out), ("conv_out", decoder.conv_out)]
    handles = [module.register_forward_hook(keep(name)) for name, module in named]
    attention = decoder.mid_block.attentions[0]
    handles.append(attention.to_q.register_forward_hook(keep("attention q")))
    latents = torch.randn(1, 4, image_size // 8, image_size // 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.decode(latents / SCALING_FACTOR)
    for handle in handles:
        handle.remove()
    return found


def measure_islands(vae: str, image_size: int, work_dir: Path) -> dict:
    from dit_ref.vae import load_autoencoder, random_vae
    from export.typed import DTYPES
    from export.vae_export import typed_decoder

    models = {"random (diffusers' init)": load_autoencoder("random").model,
              "random (every tensor)": random_vae(0, every_tensor=True).eval()} if vae == "random" else \
        {vae: load_autoencoder(vae).model}
    found = {}
    for name, model in models.items():
        with tempfile.TemporaryDirectory() as folder:
            model.save_pretrained(folder)
            maxima = activation_maxima(folder, image_size)
        found[name] = {"max_activation": max(maxima.values()), "maxima": maxima}
        for precision in ("fp16", "bf16"):
            dtype = DTYPES[precision]
            for variant, module in (("islands", typed_decoder(model, dtype)), ("none", plain_16_bit(model, dtype))):
                error = graph_error(module, model, image_size, precision, work_dir)
                found[name][f"{precision} {variant}"] = error
                print(f"{name}: {precision} graph, islands {variant}: max rel err {error:.3e}", flush=True)
    return found
