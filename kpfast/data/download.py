"""Checksum-verified downloads that never leave a partial or corrupt file at the destination."""

from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import urllib.request
from pathlib import Path

from ..errors import ConfigError, DataError
from ..report.progress import bar


class ChecksumError(DataError, RuntimeError):
    """A file's content is not what its checksum says."""


class DownloadError(DataError, OSError):
    """A download failed (network, server or local disk); nothing was saved."""


def _expected(md5: str | None, sha256: str | None) -> dict[str, str]:
    expected = {name: digest.lower() for name, digest in (("md5", md5), ("sha256", sha256)) if digest}
    if not expected:
        raise ConfigError("need an md5 or sha256 checksum to verify the file against")
    return expected


def _describe(digests: dict[str, str]) -> str:
    return ", ".join(f"{name} {digest}" for name, digest in digests.items())


def verify_file(path: Path, *, md5: str | None = None, sha256: str | None = None,
                remove: bool = False) -> None:
    """Raise ChecksumError unless the file matches every given checksum.

    With `remove`, a bad file is deleted first: meant for downloads in a cache, where the
    file is never useful again and removing it lets the next call fetch a fresh copy.
    """
    expected = _expected(md5, sha256)
    hashes = {name: hashlib.new(name) for name in expected}
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            for h in hashes.values():
                h.update(chunk)
    actual = {name: h.hexdigest() for name, h in hashes.items()}
    if actual != expected:
        if remove:
            path.unlink(missing_ok=True)
        fate = "removed it, call again to download a fresh copy" if remove else "left in place"
        raise ChecksumError(f"{path} is corrupt: expected {_describe(expected)}, got "
                            f"{_describe(actual)}; {fate}")


def download_file(url: str, dest: Path, *, md5: str | None = None, sha256: str | None = None,
                  progress: bool = True, timeout: float = 60.0) -> Path:
    """Download `url` to `dest`, checking size and checksums before `dest` appears.

    The bytes go to a temporary file beside `dest`, hashed on the fly, and are renamed into
    place only when complete and correct, so an interrupted or corrupt download never
    looks like a cached file.
    """
    expected = _expected(md5, sha256)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=dest.name + ".", suffix=".part")
    tmp = Path(tmp_name)
    try:
        hashes = {name: hashlib.new(name) for name in expected}
        request = urllib.request.Request(url, headers={"User-Agent": "kpfast"})
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(request, timeout=timeout) as resp:
            length = resp.headers.get("Content-Length")
            total = int(length) if length else None
            with bar(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=dest.name,
                     enabled=progress) as shown:
                received = 0
                while chunk := resp.read(1 << 20):
                    out.write(chunk)
                    for h in hashes.values():
                        h.update(chunk)
                    received += len(chunk)
                    shown.update(len(chunk))
        actual = {name: h.hexdigest() for name, h in hashes.items()}
        # http.client does not complain when a server closes early, so compare sizes here.
        truncated = total is not None and received != total
        if truncated or actual != expected:
            why = f"received {received} of {total} bytes" if truncated else "checksum mismatch"
            raise ChecksumError(f"download of {url} to {dest} is corrupt ({why}): expected "
                                f"{_describe(expected)}, got {_describe(actual)}; nothing was saved")
        os.replace(tmp, dest)
    except (OSError, http.client.HTTPException) as e:  # URLError, timeouts, dropped connections
        raise DownloadError(f"could not download {url} to {dest}: {e}") from e
    finally:
        tmp.unlink(missing_ok=True)  # no-op after the rename
    return dest
