"""Tests of is_kernels.train.data (IDX reader, Fashion-MNIST loader) and the models."""
import gzip
import os

import numpy as np
import pytest
import torch
from helpers.idx_files import write_fashion_mnist, write_idx

from is_kernels.train.data import DEFAULT_DATA_DIR, FILES, load_fashion_mnist, read_idx
from is_kernels.train.models import MODELS, build_model


@pytest.mark.parametrize("dtype,code", [(np.uint8, 0x08), (np.dtype(">i4"), 0x0C),
                                        (np.dtype(">f4"), 0x0D)])
def test_read_idx_roundtrip(tmp_path, dtype, code):
    a = (np.arange(24).reshape(2, 3, 4) * 3).astype(dtype)
    write_idx(tmp_path / "a.gz", a, code)
    b = read_idx(tmp_path / "a.gz")
    assert b.shape == a.shape and np.array_equal(b, a)


def test_read_idx_rejects_bad_files(tmp_path):
    write_idx(tmp_path / "ok.gz", np.zeros((2, 3), np.uint8))
    with gzip.open(tmp_path / "ok.gz") as f:
        good = f.read()
    for name, data, match in [("magic", b"\x01\x00\x08\x01" + good[4:], "bad magic"),
                              ("type", b"\x00\x00\x07\x02" + good[4:], "bad magic"),
                              ("short", good[:-1], "payload"),
                              ("header", good[:6], "header truncated")]:
        with gzip.open(tmp_path / name, "wb") as f:
            f.write(data)
        with pytest.raises(ValueError, match=match):
            read_idx(tmp_path / name)


def test_load_synthetic(tmp_path):
    arrays = write_fashion_mnist(tmp_path, n_train=40, n_test=12)
    d = load_fashion_mnist(tmp_path)
    assert d.x_train.shape == (40, 1, 28, 28) and d.x_test.shape == (12, 1, 28, 28)
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.int64
    assert torch.equal(d.y_train, torch.from_numpy(arrays["train_labels"].astype(np.int64)))
    # standardised with the training statistics, the same affine map on both splits
    assert abs(float(d.x_train.mean())) < 1e-4 and abs(float(d.x_train.std()) - 1) < 1e-3
    raw = arrays["test_images"].astype(np.float64)
    raw_train = arrays["train_images"].astype(np.float64)
    expected = (raw - raw_train.mean()) / raw_train.std(ddof=1)
    assert np.allclose(d.x_test[:, 0].numpy(), expected, atol=1e-4)


def test_missing_files_say_how_to_get_them(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist") as e:
        load_fashion_mnist(tmp_path)
    assert "--data-dir" in str(e.value)
    write_fashion_mnist(tmp_path)
    os.remove(tmp_path / FILES["test_labels"])
    with pytest.raises(FileNotFoundError, match=FILES["test_labels"]):
        load_fashion_mnist(tmp_path)


def test_label_count_must_match_images(tmp_path):
    write_fashion_mnist(tmp_path, n_train=20)
    write_idx(tmp_path / FILES["train_labels"], np.zeros(19, np.uint8))
    with pytest.raises(ValueError, match="labels must have shape"):
        load_fashion_mnist(tmp_path)


def test_labels_out_of_range(tmp_path):
    write_fashion_mnist(tmp_path, n_train=20)
    write_idx(tmp_path / FILES["train_labels"], np.full(20, 10, np.uint8))
    with pytest.raises(ValueError, match="labels must lie in"):
        load_fashion_mnist(tmp_path)


@pytest.mark.skipif(not all(os.path.isfile(os.path.join(DEFAULT_DATA_DIR, f))
                            for f in FILES.values()),
                    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
def test_real_fashion_mnist():
    d = load_fashion_mnist()
    assert d.x_train.shape == (60000, 1, 28, 28) and d.x_test.shape == (10000, 1, 28, 28)
    assert torch.equal(torch.bincount(d.y_train), torch.full((10,), 6000))
    assert torch.equal(torch.bincount(d.y_test), torch.full((10,), 1000))


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_models_output_logits(name):
    model = build_model(name, (1, 28, 28), 10)
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)


def test_coordinate_network():
    torch.manual_seed(0)
    model = build_model("coord_mlp", (2,), 3)
    assert model(torch.zeros(5, 2)).shape == (5, 3)
    torch.manual_seed(0)
    same = build_model("coord_mlp", (2,), 3)
    assert torch.equal(model[0].b, same[0].b)  # the Fourier features follow the seed
    assert "coord_mlp" in MODELS


def test_mlp_is_the_dlis_network():
    sizes = [m.weight.shape for m in build_model("mlp", (1, 28, 28), 10)
             if isinstance(m, torch.nn.Linear)]
    assert sizes == [(512, 784), (512, 512), (10, 512)]


def test_unknown_model():
    with pytest.raises(ValueError, match="model must be one of"):
        build_model("resnet", (1, 28, 28), 10)
