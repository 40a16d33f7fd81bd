"""Image folders, a directory or a .zip, laid out as `train/<class>/*` and `test/<class>/*`."""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from ..errors import ConfigError, DataError, DataNotFoundError
from ..report.imageio import DECODE_ERRORS, Image
from ..report.progress import bar
from .cache import cache_dir, load_arrays, save_arrays
from .imageset import ImageSet
from .protected_folder import MANIFEST, load_protected_folder

SPLITS = ("train", "test")
_CACHE_VERSION = 1  # bump when the decoded arrays would change for the same input
_CHUNK = 1000  # images per pool task: large enough to amortise pickling, small for progress
_MIN_POOL = 4000  # below this, starting worker processes costs more than it saves


def load_image_folder(path: str | os.PathLike[str], *, mode: Literal["RGB", "L"] = "RGB",
                      cache: bool = True, cache_root: str | os.PathLike[str] | None = None,
                      workers: int | None = None, progress: bool = True
                      ) -> tuple[ImageSet, ImageSet]:
    """(train, test) from `path/train/<class>/*` and `path/test/<class>/*`; `path` a folder or zip.

    Classes are the sorted class-folder names, which must be the same in train and test;
    every image is converted to `mode` ("RGB" or grey "L") and all must share one size.
    Hidden files and folders (".*", "__MACOSX") are skipped; any other file must be an image.

    The decoded arrays are cached under `<cache>/folders/` keyed by a hash of the listing:
    for a zip, every member's name, size and CRC-32 (its content, wherever the zip lies);
    for a folder, every file's name, size and mtime. Decoding uses `workers` processes
    (default: one per CPU core, at most 8).

    A folder or zip written by ``kpfast encrypt`` (it holds ``kpfast-manifest.json``) is read as
    the protected values it holds, in the mode it was encrypted in
    (`kpfast.data.protected_folder.load_protected_folder`).
    """
    if mode not in ("RGB", "L"):
        raise ConfigError(f"mode must be 'RGB' or 'L', got {mode!r}")
    root = Path(path).expanduser()
    listing = _listing(root)
    if any(name == MANIFEST for name, _ in listing):  # protected codes, not pixels
        return load_protected_folder(root, listing, cache=cache, cache_root=cache_root, progress=progress)
    tree = _layout(root, [name for name, _ in listing])

    cache_file = None
    if cache:
        h = hashlib.sha256(f"{_CACHE_VERSION}\n{mode}\n".encode())
        for name, fingerprint in listing:
            h.update(f"{name}\t{fingerprint}\n".encode())
        cache_file = cache_dir(cache_root) / "folders" / f"{root.stem}-{mode}-{h.hexdigest()[:16]}.npz"
    arrays = load_arrays(cache_file) if cache_file else None

    classes = sorted(tree["train"])
    if arrays is None:
        files, labels = [], []
        for split in SPLITS:
            for label, cls in enumerate(classes):
                files += tree[split][cls]
                labels += [label] * len(tree[split][cls])
        images = _decode_all(root, files, mode, workers, progress)
        n_train = sum(len(v) for v in tree["train"].values())
        y = np.array(labels, dtype=np.int64)
        arrays = dict(x_train=images[:n_train], y_train=y[:n_train],
                      x_test=images[n_train:], y_test=y[n_train:])
        if cache_file:
            save_arrays(cache_file, **arrays)

    def as_set(split: str) -> ImageSet:
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        return ImageSet(torch.from_numpy(x), torch.from_numpy(y), tuple(classes))

    return as_set("train"), as_set("test")


def _listing(root: Path) -> list[tuple[str, str]]:
    """(posix name, fingerprint) of every entry; folders end in "/" so empty ones show."""
    if root.is_dir():
        entries = []
        for p in sorted(root.rglob("*")):
            name = p.relative_to(root).as_posix()
            if p.is_dir():
                entries.append((name + "/", ""))
            else:
                st = p.stat()
                entries.append((name, f"{st.st_size}:{st.st_mtime_ns}"))
        return entries
    if not root.exists():
        raise DataNotFoundError(f"{root} does not exist")
    try:
        with zipfile.ZipFile(root) as z:
            return sorted((i.filename, f"{i.file_size}:{i.CRC:08x}") for i in z.infolist())
    except zipfile.BadZipFile as e:
        raise DataError(f"{root} is neither a folder nor a readable zip: {e}") from e


def _layout(root: Path, names: list[str]) -> dict[str, dict[str, list[str]]]:
    """{split: {class: sorted image names}}, after checking the layout is complete."""
    tree: dict[str, dict[str, list[str]]] = {split: {} for split in SPLITS}
    for name in names:
        parts = name.split("/")
        if any(p.startswith(".") or p == "__MACOSX" for p in parts):
            continue  # OS litter such as .DS_Store
        if parts[0] in tree and len(parts) >= 3:  # train/<class>/... (files or folder entries)
            files = tree[parts[0]].setdefault(parts[1], [])
            if not name.endswith("/"):
                files.append(name)
    for split in SPLITS:
        if not tree[split]:
            top = sorted({n.split("/")[0] for n in names})
            shown = ", ".join(top[:5]) + (f", ... ({len(top)} entries)" if len(top) > 5 else "")
            present = any(n.split("/")[0] == split for n in names)
            problem = "holds no class folders" if present else "is missing"
            raise DataError(f"{root}: {split}/ {problem} (expected train/<class>/* and "
                             f"test/<class>/*; the top level holds {shown})")
    train, test = set(tree["train"]), set(tree["test"])
    if train != test:
        problems = [f"{s}/ lacks class folder(s) {sorted(b - a)} found in {o}/"
                    for s, a, o, b in (("test", test, "train", train), ("train", train, "test", test))
                    if b - a]
        raise DataError(f"{root}: " + "; ".join(problems))
    for split in SPLITS:
        for cls, files in tree[split].items():
            if not files:
                raise DataError(f"{root}: class folder {split}/{cls}/ holds no images")
            files.sort()
    return tree


@contextmanager
def _reader(root: Path) -> Iterator[Callable[[str], bytes]]:
    """A function returning the bytes of a member name, for a folder or a zip."""
    if root.is_dir():
        yield lambda name: (root / name).read_bytes()
    else:
        with zipfile.ZipFile(root) as z:
            yield z.read


def _decode_all(root: Path, files: list[str], mode: str, workers: int | None,
                progress: bool) -> np.ndarray:
    """Decode `files` into uint8 [N, C, H, W]; the main process reads, workers decode."""
    workers = workers if workers is not None else min(8, os.cpu_count() or 1)
    with _reader(root) as read, bar(total=len(files), desc=f"decoding {root.name}", unit="img",
                                    enabled=progress) as shown:
        first = _decode_chunk(str(root), [(files[0], read(files[0]))], mode, None)
        size = first.shape[1:3]
        chunks = (files[i:i + _CHUNK] for i in range(0, len(files), _CHUNK))

        def load(chunk: list[str]) -> list[tuple[str, bytes]]:
            return [(name, read(name)) for name in chunk]

        parts = []
        if workers <= 1 or len(files) < _MIN_POOL:
            for chunk in chunks:
                parts.append(_decode_chunk(str(root), load(chunk), mode, size))
                shown.update(len(chunk))
        else:
            pool = ProcessPoolExecutor(workers)
            try:
                # Submitted as read, so decoding overlaps reading; results kept in order.
                futures: list[Future[np.ndarray]] = [
                    pool.submit(_decode_chunk, str(root), load(chunk), mode, size)
                    for chunk in chunks]
                for future in futures:
                    parts.append(future.result())
                    shown.update(len(parts[-1]))
            finally:
                pool.shutdown(cancel_futures=True)
    # NHWC -> NCHW once, so the cached arrays load straight into an ImageSet.
    return np.ascontiguousarray(np.concatenate(parts).transpose(0, 3, 1, 2))


def _decode_chunk(source: str, items: list[tuple[str, bytes]], mode: str,
                  size: tuple[int, int] | None) -> np.ndarray:
    """Decode encoded images to uint8 [n, H, W, C]; runs in worker processes."""
    out = None
    for i, (name, data) in enumerate(items):
        try:
            with Image.open(io.BytesIO(data)) as im:
                pixels = np.asarray(im.convert(mode) if im.mode != mode else im)
        except DECODE_ERRORS as e:
            raise DataError(f"{source}: cannot read image {name}: {e}") from None
        if size is not None and pixels.shape[:2] != tuple(size):
            raise DataError(f"{source}: image {name} is {pixels.shape[1]}x{pixels.shape[0]}, "
                             f"but the first image is {size[1]}x{size[0]}; all must match")
        if out is None:
            out = np.empty((len(items), *pixels.shape[:2], len(mode)), dtype=np.uint8)
        out[i] = pixels.reshape(out.shape[1:])
    assert out is not None
    return out
