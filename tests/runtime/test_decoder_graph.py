"""Decoding on a decoder graph (dit-export --vae): dit-run with it equals dit-run with the PyTorch VAE within the
graph's bound, chunked decoding equals one-shot decoding, and a decoder that does not fit the model (latent size,
channels, batch range) is refused in one line; generate(), dit-run --ray and dit-serve take it too.

The VAE is tests/conftest.py's random_vae (tiny, every tensor randomised); the model the random S/8 at 256 px.
"""

import numpy as np
import pytest
import torch

import runtime.cli as cli
from dit_ref.contract import BatchRange
from dit_ref.errors import DiTError
from dit_ref.vae import random_vae as make_random_vae
from export.vae_export import export_decoder
from runtime.backends import load_denoiser
from runtime.generate import generate
from runtime.sampling import sampler_from_name
from runtime.vae import decode, load_decoder, load_vae
from testing_utils import TINY_VAE_CONFIG, max_rel_error

LIMITS = {"fp32": 1e-4, "fp16": 1e-2}  # relative, on the float images (tests/export/test_vae_export.py)


def dit_run(argv, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exited:
        cli.main([*argv, "--threads", "1"])
    return exited.value.code, capsys.readouterr().err


def one_error_line(code, err) -> str:
    print(err)
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 1 and len(lines) == 1 and "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_dit_run_on_a_decoder_graph_is_dit_run_on_the_pytorch_vae(graphs, random_vae, exported_decoder, precision,
                                                                   capsys, tmp_path):
    decoder = exported_decoder(precision).graph
    common = [str(graphs["fp32"]), "--class", "1,2,3", "--sampler", "ddim", "--steps", "2", "--seed", "5"]
    outputs = {}
    for name, vae in (("torch", random_vae), ("graph", str(decoder)), ("latents", "none")):
        out = tmp_path / (f"{name}.npy" if vae == "none" else f"{name}.npz")
        code, err = dit_run([*common, "--vae", vae, "--out", str(out)], capsys)
        assert code == 0, err
        outputs[name] = np.load(out) if vae == "none" else np.load(out)["arr_0"]
    latents = torch.from_numpy(outputs["latents"])  # the same run's latents, decoded to floats both ways
    graph_decoder, vae = load_decoder(str(decoder), "vae", 4, latent_size=32), load_vae(random_vae)
    with torch.no_grad():
        expected = vae.model.decode(latents / 0.18215).sample
    error = max_rel_error(graph_decoder.images(latents), expected)
    # uint8 images: the float error, in grey levels, plus one for a value the truncating cast puts on either side
    levels = 1 + int(127.5 * LIMITS[precision] * float(expected.abs().max()))
    difference = int(np.abs(outputs["graph"].astype(int) - outputs["torch"]).max())
    print(f"{err}{precision} decoder graph vs PyTorch VAE in dit-run: float images {error:.2e} (bound "
          f"{LIMITS[precision]:g}); PNG-ready uint8 images differ by at most {difference} grey levels (bound {levels})")
    assert outputs["graph"].shape == (3, 256, 256, 3) and outputs["graph"].dtype == np.uint8
    assert error < LIMITS[precision] and difference <= levels


def test_chunked_decode_equals_one_shot_decode(exported_decoder, random_vae):
    latents = torch.randn(5, 4, 32, 32, generator=torch.Generator().manual_seed(2))
    graph = load_decoder(str(exported_decoder("fp32").graph), "vae", 4, latent_size=32)
    one_shot = graph(latents)
    assert graph.chunk == 8  # 8 x 256^2 output pixels per call (dit_ref.vae.DECODE_PIXELS), within 1:8:8
    graph.chunk = 2  # calls of 2, 2, 1
    chunked = graph(latents)
    vae = load_vae(random_vae)
    torch_one_shot, torch_chunked = decode(vae, latents, batch_size=5), decode(vae, latents, batch_size=2)
    float_error = max_rel_error(graph.images(latents[:2]), graph.images(latents)[:2])
    print(f"graph: chunks of 2 vs one call of 5 differ by {np.abs(chunked.astype(int) - one_shot).max()} grey levels "
          f"(float images {float_error:.1e}); PyTorch VAE: {np.abs(torch_chunked.astype(int) - torch_one_shot).max()}")
    assert np.array_equal(chunked, one_shot) and float_error == 0  # the graph in ONNX Runtime: bitwise
    # PyTorch's convolutions sum a batch of 5 in another order than one of 2: a value on a grey level's edge may
    # truncate to either side of it
    assert np.abs(torch_chunked.astype(int) - torch_one_shot).max() <= 1


@pytest.mark.parametrize("precision, expected", [("fp32", "onnxruntime"), ("fp16", "onnxruntime"),
                                                 ("bf16", "openvino")])
def test_a_decoder_graph_decodes_on_the_cpu_runtime_of_its_precision(exported_decoder, precision, expected):
    decoder = load_decoder(str(exported_decoder(precision).graph), "vae", 4, latent_size=32, threads=1)
    images = decoder.images(torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(0)))
    print(f"{precision} decoder graph on {decoder.backend}: images {tuple(images.shape)}, std {images.std():.3f}")
    assert decoder.backend == f"{expected}-cpu" and images.shape == (1, 3, 256, 256) and images.std() > 0


def test_a_bf16_decoder_without_openvino_is_refused_in_one_line(exported_decoder, monkeypatch):
    import dit_ref.runners.choice as choice

    monkeypatch.setattr(choice, "openvino_here", lambda: False)
    with pytest.raises(DiTError, match="bf16 decoder, which runs on a CPU in OpenVINO only: pip install"):
        load_decoder(str(exported_decoder("bf16").graph), "vae", 4, latent_size=32)


def test_a_decoder_of_another_latent_size_is_refused_in_one_line(graphs, exported_decoder, capsys, tmp_path):
    decoder = exported_decoder("fp32", 512).graph  # latents 64 x 64: 512 px images
    code, err = dit_run([str(graphs["fp32"]), "--class", "1", "--steps", "1", "--vae", str(decoder), "--out",
                         str(tmp_path / "s.png")], capsys)
    line = one_error_line(code, err)
    assert "decodes latents (B, 4, 64, 64) into 512 px images, but this model makes (B, 4, 32, 32)" in line
    assert "dit-export --vae ... --image-size 256" in line and not list(tmp_path.iterdir())


def test_a_decoder_of_other_latent_channels_is_refused_in_one_line(graphs, tmp_path_factory, capsys, tmp_path):
    folder = tmp_path_factory.mktemp("vae16") / "vae-16-channels"
    make_random_vae(0, {**TINY_VAE_CONFIG, "latent_channels": 16}, every_tensor=True).save_pretrained(folder)
    decoder = export_decoder(str(folder), 256, precision="fp32", out=tmp_path_factory.mktemp("d16"),
                             engine="skip", check=False).graph
    code, err = dit_run([str(graphs["fp32"]), "--class", "1", "--steps", "1", "--vae", str(decoder)], capsys)
    assert "decodes latents (B, 16, 32, 32)" in one_error_line(code, err)


def test_the_decoders_batch_range_is_checked_before_anything_runs(graphs, exported_decoder, capsys, tmp_path):
    decoder = exported_decoder("fp32", 256, BatchRange(2, 2, 4)).graph
    code, err = dit_run([str(graphs["fp32"]), "--class", "1,2,3", "--batch-size", "2", "--steps", "1", "--vae",
                         str(decoder), "--out", str(tmp_path / "s.npz")], capsys)  # batches 2, 1: a chunk of 1
    assert "batch of 1 is outside tiny-vae-seed0-256-fp32.onnx's range 2..4" in one_error_line(code, err)
    with pytest.raises(DiTError, match="range 2..4"):
        load_decoder(str(decoder), "vae", 4, latent_size=32).images(torch.zeros(1, 4, 32, 32))


def test_a_dit_graph_as_vae_and_a_decoder_as_the_model_are_refused(graphs, exported_decoder, capsys):
    code, err = dit_run([str(graphs["fp32"]), "--class", "1", "--vae", str(graphs["fp16"])], capsys)
    assert "describes a DiT graph, not a VAE decoder" in one_error_line(code, err)
    code, err = dit_run([str(exported_decoder("fp32").graph), "--class", "1"], capsys)
    assert "describes a VAE decoder (dit-deploy-decoder/1), not a DiT graph" in one_error_line(code, err)


def test_generate_takes_a_decoder_file(graphs, exported_decoder):
    with load_denoiser(graphs["fp16"], threads=1) as denoiser:
        (batch,) = generate(denoiser, [4, 5], sampler_from_name("ddim", 2), seed=0,
                            decoder=str(exported_decoder("fp16").graph))
    assert batch.samples.shape == (2, 256, 256, 3) and batch.samples.dtype == np.uint8 and batch.samples.std() > 0


def test_dit_serve_checks_a_decoder_file_before_ray_starts(graphs, exported_decoder):
    from runtime.service.cli import prepare

    options = dict(device=None, threads=1, gpus_per_replica=None, cuda_graphs=False, replicas=1, batch_wait_ms=10,
                   max_images=4, queue_size=4, api_key_sha256=None)
    settings, _ = prepare(str(graphs["fp32"]), 4, str(exported_decoder("fp16").graph), "auto", **options)
    assert settings.vae == str(exported_decoder("fp16").graph.absolute())
    with pytest.raises(DiTError, match="decodes latents .*64, 64"):
        prepare(str(graphs["fp32"]), 4, str(exported_decoder("fp32", 512).graph), "auto", **options)
    with pytest.raises(DiTError, match="batch of 1 is outside"):
        prepare(str(graphs["fp32"]), 4, str(exported_decoder("fp32", 256, BatchRange(2, 2, 4)).graph), "auto", **options)
