"""Atomic file writes: readers see the old file or the new one, never a partial file, and a
failed write leaves the old file untouched (nothing the user saved is lost)."""
from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from typing import IO


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], object], *,
                 mode: int | None = None) -> None:
    """Fill a temporary file in the same folder with ``write(f)``, fsync it, rename it over
    ``path`` and fsync the folder. The temporary file is created owner-only (0o600), so with
    ``mode=0o600`` a secret is never readable by others, even for an instant; without ``mode``
    the file gets the usual permissions (0o666 less the umask)."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fchmod(f.fileno(), mode if mode is not None else 0o666 & ~_umask())
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_directory(directory)


def _umask() -> int:
    current = os.umask(0)  # the only portable way to read it
    os.umask(current)
    return current


def _fsync_directory(directory: str) -> None:
    # Persist the rename itself (best effort: not every platform can open a directory).
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
