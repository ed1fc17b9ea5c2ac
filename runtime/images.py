"""Writing samples: a PNG grid, one PNG per sample, an .npz for FID tools, or latents as .npy.

Every output is built under a temporary name beside its destination and renamed into place only
when complete, so an error or Ctrl-C leaves no partial file. Use as a context manager:
    with open_output(path, kind, total) as output: output.add(batch)
"""

import io
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin

from dit_ref import files
from dit_ref.errors import DiTError

GRID_COLUMNS = 4  # sample.py: save_image(samples, "sample.png", nrow=4)
GRID_PADDING = 2  # torchvision make_grid's default padding, pad value 0 (black)


def grid_from_images(images: np.ndarray, columns: int = GRID_COLUMNS, padding: int = GRID_PADDING) -> np.ndarray:
    """uint8 (N, H, W, 3) -> one image laid out as torchvision's make_grid (columns per row, padding)."""
    n, height, width, channels = images.shape
    columns = min(columns, n)
    rows = -(-n // columns)
    cell_h, cell_w = height + padding, width + padding
    grid = np.zeros((rows * cell_h + padding, columns * cell_w + padding, channels), dtype=np.uint8)
    for k, image in enumerate(images):
        top, left = (k // columns) * cell_h + padding, (k % columns) * cell_w + padding
        grid[top:top + height, left:left + width] = image
    return grid


def pil_image(image: np.ndarray) -> Image.Image:
    """uint8 (H, W, 3) -> an RGB image, (H, W, 1) -> a grayscale one."""
    return Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)


def png_bytes(image: np.ndarray, metadata: dict | None = None) -> bytes:
    """uint8 (H, W, 3 or 1) -> the bytes of a PNG file (what dit-run writes for one sample)."""
    buffer = io.BytesIO()
    pil_image(image).save(buffer, format="PNG", pnginfo=png_info(metadata))
    return buffer.getvalue()


def png_info(metadata: dict | None) -> PngImagePlugin.PngInfo | None:
    """PNG text chunks (model, sampler, seed, labels, a random-weights warning) for provenance."""
    if not metadata:
        return None
    info = PngImagePlugin.PngInfo()
    for key, value in metadata.items():
        info.add_text(str(key), str(value))
    return info


class _Output:
    """Base: a temporary path renamed onto the destination on commit, removed on discard."""

    directory = False

    def __init__(self, path: Path, metadata: dict | None = None):
        self.path, self.metadata = path, metadata
        self.temporary = files.temporary_beside(path, self.directory, suffix=".partial")

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        if kind is None:
            self.commit()
        else:
            self.discard()
        return False

    def add(self, batch: np.ndarray) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        """Complete the temporary file before the rename."""

    def commit(self) -> None:
        self.finish()
        files.publish(self.temporary, self.path)

    def discard(self) -> None:
        files.discard(self.temporary)


class GridOutput(_Output):
    """All samples in one PNG, `columns` per row (4: sample.py's layout)."""

    def __init__(self, path: Path, metadata: dict | None = None, columns: int = GRID_COLUMNS):
        super().__init__(path, metadata)
        self.images, self.columns = [], columns

    def add(self, batch):
        self.images.append(batch)

    def finish(self):
        grid = grid_from_images(np.concatenate(self.images), self.columns)
        pil_image(grid).save(self.temporary, format="PNG", pnginfo=png_info(self.metadata))


class DirectoryOutput(_Output):
    """One PNG per sample, 000000.png, 000001.png, ... (sample_ddp.py's names)."""

    directory = True

    def __init__(self, path: Path, metadata: dict | None = None):
        super().__init__(path, metadata)
        self.count = 0

    def add(self, batch):
        for image in batch:
            name = self.temporary / f"{self.count:06d}.png"
            pil_image(image).save(name, format="PNG", pnginfo=png_info(self.metadata))
            self.count += 1


class ArrayOutput(_Output):
    """One array streamed into .npy, or into .npz under key arr_0 (ADM's evaluator reads arr_0).

    The header is written for the announced total shape, then each batch's bytes: a 50,000-image
    .npz never has to fit in memory.
    """

    def __init__(self, path: Path, shape: tuple, dtype, zipped: bool):
        super().__init__(path)
        self.shape, self.dtype, self.written = shape, np.dtype(dtype), 0
        if zipped:
            self.archive = zipfile.ZipFile(self.temporary, "w", zipfile.ZIP_STORED, allowZip64=True)
            self.file = self.archive.open("arr_0.npy", "w", force_zip64=True)
        else:
            self.archive, self.file = None, open(self.temporary, "wb")
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": shape}
        np.lib.format.write_array_header_1_0(self.file, header)

    def add(self, batch):
        batch = np.ascontiguousarray(batch, dtype=self.dtype)
        self.file.write(batch.tobytes())
        self.written += len(batch)

    def finish(self):
        if self.written != self.shape[0]:
            raise DiTError(f"internal: wrote {self.written} of {self.shape[0]} samples to {self.path}")
        self._close()

    def discard(self):
        self._close()
        super().discard()

    def _close(self):
        if not self.file.closed:
            self.file.close()
        if self.archive is not None and self.archive.fp is not None:
            self.archive.close()


def output_kind(out, latents: bool) -> str:
    """"npy" (latents), "png" (grid), "npz" or "dir" for --out; DiTError for a name that cannot work."""
    path = Path(out).expanduser()
    if not path.parent.is_dir():
        raise DiTError(f"the directory of --out {path} does not exist; create it first")
    suffix = path.suffix.lower()
    if latents:
        if suffix != ".npy":
            raise DiTError(f"--vae none writes latents: give --out a .npy name, not {path.name}")
        return "npy"
    if suffix in (".png", ".npz"):
        return suffix[1:]
    if suffix == "":
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise DiTError(f"{path} exists and is not an empty directory; choose a new --out directory")
        return "dir"
    raise DiTError(f"--out {path.name}: use a .png (grid), .npz (uint8 images) or a directory name "
                   f"(one PNG per sample); .npy is for --vae none")


def open_output(out, total: int, image_size: int | None, latent_size: int, metadata: dict | None = None,
                channels: int = 3, latent_channels: int = 4, columns: int = GRID_COLUMNS):
    """The writer for --out: .npy latents when image_size is None (--vae none), else .png / .npz / a directory.

    channels: of the images (3 from the SD VAE, 1 for grayscale pixel models); latent_channels: of
    the .npy latents (4 for the SD VAE's); columns: images per row of a .png grid.
    """
    path = Path(out).expanduser()
    kind = output_kind(path, latents=image_size is None)
    if kind == "npy":
        return ArrayOutput(path, (total, latent_channels, latent_size, latent_size), np.float32, zipped=False)
    if kind == "npz":
        return ArrayOutput(path, (total, image_size, image_size, channels), np.uint8, zipped=True)
    return GridOutput(path, metadata, columns) if kind == "png" else DirectoryOutput(path, metadata)
