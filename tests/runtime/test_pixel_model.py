"""A pixel-space model through dit-run: grayscale PNGs (grid, one per sample) and .npz, no VAE."""

import numpy as np
import pytest
from PIL import Image

import runtime.cli as cli

FASHION = ["--backend", "torch", "--model", "fashion", "--random-init", "0", "--steps", "2", "--threads", "1"]


def dit_run(argv, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    return exited.value.code, capsys.readouterr().err


def test_grid_of_every_class_one_row_each(capsys, tmp_path):
    out = tmp_path / "grid.png"
    labels = [f"--class={k},{k}" for k in range(10)]
    code, err = dit_run([*FASHION, *labels, "--grid-columns", "2", "--out", str(out)], capsys)
    assert code == 0, err
    with Image.open(out) as image:  # 10 rows of 2, 28 px, padding 2
        assert image.mode == "L" and image.size == (2 * 30 + 2, 10 * 30 + 2)
        assert "pixels" in image.info["vae"] and "RANDOM WEIGHTS" in image.info["Warning"]


def test_npz_and_directory_are_grayscale(capsys, tmp_path):
    assert dit_run([*FASHION, "--num-samples", "3", "--out", str(tmp_path / "s.npz")], capsys)[0] == 0
    with np.load(tmp_path / "s.npz") as archive:
        assert archive["arr_0"].shape == (3, 28, 28, 1) and archive["arr_0"].dtype == np.uint8
    assert dit_run([*FASHION, "--class", "7", "--out", str(tmp_path / "one")], capsys)[0] == 0
    with Image.open(tmp_path / "one" / "000000.png") as image:
        assert image.mode == "L" and image.size == (28, 28)


def test_a_vae_for_a_pixel_model_is_refused(capsys, tmp_path):
    code, err = dit_run([*FASHION, "--vae", "mse", "--out", str(tmp_path / "s.png")], capsys)
    print(err)
    assert code == 1 and "this model makes pixels" in err and not (tmp_path / "s.png").exists()
