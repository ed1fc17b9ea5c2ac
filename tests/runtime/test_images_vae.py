"""Output files (grid, directory, .npz, .npy, all atomic) and the VAE decode."""

import numpy as np
import pytest
import torch
from PIL import Image
from runtime_helpers import leftovers

from dit_ref.errors import DiTError
from runtime.images import grid_from_images, open_output
from runtime.vae import SD_VAE_CONFIG, decode, load_vae, pixels_from_images, random_vae


def images(n: int, size: int = 16) -> np.ndarray:
    """n distinct uint8 images (N, size, size, 3): image k is filled with k + 1."""
    return np.stack([np.full((size, size, 3), k + 1, dtype=np.uint8) for k in range(n)])


@pytest.mark.parametrize("n, rows, columns", [(8, 2, 4), (5, 2, 4), (3, 1, 3), (1, 1, 1)])
def test_grid_layout_is_torchvision_make_grid(n, rows, columns):
    # torchvision.utils.make_grid (sample.py's save_image, nrow=4): padding 2, pad value 0;
    # size (rows * (H + 2) + 2, columns * (W + 2) + 2).
    grid = grid_from_images(images(n))
    assert grid.shape == (rows * 18 + 2, columns * 18 + 2, 3)
    for k in range(n):
        top, left = (k // 4) * 18 + 2, (k % 4) * 18 + 2
        assert (grid[top:top + 16, left:left + 16] == k + 1).all()
    assert grid[:2].max() == 0 and grid[:, :2].max() == 0  # the padding is black
    assert grid.sum() == images(n).sum()


def test_png_grid_file_with_provenance(tmp_path):
    path = tmp_path / "grid.png"
    with open_output(path, 8, 16, 2, {"Warning": "RANDOM WEIGHTS"}) as output:
        output.add(images(4))
        output.add(images(4))
    with Image.open(path) as image:
        assert image.size == (4 * 18 + 2, 2 * 18 + 2) and image.info["Warning"] == "RANDOM WEIGHTS"
    assert leftovers(tmp_path) == ["grid.png"]


def test_npz_layout_for_fid_tools(tmp_path):
    # sample_ddp.py / ADM's evaluator: np.savez(path, arr_0=samples), samples (N, H, W, 3) uint8.
    path, batches = tmp_path / "samples.npz", [images(3), images(2) + 50]
    with open_output(path, 5, 16, 2) as output:
        for batch in batches:
            output.add(batch)
    with np.load(path) as archive:
        assert archive.files == ["arr_0"]
        arr = archive["arr_0"]
    assert arr.shape == (5, 16, 16, 3) and arr.dtype == np.uint8
    assert np.array_equal(arr, np.concatenate(batches))


def test_npy_latents(tmp_path):
    path, latents = tmp_path / "latents.npy", np.random.default_rng(0).standard_normal((3, 4, 8, 8)).astype(np.float32)
    with open_output(path, 3, None, 8) as output:
        output.add(latents[:2])
        output.add(latents[2:])
    loaded = np.load(path)
    assert loaded.shape == (3, 4, 8, 8) and loaded.dtype == np.float32 and np.array_equal(loaded, latents)


def test_directory_of_pngs(tmp_path):
    path = tmp_path / "samples"
    with open_output(path, 3, 16, 2) as output:
        output.add(images(3))
    assert leftovers(path) == ["000000.png", "000001.png", "000002.png"]
    assert np.array_equal(np.asarray(Image.open(path / "000002.png")), images(3)[2])
    assert leftovers(tmp_path) == ["samples"]


@pytest.mark.parametrize("name, image_size", [("grid.png", 16), ("a.npz", 16), ("d", 16), ("z.npy", None)])
def test_no_partial_output_on_error(tmp_path, name, image_size):
    with pytest.raises(KeyboardInterrupt):
        with open_output(tmp_path / name, 4, image_size, 2) as output:
            output.add(images(2) if image_size else np.zeros((2, 4, 2, 2), np.float32))
            raise KeyboardInterrupt
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("name, image_size, words", [
    ("x.png", None, "give --out a .npy"), ("x.jpg", 16, "use a .png"), ("missing/x.png", 16, "does not exist"),
])
def test_bad_out_names(tmp_path, name, image_size, words):
    with pytest.raises(DiTError, match=words):
        open_output(tmp_path / name, 1, image_size, 2)


def test_non_empty_directory_is_refused(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "keep.txt").write_text("mine")
    with pytest.raises(DiTError, match="not an empty directory"):
        open_output(tmp_path / "d", 1, 16, 2)


def test_pixels_as_sample_ddp():
    # sample_ddp.py: torch.clamp(127.5 * x + 128.0, 0, 255).to(torch.uint8) (the cast truncates).
    x = torch.tensor([-1.0, 0.0, 1.0, -2.0, 2.0, 0.5, -0.004]).reshape(1, 1, 1, 7).expand(1, 3, 1, 7)
    pixels = pixels_from_images(x)
    assert pixels.shape == (1, 1, 7, 3) and pixels.dtype == np.uint8
    assert pixels[0, 0, :, 0].tolist() == [0, 128, 255, 0, 255, 191, 127]


def test_local_vae_directory_decodes(tiny_vae_dir):
    vae = load_vae(str(tiny_vae_dir))
    out = decode(vae, torch.randn(3, 4, 32, 32, generator=torch.Generator().manual_seed(0)), batch_size=2)
    assert vae.random_weights is False and vae.source == str(tiny_vae_dir)
    assert out.shape == (3, 256, 256, 3) and out.dtype == np.uint8 and out.std() > 0


def test_random_vae_has_the_sd_vae_architecture():
    vae = random_vae()
    config = vae.config
    assert list(config.block_out_channels) == SD_VAE_CONFIG["block_out_channels"] and config.latent_channels == 4
    params = sum(p.numel() for p in vae.parameters()) / 1e6
    print(f"random SD-architecture VAE: {params:.2f}M parameters")
    # 83.65M: the parameter count of stabilityai/sd-vae-ft-mse's diffusion_pytorch_model (encoder + decoder).
    assert abs(params - 83.65) < 0.01
    assert load_vae("random").random_weights


def test_unknown_vae_spec():
    with pytest.raises(DiTError, match="neither ema, mse, random, none nor a directory"):
        load_vae("no-such-vae-dir")
    assert load_vae("none") is None


def test_an_unreachable_hub_is_said_at_once_not_after_its_retries(monkeypatch, tmp_path):
    """huggingface_hub retries an unreachable hub for about 25 s, warning each time; we ask once, briefly."""
    import time

    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    started = time.perf_counter()
    with pytest.raises(DiTError, match=r"the hub at 127\.0\.0\.1 is unreachable .* not in the Hugging Face cache\); "
                                       r"pass a local directory") as refused:
        load_vae("mse")
    print(f"{refused.value} ({time.perf_counter() - started:.1f} s)")
