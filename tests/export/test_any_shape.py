"""Any DiT shape: other class counts, latent channels and no learned sigma, through export, ONNX
Runtime parity and a short sampling run; and a train.py checkpoint exported with no extra flag."""

import argparse

import numpy as np
import pytest
import torch

from dit_ref import DiT, DiTConfig, configs, randomize_weights_
from dit_ref.contract import Checkpoint, read_manifest
from dit_ref.errors import DiTError
from export import cli
from export.onnx_export import export_onnx
from runtime.backends import load_denoiser
from runtime.backends.torch_backend import TorchDenoiser
from runtime.generate import generate
from runtime.sampling import sampler_from_name
from testing_utils import max_rel_error

FP32_LIMIT = 1e-4  # the FP32 graph's limit everywhere (dit-export's check, the runtime tests)
SHAPES = {  # (latent channels, classes, learned sigma): a train.py --num-classes 10 model, pixels, a 16-channel VAE
    "10 classes": (4, 10, True), "1 channel": (1, 1000, True), "16 channels": (16, 1000, True),
    "fixed sigma": (4, 1000, False),
}


def tiny(channels: int, classes: int, learn_sigma: bool) -> DiT:
    """A 2-block DiT with 16 tokens at 256 px, random weights (seed 0)."""
    config = DiTConfig(family="T", depth=2, hidden_size=64, num_heads=4, patch_size=8, latent_channels=channels,
                       num_classes=classes, learn_sigma=learn_sigma)
    return randomize_weights_(DiT(config, 256), seed=0).eval().requires_grad_(False)


@pytest.fixture(scope="module", params=list(SHAPES))
def exported(request, tmp_path_factory):
    model = tiny(*SHAPES[request.param])
    graph = export_onnx(model, tmp_path_factory.mktemp("shape"), "fp32",
                        checkpoint=Checkpoint("random init (seed 0)", None, True))
    return request.param, model, graph


def test_manifest_records_the_shape(exported):
    name, model, graph = exported
    channels, classes, learn_sigma = SHAPES[name]
    manifest = read_manifest(graph)
    assert (manifest.latent_channels, manifest.num_classes, manifest.learn_sigma) == (channels, classes, learn_sigma)
    assert manifest.cfg_channels == (3 if channels == 4 else channels)  # the official quirk only for 4 channels
    assert manifest.output_names == (("eps", "var_values") if learn_sigma else ("eps",))


def test_graph_and_sampling_match_the_reference(exported):
    name, model, graph = exported
    channels, classes, _ = SHAPES[name]
    graph_denoiser = load_denoiser(graph, threads=1)
    reference = TorchDenoiser(model, device="cpu")
    generator = torch.Generator().manual_seed(3)
    inputs = (torch.randn(3, channels, 32, 32, generator=generator), torch.tensor([0, 500, 999]),
              torch.tensor([0, classes - 1, 1]), torch.tensor([1.0, 4.0, 1.5]))
    ours, theirs = graph_denoiser(*inputs), reference(*inputs)
    errors = [max_rel_error(a, b) for a, b in zip(ours, theirs) if b is not None]
    labels = [classes - 1, 0, None]
    sampled = [next(generate(d, labels, sampler_from_name("ddpm", 3), seed=1, decoder=None)).samples
               for d in (graph_denoiser, reference)]
    sample_error = max_rel_error(*sampled)
    print(f"{name}: graph vs torch per call {max(errors):.2e}, after 3 DDPM steps {sample_error:.2e}")
    assert (ours[1] is None) == (theirs[1] is None) == (name == "fixed sigma")
    assert max(errors) < FP32_LIMIT and sample_error < FP32_LIMIT
    assert sampled[0].shape == (3, channels, 32, 32) and np.isfinite(sampled[0]).all()


def test_train_py_checkpoint_exports_with_its_class_count(tmp_path, capsys):
    # The official train.py saves {"model", "ema", "opt", "args"}; args.num_classes=10 sets the null class to 10.
    config = configs.with_shape(configs.get_config("S/2"), num_classes=10)
    model = randomize_weights_(DiT(config, 256), seed=4).eval()
    state = model.state_dict()
    args = argparse.Namespace(model="DiT-S/2", image_size=256, num_classes=10, global_batch_size=256, epochs=1400)
    checkpoint = tmp_path / "0400000.pt"
    torch.save({"model": state, "ema": state, "opt": {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0]}]},
                "args": args}, checkpoint)
    with pytest.raises(SystemExit) as exited:
        cli.main(["--model", "S/2", "--ckpt", str(checkpoint), "--out", str(tmp_path / "out"), "--engine", "skip"])
    out = capsys.readouterr().out
    print(out)
    assert exited.value.code == 0 and len(out.splitlines()) <= 25  # quiet: stage lines only
    graph = tmp_path / "out" / "DiT-S-2-256-fp32.onnx"
    assert read_manifest(graph).num_classes == 10
    x = torch.randn(2, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    t, y, scale = torch.tensor([10, 900]), torch.tensor([3, 9]), torch.tensor([4.0, 1.5])
    with torch.no_grad():  # the official sample.py forward: doubled batch, null class 10, guidance on 3 channels
        official = model.forward_with_cfg(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, torch.full_like(y, 10)]),
                                          scale, cfg_channels=3)[:2]
    eps, var_values = load_denoiser(graph, threads=1)(x, t, y, scale)
    error = max(max_rel_error(eps, official[:, :4]), max_rel_error(var_values, official[:, 4:]))
    print(f"train.py checkpoint (10 classes) graph vs official forward_with_cfg: {error:.2e}")
    assert error < FP32_LIMIT


def test_guiding_more_channels_than_the_latents_is_refused(tmp_path):
    with pytest.raises(DiTError, match=r"cfg_channels must be 1..1 \(the model's latent channels\), not 2"):
        export_onnx(tiny(1, 10, True), tmp_path, "fp32", cfg_channels=2)
    assert list(tmp_path.iterdir()) == []


def saved_state_dict(tmp_path, name: str, **shape) -> str:
    """A bare state dict (as the released .pt files) of a random DiT-S/8 with another shape."""
    config = configs.with_shape(configs.get_config("S/8"), **shape)
    path = tmp_path / f"{name}.pt"
    torch.save(randomize_weights_(DiT(config, 256), seed=1).state_dict(), path)
    return str(path)


@pytest.mark.slow
@pytest.mark.parametrize("shape, options", [
    ({"latent_channels": 16}, ["--cfg-channels", "16"]),  # more guided channels than the named config has
    ({"learn_sigma": False}, []),
])
def test_a_checkpoint_file_tells_its_channels_and_learned_sigma(tmp_path, capsys, shape, options):
    checkpoint = saved_state_dict(tmp_path, "other-shape", **shape)
    with pytest.raises(SystemExit) as exited:
        cli.main(["--model", "S/8", "--ckpt", checkpoint, "--out", str(tmp_path / "out"), "--engine", "skip",
                  "--no-check", *options])
    assert exited.value.code == 0, capsys.readouterr().err
    manifest = read_manifest(tmp_path / "out" / "DiT-S-8-256-fp32.onnx")
    expected = {"latent_channels": 4, "learn_sigma": True, **shape}
    assert (manifest.latent_channels, manifest.learn_sigma) == (expected["latent_channels"], expected["learn_sigma"])
    assert manifest.cfg_channels == (16 if shape.get("latent_channels") == 16 else 3)
    assert manifest.output_names == (("eps", "var_values") if expected["learn_sigma"] else ("eps",))


@pytest.mark.slow
def test_a_bare_state_dict_of_10_classes_says_to_pass_num_classes(tmp_path, capsys):
    checkpoint = saved_state_dict(tmp_path, "ema-only", num_classes=10)  # no train.py args: the count is unknown
    argv = ["--model", "S/8", "--ckpt", checkpoint, "--out", str(tmp_path / "out"), "--engine", "skip", "--no-check"]
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    err = capsys.readouterr().err
    print(err.strip())
    assert exited.value.code == 1 and "has shape (11, 384)" in err and "pass --num-classes 10" in err
    with pytest.raises(SystemExit) as exited:
        cli.main([*argv, "--num-classes", "10"])
    assert exited.value.code == 0
    assert read_manifest(tmp_path / "out" / "DiT-S-8-256-fp32.onnx").num_classes == 10
