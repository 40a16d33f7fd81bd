"""CIFAR-10 from the original python archive, downloaded once and decoded once."""

from __future__ import annotations

import os
import pickle
import tarfile
import warnings
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from ..errors import ConfigError, DataError, DataNotFoundError
from .cache import cache_dir, load_arrays, save_arrays
from .download import download_file, verify_file
from .imageset import ImageSet

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
MD5 = "c58f30108f718f92721af3b95e74349a"  # published on the CIFAR page
# Not published by the authors; the value Keras' cifar10 loader and others pin for this file.
SHA256 = "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"
ARCHIVE_NAME = "cifar-10-python.tar.gz"

_FOLDER = "cifar-10-batches-py"
_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_TEST = "test_batch"
_META = "batches.meta"


def load_cifar10(root: str | os.PathLike[str] | None = None, *, download: bool = True,
                 url: str = URL, md5: str | None = MD5, sha256: str | None = SHA256,
                 progress: bool = True) -> tuple[ImageSet, ImageSet]:
    """CIFAR-10 as (train, test): 50,000 + 10,000 uint8 images [N, 3, 32, 32], 10 classes.

    `root` is a folder that holds (or will receive) `cifar-10-python.tar.gz`, or the path of
    the archive itself; default: the kpfast cache folder (`$KPFAST_CACHE` or
    `~/.cache/kpfast`). The archive is downloaded from `url` if missing (and `download`),
    and verified against every given checksum (at least one is required, since its
    batches are pickles). An archive with a bad checksum raises ChecksumError; in the
    download folder it is also deleted, so the next call downloads a fresh copy (an
    archive path given as `root` is left alone). The decoded arrays are saved beside the
    archive as `cifar-10-python-<checksum>.npz`, so later calls need neither the archive
    nor the network.
    """
    root_path = Path(root).expanduser() if root is not None else cache_dir()
    given_archive = root_path.name.endswith((".tar.gz", ".tgz"))
    archive = root_path if given_archive else root_path / ARCHIVE_NAME
    key = (sha256 or md5 or "")[:16]
    if not key:
        raise ConfigError("load_cifar10 needs an md5 or sha256 to verify the archive against")
    decoded = archive.with_name(f"cifar-10-python-{key}.npz")

    arrays = load_arrays(decoded)
    if arrays is None:
        if archive.exists():
            # A bad download in our folder is deleted; a file the caller named is theirs.
            verify_file(archive, md5=md5, sha256=sha256, remove=not given_archive)
        elif download:
            download_file(url, archive, md5=md5, sha256=sha256, progress=progress)
        else:
            raise DataNotFoundError(f"{archive} does not exist (and download=False)")
        arrays = read_archive(archive)
        try:
            save_arrays(decoded, **arrays)
        except OSError as e:  # e.g. a read-only data folder: still usable, just slower next time
            warnings.warn(f"could not cache decoded CIFAR-10 at {decoded}: {e}", stacklevel=2)

    classes = tuple(str(c) for c in arrays["classes"])

    def as_set(split: str) -> ImageSet:
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        return ImageSet(torch.from_numpy(x), torch.from_numpy(y), classes)

    return as_set("train"), as_set("test")


def read_archive(archive: Path) -> dict[str, np.ndarray]:
    """Decode the batches straight from the .tar.gz (nothing is extracted to disk).

    Returns x_train/x_test as uint8 [N, 3, 32, 32], y_train/y_test as int64, classes as str.
    """
    wanted = {f"{_FOLDER}/{name}" for name in (*_TRAIN, _TEST, _META)}
    batches: dict[str, dict[bytes, Any]] = {}
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:  # one sequential pass: a gzip stream cannot seek back cheaply
                if member.isfile() and member.name in wanted:
                    f = tar.extractfile(member)
                    assert f is not None
                    batches[member.name.split("/")[-1]] = _unpickle(f)
    except (tarfile.TarError, EOFError, OSError, pickle.UnpicklingError) as e:
        raise DataError(f"{archive}: not a readable CIFAR-10 python archive: {e}") from e
    if missing := sorted(w.split("/")[-1] for w in wanted if w.split("/")[-1] not in batches):
        raise DataError(f"{archive}: missing {', '.join(missing)} under {_FOLDER}/")

    def images_labels(names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        for name in names:
            x = np.asarray(batches[name][b"data"])
            y = np.asarray(batches[name][b"labels"], dtype=np.int64)
            if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3 * 32 * 32 or len(y) != len(x):
                raise DataError(f"{archive}: {name} holds data {x.dtype} {x.shape} and "
                                 f"{len(y)} labels, expected uint8 [n, 3072] and n labels")
            xs.append(x)
            ys.append(y)
        # Rows are 1024 red, then 1024 green, then 1024 blue values, each row-major: CHW.
        return np.concatenate(xs).reshape(-1, 3, 32, 32), np.concatenate(ys)

    x_train, y_train = images_labels(_TRAIN)
    x_test, y_test = images_labels((_TEST,))
    classes = np.array([n.decode() for n in batches[_META][b"label_names"]])
    return dict(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test, classes=classes)


class _BatchUnpickler(pickle.Unpickler):
    """Loads only what CIFAR batches contain (numpy arrays, lists, dicts, bytes).

    Defence in depth beside the checksum: a tampered archive cannot run code when loaded.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),  # written by the original numpy 1 / Python 2
        ("numpy._core.multiarray", "_reconstruct"),  # numpy 2
        ("numpy.core.numeric", "_frombuffer"),  # pickle protocol 5
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # bytes in protocol-2 pickles written by Python 3
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch")
        return super().find_class(module, name)


def _unpickle(f: IO[bytes]) -> dict[bytes, Any]:
    # encoding="bytes": the batches were pickled by Python 2, their keys are byte strings.
    return _BatchUnpickler(f, encoding="bytes").load()
