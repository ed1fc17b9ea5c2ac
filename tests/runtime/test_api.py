"""The runtime's public shape: the backend registry, what dit-run imports, and bad input refused
before anything loads (one line, within seconds)."""

import importlib
import subprocess
import sys
import time

import pytest
from runtime_helpers import graph_copy

import runtime.cli as cli
from dit_ref.errors import DiTError
from runtime.backends import BACKENDS, backend_for, load_denoiser

ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]


def dit_run(argv, capsys) -> tuple[int, str, float]:
    """dit-run in-process: (exit code, stderr, seconds)."""
    start = time.perf_counter()
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    return exited.value.code, capsys.readouterr().err, time.perf_counter() - start


def test_every_backend_is_one_module_with_load():
    for backend in BACKENDS.values():
        module = importlib.import_module(backend.module)
        assert callable(module.load), backend.name
        for suffix in backend.suffixes:
            assert backend_for(f"model{suffix}", backend.name) == backend.name
            assert suffix in BACKENDS[backend_for(f"model{suffix}")].suffixes  # auto picks one that runs it


@pytest.mark.parametrize("decoder", ["none", "a decoder graph"])
def test_dit_run_on_a_graph_imports_no_export_module_and_no_onnx(graphs, exported_decoder, tmp_path, decoder):
    vae, out = ("none", tmp_path / "x.npy") if decoder == "none" else (str(exported_decoder("fp16").graph),
                                                                      tmp_path / "x.png")
    code = (
        "import sys, runtime.cli\n"
        "try:\n"
        f"    runtime.cli.main([{str(graphs['fp32'])!r}, '--class', '1', '--steps', '1', '--vae', {vae!r},\n"
        f"                      '--threads', '1', '--out', {str(out)!r}])\n"
        "except SystemExit as exit:\n"
        "    print(exit.code)\n"
        "print(sorted(m for m in sys.modules if m == 'onnx' or m == 'export' or m.startswith(('onnx.', 'export.'))))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    print(done.stdout, done.stderr[-500:])
    assert done.stdout.split() == ["0", "[]"]


@pytest.mark.parametrize("option, words", [
    (["--batch-size", "0"], "--batch-size must be at least 1"), (["--threads", "0"], "--threads must be at least 1"),
    (["--steps", "0"], "--steps must be 1..1000"), (["--steps", "1001"], "--steps must be 1..1000"),
    (["--cfg-scale", "nan"], "--cfg-scale must be a finite number"), (["--num-samples", "0"], "--num-samples must be"),
])
def test_bad_options_fail_at_once_before_the_vae(graphs, capsys, tmp_path, option, words):
    # --vae left at its default (the hub VAE, unreachable offline): the option error must come first.
    code, err, seconds = dit_run([str(graphs["fp32"]), "--class", "1", *option, "--out", str(tmp_path / "s.png")],
                                 capsys)
    print(err, f"{seconds:.2f} s")
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 1 and len(lines) == 1 and words in lines[0] and seconds < 10


def test_label_outside_the_models_classes(capsys, tmp_path):
    code, err, _ = dit_run(["--backend", "torch", "--model", "fashion", "--random-init", "0", "--class", "10",
                            "--out", str(tmp_path / "s.png")], capsys)
    print(err)
    assert code == 1 and "--class 10 is out of range" in err and "0..9" in err


def test_manifest_that_lies_about_the_size_is_refused(graphs, tmp_path):
    link = graph_copy(graphs["fp32"], tmp_path, image_size=512, latent_size=64)  # the graph takes 32 x 32 latents
    with pytest.raises(DiTError) as caught:
        load_denoiser(link)
    print(caught.value)
    message = str(caught.value)
    assert "(B, 4, 32, 32)" in message and "(B, 4, 64, 64)" in message and "is the truth" in message


def test_manifest_that_contradicts_itself_is_refused_before_loading(graphs, tmp_path, capsys):
    # Only image_size edited: the latent size still matches the graph, but 32 x 32 latents make 256 px.
    link = graph_copy(graphs["fp32"], tmp_path, image_size=512)
    code, err, seconds = dit_run([str(link), "--class", "1", "--vae", "none", "--out", str(tmp_path / "x.npy")],
                                 capsys)
    print(err)
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 1 and len(lines) == 1 and "claims 512 px images" in lines[0] and "make 256 px" in lines[0]
    assert not (tmp_path / "x.npy").exists()


def test_the_torch_backend_without_a_model_fails_before_anything_loads(capsys, tmp_path):
    code, err, seconds = dit_run(["--backend", "torch", "--ckpt", "auto", "--out", str(tmp_path / "s.png")], capsys)
    print(err, f"{seconds:.2f} s")
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 1 and len(lines) == 1 and "needs --model" in lines[0] and seconds < 5
    assert "vae" not in err.lower() and list(tmp_path.iterdir()) == []


def test_a_backend_option_of_another_backend_is_refused(graphs):
    with pytest.raises(DiTError, match="--cuda-graphs is for the tensorrt backend"):
        load_denoiser(graphs["fp32"], cuda_graphs=True)
    with pytest.raises(DiTError, match="--dtype is for the openvino or torch backend"):
        load_denoiser(graphs["fp32"], "onnxruntime", dtype="float16")


def test_denoiser_is_a_context_manager(graphs):
    with load_denoiser(graphs["fp32"], "onnxruntime", threads=1) as denoiser:
        assert denoiser.latent_shape == (4, 32, 32) and denoiser.provenance.num_classes == 1000
    assert denoiser.runner.session is None  # closed


def test_the_torch_backend_takes_a_train_py_checkpoints_class_count(tmp_path, capsys):
    """train.py --num-classes 10: its args say 10, so dit-run's default labels are each class once."""
    import argparse

    import numpy as np
    import torch

    from dit_ref import DiT, configs, randomize_weights_

    model = randomize_weights_(DiT(configs.with_shape(configs.get_config("S/8"), num_classes=10), 256), seed=2)
    args = argparse.Namespace(model="DiT-S/8", image_size=256, num_classes=10)
    checkpoint = tmp_path / "0001000.pt"
    torch.save({"model": model.state_dict(), "ema": model.state_dict(), "opt": {}, "args": args}, checkpoint)
    out = tmp_path / "latents.npy"
    argv = ["--backend", "torch", "--model", "S/8", "--ckpt", str(checkpoint), "--steps", "1", "--vae", "none",
            "--threads", "1", "--out", str(out)]
    code, err, _ = dit_run(argv, capsys)
    assert code == 0, err
    assert np.load(out).shape == (10, 4, 32, 32)  # classes 0..9, once each
    code, err, _ = dit_run([*argv, "--class", "500"], capsys)
    assert code == 1 and "--class 500 is out of range: this model's classes are 0..9" in err
