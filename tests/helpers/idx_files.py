"""Writes small Fashion-MNIST-like IDX .gz files for the data and training tests."""
import gzip
import os
import struct

import numpy as np

from is_kernels.train.data import FILES


def write_idx(path, array: np.ndarray, type_code: int = 0x08) -> None:
    """IDX file: magic (0, 0, type, ndim), big-endian uint32 dims, raw data; gzip'ed."""
    header = bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.tobytes())


def synthetic_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """28x28 uint8 noise with a bright 6x6 block whose position encodes the label."""
    images = rng.integers(0, 60, size=(labels.shape[0], 28, 28), dtype=np.uint8)
    for i, c in enumerate(labels):
        r, col = 2 + 8 * (c // 3), 2 + 8 * (c % 3)
        images[i, r:r + 6, col:col + 6] = 255
    return images


def write_fashion_mnist(directory, n_train: int = 300, n_test: int = 100, seed: int = 0):
    """The four files of a learnable synthetic 10-class dataset; returns the arrays."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        labels = rng.integers(0, 10, size=n).astype(np.uint8)
        arrays[f"{split}_labels"] = labels
        arrays[f"{split}_images"] = synthetic_images(labels, rng)
    for key, array in arrays.items():
        write_idx(os.path.join(directory, FILES[key]), array)
    return arrays
