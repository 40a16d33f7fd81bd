"""Atomic file writes: readers see the old file or the new one, never a partial file, and a
failed write leaves the old file untouched (nothing the user saved is lost).

Every file kpfast writes goes through :func:`atomic_write` (text and JSON through
:func:`write_text` / :func:`write_json`), so a full disk is reported the same way everywhere.
"""
from __future__ import annotations

import errno
import json
import os
import secrets
from collections.abc import Callable
from typing import IO, Any

from .errors import DiskFullError

_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))  # no space, over quota


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], object], *,
                 mode: int | None = None) -> None:
    """Fill a temporary file in the same folder with ``write(f)``, fsync it, rename it over
    ``path`` and fsync the folder.

    With ``mode`` (e.g. ``0o600`` for a secret) the temporary file is created owner-only and
    given exactly that mode, so a secret is never readable by others, even for an instant;
    without it the file gets the usual permissions (0o666 less the umask, applied by the OS: the
    process umask is never read or changed). A full disk raises :class:`DiskFullError`.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    tmp, fd = _create_temporary(directory, os.path.basename(path), 0o600 if mode is not None else 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            if mode is not None:
                os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if _disk_full(e):
            raise DiskFullError(f"disk full while writing {path}: nothing was changed there "
                                "(the previous file, if any, is kept); free some space and try again") from e
        raise
    _fsync_directory(directory)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write UTF-8 text atomically."""
    data = text.encode("utf-8")
    atomic_write(path, lambda f: f.write(data))


def write_json(path: str | os.PathLike[str], data: Any, *, indent: int = 2) -> None:
    """Write ``data`` as indented JSON (ending in a newline) atomically."""
    write_text(path, json.dumps(data, indent=indent) + "\n")


def _create_temporary(directory: str, name: str, mode: int) -> tuple[str, int]:
    # os.open applies the umask to `mode` in the kernel: no process-wide state is touched.
    while True:
        tmp = os.path.join(directory, f".{name}.{secrets.token_hex(6)}.tmp")
        try:
            return tmp, os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), mode)
        except FileExistsError:
            continue


def _disk_full(error: BaseException | None) -> bool:
    """Whether a full disk caused `error` (torch.save, for one, wraps the OSError in a RuntimeError)."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, OSError) and error.errno in _FULL:
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False


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
