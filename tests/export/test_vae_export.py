"""The VAE decoder as a graph: parity with diffusers' AutoencoderKL.decode per precision, its float32 islands, its
manifest, dit-export --vae and its one-line refusals.

The VAE is tiny (testing_utils.TINY_VAE_CONFIG: the SD VAE's blocks, 8x upsampling, mid-block attention) with every
tensor randomised, so that a graph which drops a norm's affine or a bias cannot match.
"""

import json
import re

import numpy as np
import onnx
import pytest
import torch

from dit_ref.contract import BatchRange, DecoderManifest, read_decoder_manifest
from dit_ref.files import sha256_of_files
from dit_ref.vae import SCALING_FACTOR, load_autoencoder
from export.cli import main
from export.engine import input_profile
from export.opcheck import check_operators
from export.vae_export import Float32Attention
from export.verify import check_runner, relative_error
from testing_utils import TINY_VAE_CONFIG

LIMITS = {"fp32": 1e-4, "fp16": 1e-2, "bf16": 3e-2}  # the decoder's bounds; bf16: export's check limit


def diffusers_decode(vae_dir, latents: np.ndarray) -> np.ndarray:
    """The reference: AutoencoderKL.decode(latents / 0.18215), float32, as sample.py decodes."""
    with torch.no_grad():
        return load_autoencoder(vae_dir).model.decode(torch.from_numpy(latents) / SCALING_FACTOR).sample.numpy()


@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_decoder_graph_is_diffusers_decode_within_its_bound(exported_decoder, random_vae, precision):
    result = exported_decoder(precision)
    latents = np.random.default_rng(1).standard_normal((3, 4, 32, 32)).astype(np.float32)  # batch 3: dynamic
    with check_runner(result.graph, precision) as runner:
        images = runner.run({"latents": torch.from_numpy(latents)})["images"].numpy()
    error = relative_error(images, diffusers_decode(random_vae, latents))
    print(f"{precision} decoder graph vs diffusers' decode, batch 3: max rel err {error:.2e} (check stage, batch 1: "
          f"{result.errors['images']:.2e}); bound {LIMITS[precision]:g}")
    assert images.shape == (3, 3, 256, 256) and images.dtype == np.float32
    assert error < LIMITS[precision] and result.errors["images"] < LIMITS[precision]


def test_decoder_manifest_says_which_vae_and_how(exported_decoder, random_vae):
    result = exported_decoder("fp16")
    manifest = read_decoder_manifest(result.graph)
    assert result.graph.name == "tiny-vae-seed0-256-fp16.onnx" and manifest == result.manifest
    assert manifest.vae.source == random_vae and manifest.vae.random_weights is False
    assert manifest.vae.sha256 == sha256_of_files(f"{random_vae}/diffusion_pytorch_model.safetensors")
    assert (manifest.latent_shape, manifest.image_size, manifest.precision) == ((4, 32, 32), 256, "fp16")
    assert manifest.batch == BatchRange(1, 8, 8) and manifest.float32_islands and "diffusers" in manifest.versions
    assert manifest.graph.sha256 == sha256_of_files(result.graph) and check_operators(result.graph)["Conv"] > 0
    assert input_profile(manifest, manifest.batch) == {"latents": ((1, 4, 32, 32), (8, 4, 32, 32), (8, 4, 32, 32))}


@pytest.mark.parametrize("precision, dtype", [("fp16", onnx.TensorProto.FLOAT16), ("bf16", onnx.TensorProto.BFLOAT16)])
def test_the_16_bit_graphs_keep_their_float32_islands(exported_decoder, precision, dtype):
    model = onnx.shape_inference.infer_shapes(onnx.load(str(exported_decoder(precision).graph)))
    types = {value.name: value.type.tensor_type.elem_type
             for value in [*model.graph.value_info, *model.graph.input, *model.graph.output]}
    types.update({tensor.name: tensor.data_type for tensor in model.graph.initializer})
    found = {}
    for node in model.graph.node:
        found.setdefault(node.op_type, set()).add(types.get(node.input[0]))
    print({op: sorted(onnx.TensorProto.DataType.Name(t) for t in kinds if t) for op, kinds in found.items()
           if op in ("Conv", "InstanceNormalization", "Softmax", "MatMul")})
    assert found["Conv"] == {dtype} and found["InstanceNormalization"] == {onnx.TensorProto.FLOAT}  # GroupNorm
    assert found["Softmax"] == {onnx.TensorProto.FLOAT} and onnx.TensorProto.FLOAT in found["MatMul"]  # logits
    io = {value.type.tensor_type.elem_type for value in [*model.graph.input, *model.graph.output]}
    assert io == {onnx.TensorProto.FLOAT}


def test_float32_attention_is_diffusers_attention_in_float32():
    from dit_ref.vae import random_vae

    attention = random_vae(3, TINY_VAE_CONFIG, every_tensor=True).decoder.mid_block.attentions[0]
    x = torch.randn(2, 16, 4, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = attention(x)
        attention.set_processor(Float32Attention())
        error = relative_error(attention(x), expected)
    print(f"Float32Attention vs AttnProcessor2_0, float32: {error:.1e}")
    assert error < 1e-6


def run(capsys, *argv):
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def test_dit_export_makes_the_dit_and_its_decoder_in_one_call(random_vae, tmp_path, capsys):
    code, out, err = run(capsys, "--model", "S/8", "--random-init", "0", "--vae", random_vae, "--precision", "fp32",
                         "--vae-batch", "1:2:4", "--engine", "skip", "--out", str(tmp_path))
    print(out)
    decoder = tmp_path / "tiny-vae-seed0-256-fp32.onnx"
    assert code == 0 and err == "" and len(re.findall(r"images max rel err ([0-9.e+-]+)", out)) == 1
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "DiT-S-8-256-fp32.json", "DiT-S-8-256-fp32.onnx", decoder.with_suffix(".json").name, decoder.name]
    assert f"use it with: dit-run {tmp_path / 'DiT-S-8-256-fp32.onnx'} --vae {decoder}" in out
    assert DecoderManifest.from_dict(json.loads(decoder.with_suffix(".json").read_text())).batch == BatchRange(1, 2, 4)


@pytest.mark.parametrize("argv, words", [
    (["--model", "fashion", "--vae", "random"], "fashion makes pixels, not latents, and needs no VAE; drop --vae"),
    (["--model", "S/8", "--precision", "int8", "--vae", "random"], "the VAE decoder exports as fp32, fp16, bf16, not int8"),
    (["--vae", "no-such-folder"], "is neither ema, mse, random nor a directory"),
    (["--vae", "random", "--image-size", "100"], "pass a multiple of 8"),
    (["--model", "S/8", "--vae", "random", "--image-size", "384"], "image size 384 is not supported"),
])
def test_bad_decoder_requests_are_one_line_before_anything_loads(tmp_path, capsys, argv, words):
    code, out, err = run(capsys, *argv, "--random-init", "0", "--out", str(tmp_path / "out"))
    print(err.strip())
    assert code == 1 and len(err.strip().splitlines()) == 1 and words in err and out == ""
    assert not (tmp_path / "out").exists()


def test_vae_batch_without_vae_is_a_usage_error(capsys):
    code, _, err = run(capsys, "--model", "S/8", "--vae-batch", "1:2:4")
    assert code == 2 and "--vae-batch is the decoder's batch range: add --vae" in err
