import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from kpfast.data.fashion_mnist import CLASSES, DEFAULT_ROOT, load_fashion_mnist, read_idx

TYPE_BYTES = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C, np.dtype(">f8"): 0x0E}


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, TYPE_BYTES[array.dtype], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def write_idx(path: Path, array: np.ndarray) -> Path:
    data = idx_bytes(array)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def make_files(root: Path, n_train: int = 7, n_test: int = 3, gz: bool = True) -> dict:
    rng = np.random.default_rng(0)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n).astype(np.uint8)
        suffix = ".gz" if gz else ""
        write_idx(root / f"{prefix}-images-idx3-ubyte{suffix}", images)
        write_idx(root / f"{prefix}-labels-idx1-ubyte{suffix}", labels)
        arrays[prefix] = images, labels
    return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_load(tmp_path, gz):
    arrays = make_files(tmp_path, gz=gz)
    train, test = load_fashion_mnist(tmp_path)
    for imageset, prefix in ((train, "train"), (test, "t10k")):
        images, labels = arrays[prefix]
        assert imageset.images.shape == (len(images), 1, 28, 28) and imageset.images.dtype == torch.uint8
        assert np.array_equal(imageset.images[:, 0].numpy(), images)
        assert imageset.labels.tolist() == labels.tolist()
        assert imageset.classes == CLASSES and imageset.classes[9] == "Ankle boot"


@pytest.mark.parametrize("dtype", [">i4", ">f8"])
def test_read_idx_other_types(tmp_path, dtype):
    array = np.arange(24).reshape(2, 3, 4).astype(dtype)
    out = read_idx(write_idx(tmp_path / "a.idx", array))
    assert out.shape == (2, 3, 4) and np.array_equal(out, array) and out.dtype.isnative


def test_truncated_file(tmp_path):
    data = idx_bytes(np.zeros((2, 28, 28), np.uint8))
    (tmp_path / "a").write_bytes(data[:-5])
    with pytest.raises(ValueError, match=r"a: truncated: 1579 bytes, expected 1584"):
        read_idx(tmp_path / "a")
    (tmp_path / "b").write_bytes(data[:10])
    with pytest.raises(ValueError, match="truncated idx header"):
        read_idx(tmp_path / "b")


def test_truncated_gzip(tmp_path):
    data = gzip.compress(idx_bytes(np.zeros((2, 28, 28), np.uint8)))
    (tmp_path / "a.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="a.gz: damaged gzip"):
        read_idx(tmp_path / "a.gz")


def test_bad_magic(tmp_path):
    (tmp_path / "a").write_bytes(b"\x1f\x8b\x08\x00" + bytes(100))  # gzip data without .gz
    with pytest.raises(ValueError, match="not an idx file"):
        read_idx(tmp_path / "a")


def test_missing_and_mismatched_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte.gz"):
        load_fashion_mnist(tmp_path)
    make_files(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(5, np.uint8))
    with pytest.raises(ValueError, match="7 train images but labels of shape"):
        load_fashion_mnist(tmp_path)


@pytest.mark.skipif(not (DEFAULT_ROOT / "train-images-idx3-ubyte.gz").exists(),
                    reason="Debian package dataset-fashion-mnist not installed")
def test_real_files():
    train, test = load_fashion_mnist()
    assert train.images.shape == (60_000, 1, 28, 28) and test.images.shape == (10_000, 1, 28, 28)
    assert torch.bincount(train.labels).tolist() == [6000] * 10
    assert torch.bincount(test.labels).tolist() == [1000] * 10
