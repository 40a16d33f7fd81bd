"""A folder of protected images written by ``kpfast encrypt``: its manifest, and the folder (or a
zip of it) read back as a data set.

The folder mirrors the plain one: every image becomes ``<name>.png`` at the same relative place,
so a plain ``train/<class>/*``, ``test/<class>/*`` training set gives a protected training set
with the same classes. Beside the images lies ``kpfast-manifest.json``, written last (an
interrupted run leaves complete images and no manifest)::

    {"format": "kpfast-encrypted-images", "version": 2,
     "ops": ["shuffle", "negpos", "ffx"], "block_size": 4, "channels": 3,
     "key_fingerprint": "...",          # which key; never the key itself
     "code_scale": 996,                 # a protected value is code / code_scale
     "bitdepth": 16, "code_step": 65,   # PNG sample = code * code_step
     "normalization": {"mean": [...], "std": [...], "source": "..."} | null,
     "files": ["test/cat/0.png", ...]}  # every image of the set, sorted

Codes: a chain without FFX maps bytes to bytes (``code_scale`` 255, 8-bit PNG, step 1). With FFX
the codes run up to max(ffx_lut) <= 999 and are stored in 16-bit PNG, multiplied by
``code_step = 65535 // code_scale`` so that an image viewer shows the image over the full range
rather than a black square; dividing by the step is the exact inverse. Protected values, code /
code_scale, are what ``BlockTransform(keys, ops, rounding="nearest")`` returns for the plain
images, bit for bit.

``normalization`` holds the per-channel statistics of the plain training images (those under
``train/``), the ones ``kpfast train`` folds into the transform when it protects that folder on
the fly; null when the folder is not a training set. Training on the protected folder
normalised with them sees exactly the model inputs of training with the transform on the fly
(without augmentation: a crop that is not block-aligned, or a flip, does not commute with the
block transform, so protected images on disk are not augmented).

Version 1 (kpfast before this format) stored codes unspread (step 1) and kept neither the file
list nor the statistics: ``kpfast decrypt`` still reads it, the data-set loader does not.
"""
from __future__ import annotations

import hashlib
import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch

from ..atomic import write_json
from ..errors import DataError, KeyMismatchError
from ..keys import KeySet
from ..plan import IN_BLOCK_TRANSFORMS
from .imageset import ImageSet
from .stats import Stats

MANIFEST = "kpfast-manifest.json"
FORMAT = "kpfast-encrypted-images"
VERSION = 2
READABLE_VERSIONS = (1, 2)
MAX_MANIFEST_BYTES = 256 << 20  # a manifest lists every file: ~50 bytes each, millions fit
_CACHE_VERSION = 1  # bump when the decoded arrays would change for the same files


@dataclass(frozen=True)
class Manifest:
    """What ``kpfast encrypt`` records beside the protected images (see the module docs)."""

    ops: tuple[str, ...]
    block_size: int
    channels: int
    key_fingerprint: str
    code_scale: int
    bitdepth: int
    code_step: int
    files: tuple[str, ...] | None  # None only in version 1, which kept no list
    normalization: Stats | None = None
    version: int = VERSION

    @classmethod
    def for_chain(cls, keys: KeySet, ops: tuple[str, ...], files: list[str]) -> Manifest:
        """The manifest of `files` protected by `ops` under `keys` (normalization still unknown)."""
        ffx = "ffx" in ops
        scale = keys.ffx_max if ffx else 255  # values are multiples of 1/255 until FFX, of 1/max(lut) after
        return cls(tuple(ops), keys.block_size, keys.channels, keys.fingerprint(), scale,
                   16 if ffx else 8, 65535 // scale if ffx else 1, tuple(sorted(files)))

    def describe(self) -> str:
        return f"key {self.key_fingerprint}, ops {','.join(self.ops)}"

    # --- codes <-> PNG samples -------------------------------------------------------------

    def encode(self, codes: np.ndarray) -> np.ndarray:
        """PNG samples of integer codes 0..code_scale."""
        return codes * self.code_step

    def decode(self, samples: np.ndarray, bitdepth: int, name: str | Path) -> np.ndarray:
        """The codes of one image's PNG samples [C, H, W], after checking that this manifest's
        ``kpfast encrypt`` could have written them."""
        top = int(samples.max(initial=0))
        if (samples.shape[0] != self.channels or bitdepth != self.bitdepth or top > self.code_scale * self.code_step
                or (self.code_step > 1 and np.any(samples % self.code_step))):
            raise DataError(f"{name} is not an image of this encrypted set ({self.channels} channel(s) of "
                            f"{self.bitdepth}-bit codes 0..{self.code_scale} times {self.code_step}); it holds "
                            f"{samples.shape[0]} channel(s) of {bitdepth}-bit samples up to {top}: it was replaced "
                            "or edited after 'kpfast encrypt'; restore it from where the set came from")
        return samples // self.code_step

    # --- the file --------------------------------------------------------------------------

    def as_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": self.version, "ops": list(self.ops), "block_size": self.block_size,
                "channels": self.channels, "key_fingerprint": self.key_fingerprint,
                "code_scale": self.code_scale, "bitdepth": self.bitdepth, "code_step": self.code_step,
                "normalization": self.normalization.as_dict() if self.normalization else None,
                "files": list(self.files) if self.files is not None else None}

    def write(self, folder: str | os.PathLike[str]) -> None:
        write_json(Path(folder) / MANIFEST, self.as_dict())

    @classmethod
    def parse(cls, data: bytes, source: str | os.PathLike[str]) -> Manifest:
        """A manifest from the bytes of `source` (named in every error), checked field by field."""
        try:
            if len(data) > MAX_MANIFEST_BYTES:
                raise ValueError(f"{len(data)} bytes, more than any manifest holds")
            d = json.loads(data)
            if not isinstance(d, dict) or d.get("format") != FORMAT:
                raise ValueError(f"not a {FORMAT!r} manifest")
        except (ValueError, RecursionError) as e:
            raise DataError(f"{source} is not a kpfast manifest ({e}): restore it from where the set came "
                            "from, or encrypt the plain images again") from None
        version = d.get("version")
        if version not in READABLE_VERSIONS:
            raise DataError(f"{source} is a manifest of version {version!r}, written by another version of kpfast; "
                            f"this one reads versions {', '.join(map(str, READABLE_VERSIONS))}: decrypt the folder "
                            "with the kpfast that wrote it")
        try:
            v1 = version == 1
            manifest = cls(ops=tuple(_strings(d["ops"])), block_size=_int(d["block_size"], 1),
                           channels=_int(d["channels"], 1, 4), key_fingerprint=_string(d["key_fingerprint"]),
                           code_scale=_int(d["code_scale"], 255, 65535), bitdepth=_int(d["bitdepth"], 8, 16),
                           code_step=1 if v1 else _int(d["code_step"], 1, 65535),
                           files=None if v1 else tuple(_relative_png(f) for f in _strings(d["files"])),
                           normalization=None if v1 else _stats(d["normalization"], _int(d["channels"], 1, 4)),
                           version=version)
            if not manifest.ops or any(o not in IN_BLOCK_TRANSFORMS for o in manifest.ops):
                raise ValueError(f"ops {list(manifest.ops)} are not a chain of {', '.join(IN_BLOCK_TRANSFORMS)}")
            if manifest.bitdepth not in (8, 16) or manifest.code_scale * manifest.code_step >= 1 << manifest.bitdepth:
                raise ValueError(f"codes 0..{manifest.code_scale} times {manifest.code_step} do not fit "
                                 f"{manifest.bitdepth}-bit samples")
            if manifest.files is not None and len(set(manifest.files)) != len(manifest.files):
                raise ValueError("a file is listed twice")
        except (KeyError, TypeError, ValueError) as e:
            what = f"field {e} is missing" if isinstance(e, KeyError) else str(e)
            raise DataError(f"{source} is a damaged kpfast manifest ({what}): restore it from where the set came "
                            "from, or encrypt the plain images again") from None
        return manifest

    @classmethod
    def read(cls, folder: str | os.PathLike[str]) -> Manifest:
        """The manifest of a folder written by ``kpfast encrypt``."""
        path = Path(folder) / MANIFEST
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_MANIFEST_BYTES + 1)
        except OSError as e:
            raise DataError(f"{path} is missing or unreadable ({e.strerror or e}); was {folder} written by "
                            "'kpfast encrypt'?") from None
        return cls.parse(data, path)

    def check_key(self, keys: KeySet, key_path: str | os.PathLike[str], folder: str | os.PathLike[str]) -> None:
        if keys.fingerprint() != self.key_fingerprint:
            raise KeyMismatchError(f"wrong key: {folder} was encrypted with key {self.key_fingerprint}, "
                                   f"{key_path} is key {keys.fingerprint()}; pass the key file it was encrypted with")


def find_manifest(data: str | os.PathLike[str] | None) -> Manifest | None:
    """The manifest of `data` if it is a folder or zip written by ``kpfast encrypt``, else None
    (a data-set name, a plain folder, a path that does not exist)."""
    if data is None:
        return None
    path = Path(data).expanduser()
    if path.is_dir():
        return Manifest.read(path) if (path / MANIFEST).is_file() else None
    if path.is_file() and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            if MANIFEST in z.namelist():
                return Manifest.parse(z.read(MANIFEST), f"{path}:{MANIFEST}")
    return None


def load_protected_folder(root: Path, listing: list[tuple[str, str]], *, cache: bool = True,
                          cache_root: str | os.PathLike[str] | None = None, progress: bool = True
                          ) -> tuple[ImageSet, ImageSet]:
    """(train, test) of a folder or zip written by ``kpfast encrypt`` (``listing``: its entries as
    `kpfast.data.folders` lists them): the protected values, as ``kpfast encrypt`` computed them.

    Byte chains load as uint8 codes (their value is code / 255, as for any image); FFX chains as
    float32 code / code_scale in [0, 1]. Every image must be one the manifest lists, and every
    listed image must be there. Decoded codes are cached like image folders.
    """
    from ..report.imageio import is_hidden, read_png
    from ..report.progress import bar
    from .cache import cache_dir, load_arrays, save_arrays
    from .folders import SPLITS, _layout, _reader

    with _reader(root) as read:
        manifest = Manifest.parse(read(MANIFEST), root / MANIFEST)
    if manifest.files is None:
        raise DataError(f"{root} was encrypted by an older kpfast (manifest version 1), which recorded neither "
                        "its files nor its statistics: decrypt it and encrypt the plain folder again to train on it")
    try:
        tree = _layout(root, list(manifest.files))
    except DataError as e:
        raise DataError(f"{e}; 'kpfast encrypt' mirrors its input, so encrypt a folder laid out that way "
                        "to get a training set") from None
    if manifest.normalization is None:
        raise DataError(f"{root / MANIFEST} records no statistics of the plain training images: encrypt the plain "
                        "folder again with this kpfast")
    listed = {f for split in SPLITS for files in tree[split].values() for f in files}
    present = {name for name, _ in listing if not name.endswith("/") and not is_hidden(name)
               and name.split("/")[0] in SPLITS and name.count("/") >= 2}
    if listed - present:
        raise DataError(f"{root}: its manifest lists {sorted(listed - present)[0]}, which is missing "
                        f"({len(listed - present)} missing in all)")
    if present - listed:
        raise DataError(f"{root} holds {sorted(present - listed)[0]}, which its manifest does not list "
                        f"({len(present - listed)} such file(s)): it is not part of the encrypted set; remove it, "
                        "or encrypt it into a set of its own")

    cache_file = None
    if cache:
        h = hashlib.sha256(f"protected {_CACHE_VERSION}\n".encode())
        for name, fingerprint in listing:
            h.update(f"{name}\t{fingerprint}\n".encode())
        cache_file = cache_dir(cache_root) / "folders" / f"{root.stem}-protected-{h.hexdigest()[:16]}.npz"
    arrays = load_arrays(cache_file) if cache_file else None

    classes = sorted(tree["train"])
    if arrays is None:
        arrays = {}
        dtype = np.uint8 if manifest.code_scale <= 255 else np.uint16
        with _reader(root) as read:
            for split in SPLITS:
                files = [(f, label) for label, cls in enumerate(classes) for f in tree[split][cls]]
                codes, size = None, None
                for i, (name, _) in enumerate(bar(files, desc=f"decoding {root.name}/{split}", unit="img",
                                                  enabled=progress)):
                    samples, bitdepth = read_png(read(name), f"{root}/{name}")
                    if size is not None and samples.shape != size:
                        raise DataError(f"{root}: image {name} is {samples.shape[2]}x{samples.shape[1]}, but the "
                                        f"first image is {size[2]}x{size[1]}; all must match")
                    if codes is None:
                        size = samples.shape
                        codes = np.empty((len(files), *size), dtype=dtype)
                    codes[i] = manifest.decode(samples, bitdepth, f"{root}/{name}")
                arrays[f"x_{split}"] = codes
                arrays[f"y_{split}"] = np.array([label for _, label in files], dtype=np.int64)
        if arrays["x_train"].shape[1:] != arrays["x_test"].shape[1:]:
            raise DataError(f"{root}: the train images are {arrays['x_train'].shape[1:]}, the test images "
                            f"{arrays['x_test'].shape[1:]}; all must match")
        if cache_file:
            save_arrays(cache_file, **arrays)

    def as_set(split: str) -> ImageSet:
        codes = torch.from_numpy(arrays[f"x_{split}"])
        # Dividing the float32 code by the scale is what BlockTransform does: the same bits.
        images = codes if manifest.code_scale == 255 else codes.to(torch.float32) / manifest.code_scale
        return ImageSet(images, torch.from_numpy(arrays[f"y_{split}"]), tuple(classes))

    return as_set("train"), as_set("test")


# --- field checks -------------------------------------------------------------------------


def _int(value: Any, low: int, high: int | None = None) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < low or (high is not None and value > high):
        raise ValueError(f"{value!r} is not an integer in {low}..{high if high is not None else ''}")
    return value


def _string(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{value!r} is not a non-empty string")
    return value


def _strings(value: Any) -> list[str]:
    if not isinstance(value, list):
        raise ValueError(f"{value!r} is not a list")
    return [_string(v) for v in value]


def _relative_png(name: str) -> str:
    """A listed file: a relative path inside the folder (never "..", "/x" or "C:"), a PNG."""
    path = PurePosixPath(name)
    if (path.is_absolute() or ".." in path.parts or "\\" in name or ":" in name or str(path) != name
            or path.suffix != ".png"):
        raise ValueError(f"file {name!r} is not a relative path of a PNG inside the folder")
    return name


def _stats(value: Any, channels: int) -> Stats | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError(f"normalization {value!r} is not an object")
    mean, std = value["mean"], value["std"]
    if (not isinstance(mean, list) or not isinstance(std, list) or len(mean) != channels or len(std) != channels
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in mean + std)
            or not all(s > 0 for s in std)):
        raise ValueError(f"normalization needs {channels} means and {channels} positive stds, got {value!r}")
    return Stats(tuple(float(v) for v in mean), tuple(float(v) for v in std), _string(value["source"]))

