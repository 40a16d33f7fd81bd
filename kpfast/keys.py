"""Secret keys for the block-wise transforms (shuffle, NP, FFX).

A :class:`KeySet` holds one independent key per transform for blocks of ``block_size`` x
``block_size`` pixels with ``channels`` channels, i.e. ``L = block_size**2 * channels``
in-block positions:

* ``perm``: the shuffle key, a permutation of ``0..L-1`` (``out[l] = in[perm[l]]``);
* ``np_mask``: positions negated by the NP transform;
* ``ffx_mask`` and ``ffx_password``: positions encrypted by FFX, and the FFX password from
  which the 256-entry table ``ffx_lut`` is derived (see :mod:`kpfast.ffx`).

Use :meth:`KeySet.generate` for new keys (CSPRNG, 128-bit password). :meth:`KeySet.from_seed`
exists only to reproduce the reference implementation's keys; its 32-bit seeds are weak.

A KeySet is immutable: attributes cannot be reassigned and the tensors it returns must not be
modified in place (they are returned as stored, without copies, for speed). ``repr``/``str``
show only the block size, channel count and a fingerprint, never key material. Note that for
keys from :meth:`KeySet.from_seed` the fingerprint is enough to recover the seed by trying all
2**32 of them, since the derivation is public; for generated keys it reveals nothing useful.

Key file format (version 1)
---------------------------
UTF-8 JSON object with exactly these fields::

    {
      "format": "kpfast-keyset",      # fixed magic string
      "version": 1,                   # format version; only 1 exists
      "block_size": 4,                # M >= 1
      "channels": 3,                  # C >= 1
      "perm": [5, 0, ...],            # L integers, a permutation of 0..L-1
      "np_mask": "0110...",           # L characters '0'/'1', position l first
      "ffx_mask": "1000...",          # same
      "ffx_password": "9f3a...",      # password bytes as lowercase hex
      "sha256": "..."                 # checksum, see below
    }

``sha256`` is the hex SHA-256 of the canonical serialisation of all the other fields:
``json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True)`` encoded as
ASCII. It detects accidental edits and corruption; it is not a MAC. Files are written
atomically with mode 0o600 (owner read/write only).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import stat
import warnings
from typing import Any, Union

import torch

from .atomic import atomic_write
from .ffx import ffx_table

__all__ = ["KeySet", "KeyFileError"]

FORMAT_NAME = "kpfast-keyset"
SUPPORTED_VERSIONS = (1,)
_FIELDS = ("format", "version", "block_size", "channels", "perm", "np_mask", "ffx_mask", "ffx_password")
_FINGERPRINT_DOMAIN = b"kpfast-keyset-fingerprint-v1\x00"

PathLike = Union[str, "os.PathLike[str]"]


class KeyFileError(ValueError):
    """A key file is missing, unreadable, corrupted or invalid."""


def _positive_int(name: str, value: Any) -> int:
    # bool is an int subclass; True as a block size is surely a mistake.
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


def _as_tensor(name: str, value: Any) -> torch.Tensor:
    try:
        # torch.tensor copies, so later changes to the caller's array cannot alter the key.
        t = value.detach().clone() if isinstance(value, torch.Tensor) else torch.tensor(value)
    except (TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"{name} must be a 1-D sequence or tensor: {e}") from None
    return t.cpu()


def _check_perm(value: Any, length: int) -> torch.Tensor:
    perm = _as_tensor("perm", value)
    if perm.shape != (length,):
        raise ValueError(f"perm must have shape ({length},) = (block_size**2 * channels,), got {tuple(perm.shape)}")
    if perm.dtype == torch.bool or perm.is_floating_point() or perm.is_complex():
        raise ValueError(f"perm must hold integers, got dtype {perm.dtype}")
    perm = perm.to(torch.int64)
    if not torch.equal(torch.sort(perm).values, torch.arange(length)):
        raise ValueError(f"perm is not a permutation of 0..{length - 1}")
    return perm


def _check_mask(name: str, value: Any, length: int) -> torch.Tensor:
    mask = _as_tensor(name, value)
    if mask.shape != (length,):
        raise ValueError(f"{name} must have shape ({length},) = (block_size**2 * channels,), got {tuple(mask.shape)}")
    if mask.dtype != torch.bool:
        raise ValueError(f"{name} must be boolean, got dtype {mask.dtype}")
    return mask


def _bits(mask: torch.Tensor) -> str:
    return "".join("1" if b else "0" for b in mask.tolist())


def _canonical_json(fields: dict[str, Any]) -> bytes:
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


class KeySet:
    """Immutable set of keys for the shuffle, NP and FFX block transforms (see module docs)."""

    __slots__ = ("_block_size", "_channels", "_perm", "_np_mask", "_ffx_mask", "_password",
                 "_ffx_lut", "_ffx_max", "_ffx_inverse_lut")

    def __init__(self, block_size: int, channels: int, perm: Any, np_mask: Any, ffx_mask: Any,
                 ffx_password: bytes) -> None:
        block_size = _positive_int("block_size", block_size)
        channels = _positive_int("channels", channels)
        length = block_size * block_size * channels
        if not isinstance(ffx_password, (bytes, bytearray)):
            raise ValueError(f"ffx_password must be bytes, got {type(ffx_password).__name__}")
        if len(ffx_password) == 0:
            raise ValueError("ffx_password must not be empty")
        password = bytes(ffx_password)

        lut = torch.tensor(ffx_table(password), dtype=torch.int64)
        ffx_max = int(lut.max())
        inverse = torch.full((ffx_max + 1,), -1, dtype=torch.int64)
        inverse[lut] = torch.arange(lut.numel())

        values = dict(_block_size=block_size, _channels=channels,
                      _perm=_check_perm(perm, length),
                      _np_mask=_check_mask("np_mask", np_mask, length),
                      _ffx_mask=_check_mask("ffx_mask", ffx_mask, length),
                      _password=password, _ffx_lut=lut, _ffx_max=ffx_max, _ffx_inverse_lut=inverse)
        for name, value in values.items():
            object.__setattr__(self, name, value)

    # --- constructors -------------------------------------------------------------------

    @classmethod
    def generate(cls, block_size: int, channels: int = 3) -> KeySet:
        """New random keys from the OS CSPRNG (``secrets``); torch/numpy RNGs are not used.

        The permutation is uniform (Fisher-Yates), the two masks are independent uniform
        L-bit strings and the FFX password is 16 random bytes.
        """
        length = _positive_int("block_size", block_size) ** 2 * _positive_int("channels", channels)
        perm = list(range(length))
        for i in range(length - 1, 0, -1):
            j = secrets.randbelow(i + 1)
            perm[i], perm[j] = perm[j], perm[i]

        def random_mask() -> list[bool]:
            bits = secrets.randbits(length)
            return [bool(bits >> l & 1) for l in range(length)]

        return cls(block_size, channels, perm, random_mask(), random_mask(), secrets.token_bytes(16))

    @classmethod
    def from_seed(cls, seed: int, block_size: int, channels: int = 3,
                  password: Union[str, bytes] = "password") -> KeySet:
        """Compatibility constructor: the keys the reference implementation derives from ``seed``.

        ``perm`` is ``torch.randperm(L)`` right after ``torch.manual_seed(seed)``, and both masks
        are ``perm > L / 2``; the FFX password is ``password`` (UTF-8 if str). Only for reproducing
        published results: torch truncates seeds to 32 bits, so these keys can be brute-forced.
        Uses a private generator and leaves the global torch RNG untouched.
        """
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ValueError(f"seed must be an int, got {type(seed).__name__}")
        length = _positive_int("block_size", block_size) ** 2 * _positive_int("channels", channels)
        generator = torch.Generator().manual_seed(seed)
        perm = torch.randperm(length, generator=generator)
        mask = perm > length / 2  # true division, as in the reference: L - 1 - L//2 positions
        if isinstance(password, str):
            password = password.encode("utf-8")
        return cls(block_size, channels, perm, mask, mask.clone(), password)

    # --- accessors ----------------------------------------------------------------------

    @property
    def block_size(self) -> int:
        return self._block_size

    @property
    def channels(self) -> int:
        return self._channels

    @property
    def num_positions(self) -> int:
        """L = block_size**2 * channels, the length of a block vector."""
        return self._perm.numel()

    @property
    def perm(self) -> torch.Tensor:
        """Shuffle key, int64 [L]. Do not modify."""
        return self._perm

    @property
    def np_mask(self) -> torch.Tensor:
        """NP mask, bool [L]. Do not modify."""
        return self._np_mask

    @property
    def ffx_mask(self) -> torch.Tensor:
        """FFX mask, bool [L]. Do not modify."""
        return self._ffx_mask

    @property
    def ffx_password(self) -> bytes:
        return self._password

    @property
    def ffx_lut(self) -> torch.Tensor:
        """``ffx_lut[v]`` = FFX encryption of byte value v, int64 [256]. Do not modify."""
        return self._ffx_lut

    @property
    def ffx_max(self) -> int:
        """max(ffx_lut), the FFX output scale."""
        return self._ffx_max

    @property
    def ffx_inverse_lut(self) -> torch.Tensor:
        """Inverse of ``ffx_lut``, int64 [ffx_max + 1], -1 outside its image. Do not modify."""
        return self._ffx_inverse_lut

    # --- identity -----------------------------------------------------------------------

    def _fields(self) -> dict[str, Any]:
        """The key material as the JSON fields of the key file (without checksum)."""
        return {
            "format": FORMAT_NAME,
            "version": 1,
            "block_size": self._block_size,
            "channels": self._channels,
            "perm": self._perm.tolist(),
            "np_mask": _bits(self._np_mask),
            "ffx_mask": _bits(self._ffx_mask),
            "ffx_password": self._password.hex(),
        }

    def fingerprint(self) -> str:
        """16 hex characters identifying the key material (SHA-256, domain-separated)."""
        return hashlib.sha256(_FINGERPRINT_DOMAIN + _canonical_json(self._fields())).hexdigest()[:16]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, KeySet):
            return NotImplemented
        return self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self.fingerprint())

    def __repr__(self) -> str:
        return f"KeySet(block_size={self._block_size}, channels={self._channels}, fingerprint={self.fingerprint()})"

    __str__ = __repr__

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("KeySet is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("KeySet is immutable")

    def __reduce__(self) -> tuple[Any, ...]:
        # Rebuild through the constructor so unpickled keys are validated like any other.
        return (KeySet, (self._block_size, self._channels, self._perm.tolist(),
                         self._np_mask.tolist(), self._ffx_mask.tolist(), self._password))

    # --- files --------------------------------------------------------------------------

    def save(self, path: PathLike) -> None:
        """Write the key file atomically with mode 0o600 (replacing any existing file)."""
        fields = self._fields()
        fields["sha256"] = hashlib.sha256(_canonical_json(fields)).hexdigest()
        data = (json.dumps(fields, indent=1) + "\n").encode("ascii")

        # Owner-only from the first byte on: the secret is never readable by others.
        atomic_write(path, lambda f: f.write(data), mode=0o600)

    @classmethod
    def load(cls, path: PathLike) -> KeySet:
        """Read a key file written by :meth:`save`; raises :class:`KeyFileError` if invalid."""
        path = os.fspath(path)
        try:
            with open(path, "rb") as f:
                mode = os.fstat(f.fileno()).st_mode
                raw = f.read()
        except FileNotFoundError:
            raise KeyFileError(f"key file not found: {path}") from None
        except OSError as e:
            raise KeyFileError(f"cannot read key file {path}: {e}") from None
        if os.name == "posix" and mode & (stat.S_IRWXG | stat.S_IRWXO):
            warnings.warn(f"key file {path} is accessible by group/others (mode {stat.S_IMODE(mode):o}); "
                          f"run: chmod 600 {path}", stacklevel=2)

        try:
            doc = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise KeyFileError(f"{path} is not a valid key file (truncated or not JSON): {e}") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT_NAME:
            raise KeyFileError(f"{path} is not a kpfast key file (expected \"format\": \"{FORMAT_NAME}\")")
        version = doc.get("version")
        if type(version) is not int or version not in SUPPORTED_VERSIONS:
            raise KeyFileError(f"{path}: unsupported key file version {version!r}; "
                               f"supported versions: {', '.join(map(str, SUPPORTED_VERSIONS))}")
        missing = [k for k in (*_FIELDS, "sha256") if k not in doc]
        if missing:
            raise KeyFileError(f"{path}: missing field(s): {', '.join(missing)}")
        unknown = sorted(set(doc) - {*_FIELDS, "sha256"})
        if unknown:
            raise KeyFileError(f"{path}: unknown field(s): {', '.join(unknown)}")

        fields = {k: doc[k] for k in _FIELDS}
        if doc["sha256"] != hashlib.sha256(_canonical_json(fields)).hexdigest():
            raise KeyFileError(f"{path}: checksum mismatch, the key file was edited or corrupted")

        try:
            return cls(fields["block_size"], fields["channels"], _parse_perm(fields["perm"]),
                       _parse_bits("np_mask", fields["np_mask"]),
                       _parse_bits("ffx_mask", fields["ffx_mask"]),
                       _parse_hex(fields["ffx_password"]))
        except ValueError as e:
            raise KeyFileError(f"{path}: invalid key: {e}") from None


def _parse_perm(value: Any) -> list[int]:
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise ValueError("perm must be a list of integers")
    return value


def _parse_bits(name: str, value: Any) -> list[bool]:
    if not isinstance(value, str) or set(value) - {"0", "1"}:
        raise ValueError(f"{name} must be a string of '0'/'1' characters")
    return [c == "1" for c in value]


def _parse_hex(value: Any) -> bytes:
    try:
        return bytes.fromhex(value)
    except (TypeError, ValueError):
        raise ValueError("ffx_password must be a hex string") from None
