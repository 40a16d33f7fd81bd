import numpy as np
import pytest
import torch
from PIL import Image

import kpfast.data as data
from kpfast.data import load_dataset, make_synthetic


def test_public_names():
    for name in data.__all__:
        assert getattr(data, name) is not None


@pytest.mark.parametrize("name, loader, progress", [("cifar10", "load_cifar10", {"progress": False}),
                                                    ("fashion-mnist", "load_fashion_mnist", {})])
def test_dispatch_to_loaders(monkeypatch, name, loader, progress):
    """Arguments pass through; `progress` reaches the loaders that show bars (downloads, decoding)."""
    calls = []
    monkeypatch.setattr(data, loader, lambda *args, **kwargs: calls.append((args, kwargs)))
    load_dataset(name, "/some/root", progress=False, download=False)
    assert calls == [(("/some/root",), {"download": False, **progress})]


def test_synthetic():
    train, test = load_dataset("synthetic", n_train=20, n_test=10, seed=2)
    assert torch.equal(train.images, make_synthetic(20, 10, seed=2)[0].images) and len(test) == 10
    with pytest.raises(ValueError, match="no root"):
        load_dataset("synthetic", "/tmp")


def test_folder_by_name_or_path(tmp_path):
    for split in ("train", "test"):
        for cls in ("a", "b"):
            (tmp_path / split / cls).mkdir(parents=True)
            Image.fromarray(np.full((2, 2, 3), 7, np.uint8)).save(tmp_path / split / cls / "0.png")
    train, _ = load_dataset("cifar10-folder", tmp_path, cache=False, progress=False)
    assert train.classes == ("a", "b") and train.images.shape == (2, 3, 2, 2)
    train, _ = load_dataset(str(tmp_path), cache=False, progress=False)
    assert len(train) == 2
    with pytest.raises(ValueError, match="needs root"):
        load_dataset("cifar10-folder")


def test_unknown_name():
    with pytest.raises(ValueError, match="unknown data set 'mnist'.*cifar10, cifar10-folder"):
        load_dataset("mnist")
