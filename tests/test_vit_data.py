"""Fashion-MNIST and MNIST preparation, on fixtures cut from the real files (240 + 60
Fashion-MNIST images as IDX, 120 / 30 / 30 MNIST images in the original pickle format)."""
import gzip
import io
import pickle

import numpy as np
import pytest

from qkv import data
from qkv.data import DataError
from qkv.data.images import channel_stats, load_split, read_idx, read_meta
from qkv.data.mnist import read_arrays

from .conftest import FIXTURES


def test_fashion_mnist_from_idx_files(tmp_path):
    folder = data.get("fashion-mnist", root=tmp_path, source=FIXTURES / "fashion-mnist", log=lambda *a: None)
    meta = read_meta(folder)
    assert meta["counts"] == {"train": 220, "val": 20, "test": 60}
    assert meta["labels"][9] == "Ankle boot" and meta["image_size"] == [28, 28] and meta["channels"] == 1
    train, val = load_split(folder, "train"), load_split(folder, "val")
    raw = read_idx(FIXTURES / "fashion-mnist" / "train-images-idx3-ubyte.gz")
    # train and val partition the original training images: nothing lost, nothing shared
    together = np.concatenate([train[0], val[0]]).reshape(240, -1)
    assert sorted(map(bytes, together)) == sorted(map(bytes, raw.reshape(240, -1)))
    assert train[0].dtype == np.uint8 and train[1].dtype == np.int64
    again = data.get("fashion-mnist", root=tmp_path, log=lambda *a: None)  # prepared: a no-op
    assert np.array_equal(load_split(again, "val")[0], val[0])


def test_idx_errors_are_clear(tmp_path):
    bad = tmp_path / "bad.gz"
    bad.write_bytes(gzip.compress(b"\x00\x00\x08\x03\x00\x00\x00\x05\x00\x00\x00\x1c\x00\x00\x00\x1c" + b"\x00" * 10))
    with pytest.raises(DataError, match="truncated"):
        read_idx(bad)
    with pytest.raises(DataError, match="lacks the Fashion-MNIST IDX files"):
        data.get("fashion-mnist", root=tmp_path / "root", source=tmp_path, log=lambda *a: None)


def test_mnist_from_pickle(tmp_path):
    folder = data.get("mnist", root=tmp_path, source=FIXTURES / "mnist" / "mnist.pkl.gz", log=lambda *a: None)
    assert read_meta(folder)["counts"] == {"train": 120, "val": 30, "test": 30}
    images, labels = load_split(folder, "test")
    original = read_arrays(FIXTURES / "mnist" / "mnist.pkl.gz")[2]
    assert np.array_equal(images.reshape(30, -1) / 256, original[0]) and np.array_equal(labels, original[1])


class Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_mnist_pickle_refuses_anything_but_arrays(tmp_path):
    file = tmp_path / "mnist.pkl.gz"
    file.write_bytes(gzip.compress(pickle.dumps(((np.zeros((1, 784)), Evil()),), protocol=2)))
    with pytest.raises(DataError, match="asks for __builtin__.print; only plain numpy arrays"):
        read_arrays(file)
    buf = io.BytesIO()
    pickle.dump(((np.zeros((2, 10)), np.zeros(2)),) * 3, buf, protocol=2)
    file.write_bytes(gzip.compress(buf.getvalue()))
    with pytest.raises(DataError, match="784 pixels"):
        read_arrays(file)


def test_channel_stats_by_hand():
    grey = np.array([[[0, 255], [255, 0]]], dtype=np.uint8)  # (1, 2, 2): two 0s and two 1s
    assert channel_stats(grey) == ([0.5], [round(0.5773502691896258, 4)])  # std with n - 1: sqrt(1/3)
    rgb = np.zeros((2, 1, 1, 3), dtype=np.uint8)
    rgb[0, 0, 0] = [0, 51, 255]
    rgb[1, 0, 0] = [0, 153, 255]  # channel means 0, 0.4, 1; only green varies (0.2 and 0.6)
    mean, std = channel_stats(rgb)
    assert mean == [0.0, 0.4, 1.0] and std == [0.0, round(0.2 * 2 ** 0.5, 4), 0.0]
