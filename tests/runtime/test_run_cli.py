"""dit-run end to end on the tiny S/8 graph and checkpoint: outputs, labels, one-line errors, no partial files."""

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from runtime_helpers import ScriptedDenoiser, graph_copy, leftovers

import runtime.cli as cli
from runtime.backends import load_denoiser
from testing_utils import max_rel_error

TORCH = ["--backend", "torch", "--random-init", "0", "--model", "S/8", "--image-size", "256"]


def dit_run(argv, capsys) -> tuple[int, str]:
    """Run dit-run in-process: (exit code, stderr)."""
    with pytest.raises(SystemExit) as exited:
        cli.main([*argv, "--threads", "1"])
    return exited.value.code, capsys.readouterr().err


def assert_one_line_error(code, err, *words):
    print(err)
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 1 and len(lines) == 1 and "Traceback" not in err
    for word in words:
        assert word in lines[0]


@pytest.mark.parametrize("value", ["1000", "-1", "207,1000", "dog"])
def test_bad_class_is_one_line(capsys, tmp_path, value):
    code, err = dit_run([*TORCH, f"--class={value}", "--out", str(tmp_path / "s.png")], capsys)
    assert_one_line_error(code, err, "--class", "0..999")
    assert leftovers(tmp_path) == []


def test_vae_none_writes_latents_from_the_graph_as_the_torch_backend_does(graphs, capsys, tmp_path):
    common = ["--class", "207,360", "--class", "88", "--steps", "3", "--vae", "none", "--seed", "4"]
    assert dit_run([str(graphs["fp32"]), *common, "--out", str(tmp_path / "g.npy")], capsys)[0] == 0
    code, err = dit_run([*TORCH, *common, "--out", str(tmp_path / "t.npy")], capsys)
    graph, torch_latents = np.load(tmp_path / "g.npy"), np.load(tmp_path / "t.npy")
    error = max_rel_error(graph, torch_latents)
    print(f"{err}dit-run graph vs torch backend, 3 DDPM steps: {error:.2e}")
    assert code == 0 and "RANDOM WEIGHTS" in err
    assert graph.shape == (3, 4, 32, 32) and graph.dtype == np.float32 and error < 1e-4


def test_png_grid_of_the_demo_labels(graphs, tiny_vae_dir, capsys, tmp_path):
    out = tmp_path / "sample.png"
    code, err = dit_run([str(graphs["fp16"]), "--steps", "2", "--vae", str(tiny_vae_dir), "--out", str(out),
                         "--batch-size", "5"], capsys)
    assert code == 0, err
    with Image.open(out) as image:  # 8 demo labels, 4 per row, 256 px, padding 2
        assert image.size == (4 * 258 + 2, 2 * 258 + 2) and "RANDOM WEIGHTS" in image.info["Warning"]
    assert leftovers(tmp_path) == ["sample.png"]


def test_npz_with_random_labels(tiny_vae_dir, capsys, tmp_path):
    out = tmp_path / "fid.npz"
    code, err = dit_run([*TORCH, "--num-samples", "3", "--steps", "2", "--vae", str(tiny_vae_dir),
                         "--out", str(out), "--batch-size", "2", "--sampler", "dpm++"], capsys)
    assert code == 0, err
    with np.load(out) as archive:
        assert archive.files == ["arr_0"] and archive["arr_0"].shape == (3, 256, 256, 3)
        assert archive["arr_0"].dtype == np.uint8


def test_graph_for_512_asked_for_256(graphs, capsys, tmp_path):
    link = graph_copy(graphs["fp32"], tmp_path, image_size=512, latent_size=64)
    code, err = dit_run([str(link), "--image-size", "256", "--vae", "none", "--out", str(tmp_path / "x.npy")], capsys)
    assert_one_line_error(code, err, "512", "256")
    assert sorted(leftovers(tmp_path)) == sorted([link.name, link.with_suffix(".json").name])


def test_batch_size_beyond_the_manifest(graphs, capsys, tmp_path):
    link = graph_copy(graphs["fp32"], tmp_path, batch={"min": 1, "opt": 2, "max": 2})
    code, err = dit_run([str(link), "--batch-size", "4", "--vae", "none", "--out", str(tmp_path / "x.npy")], capsys)
    assert_one_line_error(code, err, "outside the range 1..2")


@pytest.mark.parametrize("out_name, failure", [("s.npy", "nan"), ("dir", "nan"), ("s.npy", "interrupt")])
def test_failure_in_a_later_batch_leaves_no_output(reference, tiny_vae_dir, monkeypatch, capsys, tmp_path, out_name,
                                                   failure):
    # Batches of 2, 3 steps each: call 4 is the second batch's second step.
    exception = KeyboardInterrupt() if failure == "interrupt" else None
    monkeypatch.setattr(cli, "load_denoiser", lambda *a, **k: ScriptedDenoiser(reference, at=4, exception=exception))
    out = tmp_path / out_name
    code, err = dit_run([*TORCH, "--num-samples", "4", "--batch-size", "2", "--steps", "3", "--out", str(out),
                         "--vae", "none" if out_name.endswith(".npy") else str(tiny_vae_dir)], capsys)
    if failure == "nan":
        assert_one_line_error(code, err, "NaN or inf at step 2 of 3", "timestep")
    else:
        assert_one_line_error(code, err, "interrupted")
    assert leftovers(tmp_path) == []


def test_offline_hub_vae_says_what_to_do(tmp_path):
    # A fresh process, offline, with an empty hub cache: the hub VAE cannot be fetched.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    out = tmp_path / "s.png"
    result = subprocess.run([sys.executable, "-m", "runtime.cli", *TORCH, "--vae", "ema", "--out", str(out)],
                            env=env, capture_output=True, text=True, timeout=120)
    print(result.stderr)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "stabilityai/sd-vae-ft-ema" in result.stderr and "--vae none" in result.stderr
    assert "local directory" in result.stderr and not out.exists()


def test_load_denoiser_is_what_the_cli_uses():
    assert cli.load_denoiser is load_denoiser
