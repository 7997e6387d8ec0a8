"""Fashion-MNIST from its four IDX ``.gz`` files, as whole-dataset tensors on one device.

No torchvision: the IDX format is a 4-byte magic (two zero bytes, a type code, the number
of dimensions), one big-endian uint32 per dimension, then the raw array.
"""
from __future__ import annotations

import dataclasses
import gzip
import os
import struct
from typing import Union

import numpy as np
import torch

__all__ = ["DEFAULT_DATA_DIR", "FILES", "Dataset", "read_idx", "load_fashion_mnist"]

DEFAULT_DATA_DIR = "/usr/share/datasets/fashion-mnist"
FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
NUM_CLASSES = 10
# IDX type code -> numpy dtype (multi-byte types are big-endian).
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


@dataclasses.dataclass
class Dataset:
    """Images ``[N, 1, 28, 28]`` float32 (standardised with the train mean/std), labels int64."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int = NUM_CLASSES


def read_idx(path: Union[str, os.PathLike]) -> np.ndarray:
    """Reads one gzip-compressed IDX file into a numpy array of its stored shape."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{path}: not an IDX file (bad magic {data[:4].hex()})")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: IDX header truncated")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) - header != expected:
        raise ValueError(f"{path}: IDX payload has {len(data) - header} bytes, shape {shape} "
                         f"needs {expected}")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)


def _images(path: str) -> torch.Tensor:
    arr = read_idx(path)
    if arr.ndim != 3:
        raise ValueError(f"{path}: images must be a 3-D IDX array [N, H, W], got shape "
                         f"{arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError(f"{path}: holds no images")
    return torch.from_numpy(arr.astype(np.float32)).unsqueeze(1)


def _labels(path: str, n: int) -> torch.Tensor:
    arr = read_idx(path)
    if arr.shape != (n,):
        raise ValueError(f"{path}: labels must have shape ({n},) to match the images, "
                         f"got {arr.shape}")
    labels = torch.from_numpy(arr.astype(np.int64))
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= NUM_CLASSES):
        raise ValueError(f"{path}: labels must lie in [0, {NUM_CLASSES})")
    return labels


def load_fashion_mnist(data_dir: Union[str, os.PathLike] = DEFAULT_DATA_DIR,
                       device: Union[torch.device, str] = "cpu") -> Dataset:
    """Loads the four Fashion-MNIST files from ``data_dir`` onto ``device``.

    Pixels become float32, standardised with the mean and std of the training images.

    Raises:
        FileNotFoundError: a file is missing; the message says how to get the data.
        ValueError: a file is not a well-formed IDX file of the expected shape.
    """
    data_dir = os.fspath(data_dir)
    paths = {key: os.path.join(data_dir, name) for key, name in FILES.items()}
    missing = [FILES[key] for key, p in paths.items() if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST not found: {data_dir} lacks {', '.join(missing)}. Install it with "
            f"`apt-get install dataset-fashion-mnist` (files under {DEFAULT_DATA_DIR}) or pass "
            f"--data-dir pointing to a directory holding {', '.join(FILES.values())}.")
    x_train, x_test = _images(paths["train_images"]), _images(paths["test_images"])
    if x_train.shape[1:] != x_test.shape[1:]:
        raise ValueError(f"train images are {tuple(x_train.shape[2:])} but test images are "
                         f"{tuple(x_test.shape[2:])}")
    y_train = _labels(paths["train_labels"], x_train.shape[0])
    y_test = _labels(paths["test_labels"], x_test.shape[0])
    mean, std = x_train.mean(), x_train.std().clamp_min(1e-6)
    return Dataset(x_train=((x_train - mean) / std).to(device),
                   y_train=y_train.to(device),
                   x_test=((x_test - mean) / std).to(device),
                   y_test=y_test.to(device))


IMAGE_FILE = "grace_hopper.jpg"
"""The regression target: a 600x512 RGB photograph shipped in matplotlib's sample data."""


def load_image_regression(device: Union[torch.device, str] = "cpu", *, downsample: int = 4,
                          test_fraction: float = 0.2, split_seed: int = 0) -> Dataset:
    """Image regression: pixel coordinates -> RGB of matplotlib's ``grace_hopper.jpg``.

    The image is average-pooled by ``downsample`` (default: 150x128 = 19,200 pixels);
    inputs are the pixel centres in ``[-1, 1]²`` (float32 ``[N, 2]``), targets the RGB
    values in ``[0, 1]`` (float32 ``[N, 3]``). A fixed random ``test_fraction`` of the pixels
    (drawn with ``split_seed``) is held out: the test loss measures interpolation.
    ``num_classes`` is 3, the output width.
    """
    import matplotlib.cbook
    import matplotlib.image

    if downsample < 1 or not 0.0 < test_fraction < 1.0:
        raise ValueError(f"downsample must be >= 1 and test_fraction in (0, 1), got "
                         f"{downsample}, {test_fraction}")
    with matplotlib.cbook.get_sample_data(IMAGE_FILE) as f:
        image = torch.from_numpy(matplotlib.image.imread(f, format="jpg").copy())
    rgb = image.permute(2, 0, 1).float().div(255.0).unsqueeze(0)
    rgb = torch.nn.functional.avg_pool2d(rgb, downsample)[0]  # [3, H, W]
    h, w = rgb.shape[1:]
    ys = (torch.arange(h, dtype=torch.float32) + 0.5) / h * 2 - 1
    xs = (torch.arange(w, dtype=torch.float32) + 0.5) / w * 2 - 1
    coords = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1).reshape(-1, 2)
    targets = rgb.permute(1, 2, 0).reshape(-1, 3)
    perm = torch.randperm(coords.shape[0], generator=torch.Generator().manual_seed(split_seed))
    n_test = round(test_fraction * coords.shape[0])
    test, train = perm[:n_test], perm[n_test:]
    return Dataset(x_train=coords[train].to(device), y_train=targets[train].to(device),
                   x_test=coords[test].to(device), y_test=targets[test].to(device),
                   num_classes=3)
