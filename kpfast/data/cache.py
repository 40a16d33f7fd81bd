"""Where kpfast keeps downloads and decoded arrays, and how it writes them safely."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from ..atomic import atomic_write


def cache_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """`override` if given, else `$KPFAST_CACHE`, else `~/.cache/kpfast` (created if missing)."""
    path = Path(override or os.environ.get("KPFAST_CACHE") or "~/.cache/kpfast").expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def save_arrays(path: Path, **arrays: np.ndarray) -> None:
    """Write an uncompressed `.npz` atomically: readers never see a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # uncompressed: pixels compress poorly and loading stays fast
    atomic_write(path, lambda f: np.savez(f, **arrays))


def load_arrays(path: Path) -> dict[str, np.ndarray] | None:
    """The arrays of a `.npz` written by `save_arrays`, or None if it is missing or unreadable."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except FileNotFoundError:
        return None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):  # damaged: the caller rebuilds it
        return None
