"""Fashion-MNIST (Xiao et al. 2017; MIT licence) from Debian's dataset-fashion-mnist package.

60,000 training and 10,000 test images, 28 x 28 grayscale, 10 classes, in the original IDX files.
Used only to train the shipped small DiT and the quality classifier.
"""

import gzip
from pathlib import Path

import numpy as np

from dit_ref.errors import DiTError

DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
               "Ankle boot")
FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
         "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}


def _read_idx(path: Path, header_ints: int) -> np.ndarray:
    """The uint8 payload of a gzipped IDX file, after its big-endian header."""
    try:
        data = gzip.decompress(path.read_bytes())
    except FileNotFoundError:
        raise DiTError(f"{path} not found; install Fashion-MNIST with: apt-get install dataset-fashion-mnist "
                       "(or pass --data DIR holding the four IDX .gz files)") from None
    except (OSError, EOFError, gzip.BadGzipFile) as error:
        raise DiTError(f"{path} is unreadable ({error}); reinstall dataset-fashion-mnist") from None
    return np.frombuffer(data, dtype=np.uint8, offset=4 * header_ints)


def load(split: str = "train", data_dir: Path = DATA_DIR) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 28, 28), labels int64 (N,)) of the "train" or "test" split."""
    images_file, labels_file = FILES[split]
    images = _read_idx(Path(data_dir) / images_file, header_ints=4).reshape(-1, 28, 28)
    labels = _read_idx(Path(data_dir) / labels_file, header_ints=2).astype(np.int64)
    if len(images) != len(labels):
        raise DiTError(f"{data_dir}: {len(images)} images but {len(labels)} labels in the {split} split")
    return images, labels


def to_model_range(images: np.ndarray):
    """uint8 (N, 28, 28) -> float32 torch (N, 1, 28, 28) in [-1, 1], the scale the model trains on."""
    import torch

    return torch.from_numpy(images.astype(np.float32) / 127.5 - 1.0).unsqueeze(1)
