"""Secret keys for the block-wise transforms (shuffle, NP, FFX, block scrambling).

A :class:`KeySet` holds one independent key per transform for blocks of ``block_size`` x
``block_size`` pixels with ``channels`` channels, i.e. ``L = block_size**2 * channels``
in-block positions (docs/semantics.md §2):

* ``perm``: the shuffle key, a permutation of ``0..L-1`` (``out[l] = in[perm[l]]``);
* ``np_mask``: positions negated by the NP transform;
* ``ffx_mask`` and ``ffx_lut``: positions encrypted by FFX, and the 256-entry table of FFX codes.
  The table is derived from ``ffx_password`` (see :mod:`kpfast.ffx`) on first use and cached per
  password; keys made with :meth:`KeySet.from_tables` hold a table and no password;
* optionally ``grid`` and ``block_perm``: the block-scrambling key, a permutation of the
  ``B = rows * columns`` block locations of images cut into a ``grid = (rows, columns)`` of blocks
  (output block ``b``, row-major, is input block ``block_perm[b]``; docs/semantics.md §11). It
  depends on the image size, so a key has one only when asked for (``generate(..., grid=...)``).

Constructors:

* :meth:`KeySet.generate` / :meth:`KeySet.generate_many`: new keys from the OS CSPRNG (uniform
  permutation, two independent uniform masks, 128-bit password, and with ``grid=`` a uniform
  block permutation). With ``rng=`` they draw the same distribution from the caller's generator
  instead: for reproducible experiments only, never for secrets.
* :meth:`KeySet.from_seed`: the reference implementation's keys; its 32-bit seeds are weak.
* :meth:`KeySet.from_tables`: keys without a password (an estimated FFX table, any injective
  table of codes), usable by every transform.
* :meth:`replace`, :meth:`swap`, :meth:`flip`: cheap edits for key searches; they reuse the FFX
  table when the FFX key is unchanged (``swap(i, j, op="scramble")`` swaps two block locations).

A KeySet is immutable: attributes cannot be reassigned and the tensors it returns must not be
modified in place (they are returned as stored, without copies, for speed). ``repr``/``str``
show only the block size, channel count and a fingerprint, never key material. Note that for
keys from :meth:`KeySet.from_seed` the fingerprint is enough to recover the seed by trying all
2**32 of them, since the derivation is public; for generated keys it reveals nothing useful.
The fingerprint of a key made with :meth:`from_tables` covers its table instead of a password,
so it never equals the fingerprint of a password key, even one with the same table (compare
effective keys with :meth:`agreement`).

Keys are not pickled: ``pickle.dumps(keys)`` and ``torch.save`` of anything that holds keys (a
``BlockTransform``, a compiled ``Program``, a ``ProtectedModel``) raise :class:`KeyPicklingError`,
so key material cannot end up in a checkpoint by accident. Save keys with :meth:`save`.
Pickling is allowed only while ``multiprocessing`` starts a process (spawn or forkserver start
methods, e.g. ``DataLoader`` workers), which hands the keys to a child process and writes nothing.
``copy.copy`` and ``copy.deepcopy`` return the same (immutable) object.

Key file format (versions 1 and 2)
----------------------------------
UTF-8 JSON object with exactly these fields::

    {
      "format": "kpfast-keyset",      # fixed magic string
      "version": 1,                   # 1: no block-scrambling key; 2: with one
      "block_size": 4,                # M >= 1
      "channels": 3,                  # C >= 1, and M*M*C <= MAX_POSITIONS
      "perm": [5, 0, ...],            # L integers, a permutation of 0..L-1
      "np_mask": "0110...",           # L characters '0'/'1', position l first
      "ffx_mask": "1000...",          # same
      "ffx_password": "9f3a...",      # password bytes as lowercase hex
      "sha256": "..."                 # checksum, see below
    }

Version 2 has two more fields, the block-scrambling key and the grid it was made for::

      "grid": [8, 8],                 # rows and columns of blocks (the image is 8M x 8M), B = 64 <= MAX_BLOCKS
      "block_perm": [17, 3, ...],     # B integers, a permutation of 0..B-1

:meth:`KeySet.save` writes the oldest version that holds the key: version 1 for a key without a
block-scrambling key (so its file, and its fingerprint, are what earlier kpfast wrote), version 2
for one with it. :meth:`KeySet.load` reads both.

``sha256`` is the hex SHA-256 of the canonical serialisation of all the other fields:
``json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True)`` encoded as
ASCII. It detects accidental edits and corruption; it is not a MAC. Files are written
atomically with mode 0o600 (owner read/write only), and never over an existing file unless
``overwrite=True``. Key files hold password keys only: keys from :meth:`from_tables` cannot be
saved. :meth:`KeySet.load` reads at most ``MAX_KEY_FILE_BYTES``. A new version adds its field
list to ``_SCHEMAS`` and its reader to ``_READERS``.
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing.context
import os
import random
import secrets
import stat
import warnings
from collections.abc import Callable
from typing import Any, Union

import numpy as np
import torch

from .atomic import atomic_write
from .errors import InvalidKeyError, KeyFileError, KeyPicklingError, OutputExistsError
from .ffx import cached_ffx_table

__all__ = ["KeySet", "KeyFileError", "InvalidKeyError", "KeyPicklingError", "MAX_POSITIONS",
           "MAX_KEY_FILE_BYTES", "MAX_BLOCKS"]

FORMAT_NAME = "kpfast-keyset"
CURRENT_VERSION = 2  # the newest; keys without a block-scrambling key are still written as version 1
# Key file fields per version, besides "format", "version" and "sha256".
_V1_FIELDS = ("block_size", "channels", "perm", "np_mask", "ffx_mask", "ffx_password")
_SCHEMAS = {1: _V1_FIELDS, 2: (*_V1_FIELDS, "grid", "block_perm")}
SUPPORTED_VERSIONS = tuple(_SCHEMAS)
_FINGERPRINT_DOMAIN = b"kpfast-keyset-fingerprint-v1\x00"

# L = M*M*C up to 2**20 (e.g. M = 512 with 4 channels, M = 1024 grey): larger keys are surely a
# mistake (-M 100000 would need 240 GB).
MAX_POSITIONS = 1 << 20
# Block locations of a scrambling key: 2**20 is a 4096 x 4096 image in 4 x 4 blocks.
MAX_BLOCKS = 1 << 20
# A key file of MAX_POSITIONS positions is about 12 MiB (and as much again for MAX_BLOCKS
# locations); reading stops a few times beyond.
MAX_KEY_FILE_BYTES = 64 << 20
# Codes of a table given to from_tables: 16 bits, as FFX output stored in 16-bit images.
MAX_FFX_CODE = 65535
PASSWORD_BYTES = 16

PathLike = Union[str, "os.PathLike[str]"]
Rng = Union[np.random.Generator, random.Random, torch.Generator]


def refuse_pickling(what: str) -> None:
    """Raise :class:`KeyPicklingError` unless multiprocessing is starting a process.

    While a spawn/forkserver child is being started, the pickle goes to that child only (this is
    how ``DataLoader`` workers receive their dataset); any other pickle may end up in a file.
    """
    if multiprocessing.context.get_spawning_popen() is None:
        raise KeyPicklingError(
            f"{what} holds secret key material and is not pickled (pickle.dumps, or torch.save of it or of "
            "a model that holds it): save keys with KeySet.save(path) and models with "
            "ProtectedModel.save(path), which stores the weights and the key's fingerprint only")


def num_positions(block_size: Any, channels: Any) -> int:
    """``L = block_size**2 * channels``, checked: both ints >= 1 and L <= MAX_POSITIONS."""
    block_size = _positive_int("block_size", block_size)
    channels = _positive_int("channels", channels)
    length = block_size * block_size * channels
    if length > MAX_POSITIONS:
        raise InvalidKeyError(f"block_size**2 * channels = {block_size}**2 * {channels} = {length} positions "
                              f"exceeds the limit of {MAX_POSITIONS} (kpfast.keys.MAX_POSITIONS)")
    return length


def _positive_int(name: str, value: Any) -> int:
    # bool is an int subclass; True as a block size is surely a mistake.
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidKeyError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise InvalidKeyError(f"{name} must be >= 1, got {value}")
    return value


def _as_tensor(name: str, value: Any) -> torch.Tensor:
    try:
        # torch.tensor copies, so later changes to the caller's array cannot alter the key.
        t = value.detach().clone() if isinstance(value, torch.Tensor) else torch.tensor(value)
    except (TypeError, ValueError, RuntimeError) as e:
        raise InvalidKeyError(f"{name} must be a 1-D sequence or tensor: {e}") from None
    return t.cpu()


def _check_integers(name: str, value: Any, length: int, hint: str = "") -> torch.Tensor:
    t = _as_tensor(name, value)
    if t.shape != (length,):
        raise InvalidKeyError(f"{name} must have shape ({length},){hint}, got {tuple(t.shape)}")
    if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
        raise InvalidKeyError(f"{name} must hold integers, got dtype {t.dtype}")
    return t.to(torch.int64)


_GEOMETRY = " = (block_size**2 * channels,)"


def _check_perm(value: Any, length: int, name: str = "perm", hint: str = _GEOMETRY) -> torch.Tensor:
    perm = _check_integers(name, value, length, hint)
    if not torch.equal(torch.sort(perm).values, torch.arange(length)):
        raise InvalidKeyError(f"{name} is not a permutation of 0..{length - 1}")
    return perm


def check_grid(value: Any) -> tuple[int, int]:
    """``(rows, columns)`` of blocks, both ints >= 1, at most MAX_BLOCKS blocks in all."""
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise InvalidKeyError(f"grid must be (rows, columns) of blocks, got {value!r}")
    rows, columns = _positive_int("grid rows", value[0]), _positive_int("grid columns", value[1])
    if rows * columns > MAX_BLOCKS:
        raise InvalidKeyError(f"a grid of {rows} x {columns} = {rows * columns} blocks exceeds the limit of "
                              f"{MAX_BLOCKS} (kpfast.keys.MAX_BLOCKS)")
    return rows, columns


def _check_scramble(grid: Any, block_perm: Any) -> tuple[tuple[int, int] | None, torch.Tensor | None]:
    """The block-scrambling key: both parts or neither."""
    if grid is None and block_perm is None:
        return None, None
    if grid is None or block_perm is None:
        raise InvalidKeyError("give grid and block_perm together (the block permutation is made for one grid)")
    grid = check_grid(grid)
    return grid, _check_perm(block_perm, grid[0] * grid[1], "block_perm", " = (grid rows * columns,)")


def _check_mask(name: str, value: Any, length: int) -> torch.Tensor:
    mask = _as_tensor(name, value)
    if mask.shape != (length,):
        raise InvalidKeyError(f"{name} must have shape ({length},){_GEOMETRY}, got {tuple(mask.shape)}")
    if mask.dtype != torch.bool:
        raise InvalidKeyError(f"{name} must be boolean, got dtype {mask.dtype}")
    return mask


def _check_password(value: Any) -> bytes:
    if not isinstance(value, (bytes, bytearray)):
        raise InvalidKeyError(f"ffx_password must be bytes, got {type(value).__name__}")
    if len(value) == 0:
        raise InvalidKeyError("ffx_password must not be empty")
    return bytes(value)


def _check_lut(value: Any) -> torch.Tensor:
    lut = _check_integers("ffx_lut", value, 256)
    if int(lut.min()) < 0 or int(lut.max()) > MAX_FFX_CODE:
        raise InvalidKeyError(f"ffx_lut values must lie in [0, {MAX_FFX_CODE}]")
    if torch.unique(lut).numel() != 256:
        raise InvalidKeyError("ffx_lut must be injective (256 distinct codes), or FFX cannot be inverted")
    return lut


def _check_position(name: str, value: Any, length: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < length:
        raise InvalidKeyError(f"{name} must be a position in [0, {length}), got {value!r}")
    return value


def _bits(mask: torch.Tensor) -> str:
    return mask.to(torch.uint8).add_(ord("0")).numpy().tobytes().decode("ascii")


def _canonical_json(fields: dict[str, Any]) -> bytes:
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


class KeySet:
    """Immutable set of keys for the shuffle, NP, FFX and block-scrambling transforms (see module docs)."""

    __slots__ = ("_block_size", "_channels", "_perm", "_np_mask", "_ffx_mask", "_password",
                 "_ffx_lut", "_grid", "_block_perm", "_ffx_inverse_lut", "_fingerprint", "__weakref__")

    def __init__(self, block_size: int, channels: int, perm: Any, np_mask: Any, ffx_mask: Any,
                 ffx_password: bytes, *, grid: tuple[int, int] | None = None, block_perm: Any = None) -> None:
        length = num_positions(block_size, channels)
        self._set(block_size, channels, _check_perm(perm, length), _check_mask("np_mask", np_mask, length),
                  _check_mask("ffx_mask", ffx_mask, length), _check_password(ffx_password), None,
                  *_check_scramble(grid, block_perm))

    def _set(self, block_size: int, channels: int, perm: torch.Tensor, np_mask: torch.Tensor,
             ffx_mask: torch.Tensor, password: bytes | None, lut: torch.Tensor | None,
             grid: tuple[int, int] | None = None, block_perm: torch.Tensor | None = None) -> None:
        """Fill the slots with checked values: a password, or a table (lut) without one; a grid
        and block permutation, or neither."""
        values = (block_size, channels, perm, np_mask, ffx_mask, password, lut, grid, block_perm, None, None)
        for name, value in zip(self.__slots__, values):
            object.__setattr__(self, name, value)

    @classmethod
    def _checked(cls, *args: Any) -> KeySet:
        """A KeySet of values known to be valid (the arguments of :meth:`_set`)."""
        keys = cls.__new__(cls)
        keys._set(*args)
        return keys

    def _with(self, **parts: Any) -> KeySet:
        """A copy with some of the (checked) arguments of :meth:`_set` replaced."""
        values = dict(block_size=self._block_size, channels=self._channels, perm=self._perm, np_mask=self._np_mask,
                      ffx_mask=self._ffx_mask, password=self._password, lut=self._ffx_lut, grid=self._grid,
                      block_perm=self._block_perm)
        values.update(parts)
        return self._checked(*values.values())

    # --- constructors -------------------------------------------------------------------

    @classmethod
    def generate(cls, block_size: int, channels: int = 3, *, grid: tuple[int, int] | None = None,
                 rng: Rng | None = None) -> KeySet:
        """New random keys from the OS CSPRNG (``secrets``); the global torch/numpy/random
        generators are neither used nor disturbed.

        The permutation is uniform, the two masks are independent uniform L-bit strings and the
        FFX password is 16 random bytes; the FFX table is derived on first use.

        Args:
            grid: ``(rows, columns)`` of blocks of the images to scramble (``(H // M, W // M)``):
                also draw a uniform block-scrambling permutation of the ``rows * columns``
                locations. Without it the key has no block-scrambling key.
            rng: for evaluation only (reproducible experiments, never secrets): draw the same
                distribution from this ``numpy.random.Generator``, ``random.Random`` or
                ``torch.Generator`` instead of the CSPRNG. ``generate(M, C, rng=g)`` equals
                ``generate_many(1, M, C, rng=g)[0]``.
        """
        return cls.generate_many(1, block_size, channels, grid=grid, rng=rng)[0]

    @classmethod
    def generate_many(cls, n: int, block_size: int, channels: int = 3, *, grid: tuple[int, int] | None = None,
                      rng: Rng | None = None) -> list[KeySet]:
        """``n`` independent keys distributed as :meth:`generate`'s, drawn in bulk (for key searches:
        20,000 keys of 48 positions take a fraction of a second; no FFX table is built).

        Each permutation (in-block, and of the block locations with ``grid``) is the order of
        independent random 64-bit numbers (exactly uniform: the rare rows with two equal numbers
        are drawn again); each mask bit is one random bit.
        """
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise InvalidKeyError(f"n must be an int >= 0, got {n!r}")
        length = num_positions(block_size, channels)
        grid = None if grid is None else check_grid(grid)
        blocks = 0 if grid is None else grid[0] * grid[1]
        random_bytes = _byte_source(rng)
        keys: list[KeySet] = []
        chunk = max(1, (1 << 20) // (length + blocks))  # bounds the temporary arrays to about 25 MB
        for start in range(0, n, chunk):
            rows = min(chunk, n - start)
            perms = _permutations(rows, length, random_bytes)
            masks = _bit_rows(2 * rows, length, random_bytes)
            passwords = random_bytes(PASSWORD_BYTES * rows)
            block_perms = _permutations(rows, blocks, random_bytes) if grid is not None else None
            for i in range(rows):
                # copies: each key owns its storage (a saved tensor never carries the other keys)
                block_perm = None if block_perms is None else torch.from_numpy(block_perms[i].copy())
                keys.append(cls._checked(block_size, channels, torch.from_numpy(perms[i].copy()),
                                         torch.from_numpy(masks[i].copy()), torch.from_numpy(masks[rows + i].copy()),
                                         passwords[PASSWORD_BYTES * i:PASSWORD_BYTES * (i + 1)], None,
                                         grid, block_perm))
        return keys

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
            raise InvalidKeyError(f"seed must be an int, got {type(seed).__name__}")
        length = num_positions(block_size, channels)
        generator = torch.Generator().manual_seed(seed)
        perm = torch.randperm(length, generator=generator)
        mask = perm > length / 2  # true division, as in the reference: L - 1 - L//2 positions
        if isinstance(password, str):
            password = password.encode("utf-8")
        return cls(block_size, channels, perm, mask, mask.clone(), password)

    @classmethod
    def from_tables(cls, perm: Any, np_mask: Any, ffx_mask: Any, ffx_lut: Any, *, block_size: int,
                    channels: int = 3, grid: tuple[int, int] | None = None, block_perm: Any = None) -> KeySet:
        """Keys without an FFX password: ``ffx_lut`` is the FFX table itself (e.g. estimated by an
        attack): 256 distinct integer codes in [0, 65535]; ``ffx_max`` is its maximum, as for a
        password's table. Every transform accepts such keys; :meth:`save` refuses them (key files
        hold passwords), and their fingerprint covers the table. ``grid`` and ``block_perm``: a
        block-scrambling key, as for the constructor.
        """
        length = num_positions(block_size, channels)
        return cls._checked(block_size, channels, _check_perm(perm, length), _check_mask("np_mask", np_mask, length),
                            _check_mask("ffx_mask", ffx_mask, length), None, _check_lut(ffx_lut),
                            *_check_scramble(grid, block_perm))

    # --- edits (for key searches: the FFX table is kept when the FFX key is unchanged) --------

    def replace(self, *, perm: Any = None, np_mask: Any = None, ffx_mask: Any = None,
                ffx_password: bytes | None = None, ffx_lut: Any = None, block_perm: Any = None,
                grid: tuple[int, int] | None = None) -> KeySet:
        """A copy with the given parts replaced. A new ``ffx_password`` makes a password key, a new
        ``ffx_lut`` a key without password (as :meth:`from_tables`); give at most one of them.
        A new ``block_perm`` is for the key's grid, or for a new ``grid`` given with it (a key
        without a block-scrambling key gets one that way)."""
        if ffx_password is not None and ffx_lut is not None:
            raise InvalidKeyError("give ffx_password or ffx_lut, not both")
        L = self.num_positions
        parts: dict[str, Any] = {}
        if ffx_password is not None:
            parts.update(password=_check_password(ffx_password), lut=None)
        elif ffx_lut is not None:
            parts.update(password=None, lut=_check_lut(ffx_lut))
        if perm is not None:
            parts["perm"] = _check_perm(perm, L)
        for name, mask in (("np_mask", np_mask), ("ffx_mask", ffx_mask)):
            if mask is not None:
                parts[name] = _check_mask(name, mask, L)
        if grid is not None or block_perm is not None:
            if grid is not None and block_perm is None:
                raise InvalidKeyError("a new grid needs a new block_perm for it")
            if grid is None and self._grid is None:
                raise InvalidKeyError("this key has no block-scrambling key: give the grid with block_perm")
            parts["grid"], parts["block_perm"] = _check_scramble(self._grid if grid is None else grid, block_perm)
        return self._with(**parts)

    def swap(self, i: int, j: int, op: str = "shuffle") -> KeySet:
        """A copy whose permutation has entries ``i`` and ``j`` exchanged: the in-block
        permutation (``op="shuffle"``) or the block permutation (``op="scramble"``)."""
        if op not in ("shuffle", "scramble"):
            raise InvalidKeyError(f"op must be 'shuffle' or 'scramble' (the transforms with a permutation), got {op!r}")
        name = "perm" if op == "shuffle" else "block_perm"
        current = self._perm if op == "shuffle" else self._required_block_perm()
        i, j = _check_position("i", i, current.numel()), _check_position("j", j, current.numel())
        swapped = current.clone()
        swapped[i], swapped[j] = current[j], current[i]
        return self._with(**{name: swapped})

    def flip(self, op: str, l: int) -> KeySet:  # noqa: E741 (l is the spec's name for a position)
        """A copy with bit ``l`` of the mask of ``op`` (``"negpos"`` or ``"ffx"``) flipped."""
        if op not in ("negpos", "ffx"):
            raise InvalidKeyError(f"op must be 'negpos' or 'ffx' (the transforms with a mask), got {op!r}")
        l = _check_position("l", l, self.num_positions)  # noqa: E741
        name = "np_mask" if op == "negpos" else "ffx_mask"
        mask = getattr(self, name).clone()
        mask[l] = ~mask[l]
        return self._with(**{name: mask})

    def agreement(self, other: KeySet) -> dict[str, float]:
        """How much of ``other`` this key set matches, per part: the fractions of permutation
        positions, of NP and FFX mask bits, and of FFX table entries that are equal (e.g. an
        estimated key against the true one); and of block locations (``"block_perm"``) when both
        have a block-scrambling key."""
        if not isinstance(other, KeySet):
            raise TypeError(f"agreement needs a KeySet, got {type(other).__name__}")
        if (other.block_size, other.channels) != (self._block_size, self._channels):
            raise InvalidKeyError(f"key sets of different geometry: M={self._block_size}, C={self._channels} "
                                  f"vs M={other.block_size}, C={other.channels}")
        both = self._grid is not None and other.grid is not None
        if both and self._grid != other.grid:
            raise InvalidKeyError(f"block-scrambling keys for different grids: {self._grid} vs {other.grid}")

        def equal(a: torch.Tensor, b: torch.Tensor) -> float:
            return (a == b).double().mean().item()

        parts = {"perm": equal(self._perm, other.perm), "np_mask": equal(self._np_mask, other.np_mask),
                 "ffx_mask": equal(self._ffx_mask, other.ffx_mask), "ffx_lut": equal(self.ffx_lut, other.ffx_lut)}
        if both:
            parts["block_perm"] = equal(self._block_perm, other.block_perm)
        return parts

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
    def grid(self) -> tuple[int, int] | None:
        """``(rows, columns)`` of blocks the block-scrambling key is for; None without one."""
        return self._grid

    @property
    def block_perm(self) -> torch.Tensor | None:
        """Block-scrambling key, int64 [rows * columns]: output block b (row-major) is input block
        ``block_perm[b]``; None without one. Do not modify."""
        return self._block_perm

    def _required_block_perm(self) -> torch.Tensor:
        if self._block_perm is None:
            raise InvalidKeyError("this key has no block-scrambling key; make one for images of H x W pixels with "
                                  "KeySet.generate(M, C, grid=(H // M, W // M))")
        return self._block_perm

    @property
    def ffx_password(self) -> bytes | None:
        """The FFX password; None for keys made with :meth:`from_tables`."""
        return self._password

    @property
    def ffx_lut(self) -> torch.Tensor:
        """``ffx_lut[v]`` = FFX encryption of byte value v, int64 [256]. Do not modify.

        Derived from the password on first use (cached per password)."""
        if self._ffx_lut is None:  # immutable key, so a racing thread computes the same table
            object.__setattr__(self, "_ffx_lut", torch.tensor(cached_ffx_table(self._password), dtype=torch.int64))
        return self._ffx_lut

    @property
    def ffx_max(self) -> int:
        """max(ffx_lut), the FFX output scale."""
        return int(self.ffx_lut.max())

    @property
    def ffx_inverse_lut(self) -> torch.Tensor:
        """Inverse of ``ffx_lut``, int64 [ffx_max + 1], -1 outside its image. Do not modify."""
        if self._ffx_inverse_lut is None:
            lut = self.ffx_lut
            inverse = torch.full((int(lut.max()) + 1,), -1, dtype=torch.int64)
            inverse[lut] = torch.arange(lut.numel())
            object.__setattr__(self, "_ffx_inverse_lut", inverse)
        return self._ffx_inverse_lut

    # --- identity -----------------------------------------------------------------------

    def _fields(self) -> dict[str, Any]:
        """The key material as the JSON fields of the key file (without checksum); a key without
        password has an "ffx_lut" list instead of "ffx_password" (it is not a valid key file).
        Version 1 without a block-scrambling key: the fields (and fingerprint) of earlier kpfast."""
        fields: dict[str, Any] = {
            "format": FORMAT_NAME,
            "version": 1 if self._grid is None else 2,
            "block_size": self._block_size,
            "channels": self._channels,
            "perm": self._perm.tolist(),
            "np_mask": _bits(self._np_mask),
            "ffx_mask": _bits(self._ffx_mask),
        }
        if self._password is None:
            fields["ffx_lut"] = self._ffx_lut.tolist()
        else:
            fields["ffx_password"] = self._password.hex()
        if self._grid is not None:
            fields["grid"] = list(self._grid)
            fields["block_perm"] = self._block_perm.tolist()
        return fields

    def fingerprint(self) -> str:
        """16 hex characters identifying the key material (SHA-256, domain-separated)."""
        if self._fingerprint is None:
            digest = hashlib.sha256(_FINGERPRINT_DOMAIN + _canonical_json(self._fields())).hexdigest()
            object.__setattr__(self, "_fingerprint", digest[:16])
        return self._fingerprint

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, KeySet):
            return NotImplemented
        if self is other:
            return True
        return ((self._block_size, self._channels, self._password) == (other._block_size, other._channels, other._password)
                and torch.equal(self._perm, other._perm) and torch.equal(self._np_mask, other._np_mask)
                and torch.equal(self._ffx_mask, other._ffx_mask)
                and (self._password is not None or torch.equal(self._ffx_lut, other._ffx_lut))
                and self._grid == other._grid
                and (self._grid is None or torch.equal(self._block_perm, other._block_perm)))

    def __hash__(self) -> int:
        return hash(self.fingerprint())

    def __repr__(self) -> str:
        grid = "" if self._grid is None else f", grid={self._grid}"
        return (f"KeySet(block_size={self._block_size}, channels={self._channels}{grid}, "
                f"fingerprint={self.fingerprint()})")

    __str__ = __repr__

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("KeySet is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("KeySet is immutable")

    def __reduce__(self) -> tuple[Any, ...]:
        refuse_pickling("a KeySet")
        # Rebuilt through the checked constructors, so unpickled keys are validated like any other.
        lut = None if self._password is not None else self._ffx_lut.tolist()
        block_perm = None if self._block_perm is None else self._block_perm.tolist()
        return (_restore, (self._block_size, self._channels, self._perm.tolist(), self._np_mask.tolist(),
                           self._ffx_mask.tolist(), self._password, lut, self._grid, block_perm))

    def __copy__(self) -> KeySet:
        return self

    def __deepcopy__(self, memo: dict) -> KeySet:
        return self  # immutable: a copy in memory would be indistinguishable

    # --- files --------------------------------------------------------------------------

    def save(self, path: PathLike, *, overwrite: bool = False) -> None:
        """Write the key file atomically with mode 0o600: version 1 without a block-scrambling
        key, version 2 with one (see the module docs).

        Refuses to replace an existing file unless ``overwrite=True`` (:class:`OutputExistsError`),
        and to save keys without a password (:meth:`from_tables`; :class:`KeyFileError`): key files
        hold passwords.
        """
        path = os.fspath(path)
        if self._password is None:
            raise KeyFileError(f"cannot save {path}: this key set has an FFX table but no password "
                               "(KeySet.from_tables), and key files hold passwords")
        if not overwrite and os.path.lexists(path):
            raise OutputExistsError(f"{path} exists; refusing to overwrite a key file (pass overwrite=True to replace it)")
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
                raw = f.read(MAX_KEY_FILE_BYTES + 1)
        except FileNotFoundError:
            raise KeyFileError(f"key file not found: {path}") from None
        except OSError as e:
            raise KeyFileError(f"cannot read key file {path}: {e}") from None
        if len(raw) > MAX_KEY_FILE_BYTES:
            raise KeyFileError(f"{path} is not a key file: larger than {MAX_KEY_FILE_BYTES} bytes "
                               "(kpfast.keys.MAX_KEY_FILE_BYTES)")
        if os.name == "posix" and mode & (stat.S_IRWXG | stat.S_IRWXO):
            warnings.warn(f"key file {path} is accessible by group/others (mode {stat.S_IMODE(mode):o}); "
                          f"run: chmod 600 {path}", stacklevel=2)
        try:
            return _read(path, raw)
        except KeyFileError:
            raise
        except (ValueError, TypeError, RecursionError, OverflowError) as e:
            # InvalidKeyError (a ValueError) from the checks, or anything odd in a crafted file
            raise KeyFileError(f"{path}: invalid key: {e}") from None


def _restore(block_size: int, channels: int, perm: list[int], np_mask: list[bool], ffx_mask: list[bool],
             password: bytes | None, lut: list[int] | None, grid: tuple[int, int] | None = None,
             block_perm: list[int] | None = None) -> KeySet:
    if password is None:
        return KeySet.from_tables(perm, np_mask, ffx_mask, lut, block_size=block_size, channels=channels,
                                  grid=grid, block_perm=block_perm)
    return KeySet(block_size, channels, perm, np_mask, ffx_mask, password, grid=grid, block_perm=block_perm)


# --- random key material ----------------------------------------------------------------------

def _byte_source(rng: Rng | None) -> Callable[[int], bytes]:
    """``random_bytes(k)`` from the CSPRNG, or from the caller's generator (evaluation only)."""
    if rng is None:
        return secrets.token_bytes
    if isinstance(rng, np.random.Generator):
        return rng.bytes
    if isinstance(rng, random.Random):
        return rng.randbytes
    if isinstance(rng, torch.Generator):
        return lambda k: torch.randint(0, 256, (k,), dtype=torch.uint8, generator=rng).numpy().tobytes()
    raise TypeError(f"rng must be a numpy.random.Generator, random.Random or torch.Generator, "
                    f"got {type(rng).__name__}")


def _permutations(n: int, length: int, random_bytes: Callable[[int], bytes]) -> np.ndarray:
    """``n`` uniform permutations of ``0..length-1`` (int64 [n, length]).

    The order of i.i.d. random numbers is a uniform permutation when they are distinct (by
    symmetry); rows with a tie (probability < length**2 / 2**65) are drawn again.
    """
    def draw(rows: int) -> np.ndarray:
        return np.frombuffer(random_bytes(8 * rows * length), dtype=np.uint64).reshape(rows, length)

    values = draw(n).copy()
    while True:
        order = np.argsort(values, axis=1)
        ordered = np.take_along_axis(values, order, axis=1)
        tied = np.flatnonzero((ordered[:, 1:] == ordered[:, :-1]).any(axis=1))
        if tied.size == 0:
            return order.astype(np.int64, copy=False)
        values[tied] = draw(tied.size)


def _bit_rows(n: int, length: int, random_bytes: Callable[[int], bytes]) -> np.ndarray:
    """``n`` rows of ``length`` independent uniform bits (bool [n, length])."""
    raw = np.frombuffer(random_bytes(n * math.ceil(length / 8)), dtype=np.uint8).reshape(n, -1)
    return np.unpackbits(raw, axis=1, count=length, bitorder="little").astype(bool)


# --- key files ----------------------------------------------------------------------------

def _read(path: str, raw: bytes) -> KeySet:
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        reason = "nested too deeply" if isinstance(e, RecursionError) else e
        raise KeyFileError(f"{path} is not a valid key file (truncated or not JSON): {reason}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT_NAME:
        raise KeyFileError(f"{path} is not a kpfast key file (expected \"format\": \"{FORMAT_NAME}\")")
    version = doc.get("version")
    if type(version) is not int or version not in _SCHEMAS:
        raise KeyFileError(f"{path}: unsupported key file version {version!r}; "
                           f"supported versions: {', '.join(map(str, SUPPORTED_VERSIONS))}")
    names = ("format", "version", *_SCHEMAS[version])
    missing = [k for k in (*names, "sha256") if k not in doc]
    if missing:
        raise KeyFileError(f"{path}: missing field(s): {', '.join(missing)}")
    unknown = sorted(set(doc) - {*names, "sha256"})
    if unknown:
        raise KeyFileError(f"{path}: unknown field(s): {', '.join(unknown)}")

    fields = {k: doc[k] for k in names}
    if doc["sha256"] != hashlib.sha256(_canonical_json(fields)).hexdigest():
        raise KeyFileError(f"{path}: checksum mismatch, the key file was edited or corrupted")
    return _READERS[version](fields)


def _read_v1(fields: dict[str, Any], **scramble: Any) -> KeySet:
    return KeySet(fields["block_size"], fields["channels"], _parse_ints(fields["perm"]),
                  _parse_bits("np_mask", fields["np_mask"]), _parse_bits("ffx_mask", fields["ffx_mask"]),
                  _parse_hex(fields["ffx_password"]), **scramble)


def _read_v2(fields: dict[str, Any]) -> KeySet:
    """Version 1 and the block-scrambling key with its grid."""
    return _read_v1(fields, grid=_parse_ints(fields["grid"], "grid"),
                    block_perm=_parse_ints(fields["block_perm"], "block_perm"))


_READERS: dict[int, Callable[[dict[str, Any]], KeySet]] = {1: _read_v1, 2: _read_v2}


def _parse_ints(value: Any, name: str = "perm") -> list[int]:
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise InvalidKeyError(f"{name} must be a list of integers")
    return value


def _parse_bits(name: str, value: Any) -> list[bool]:
    if not isinstance(value, str) or set(value) - {"0", "1"}:
        raise InvalidKeyError(f"{name} must be a string of '0'/'1' characters")
    return [c == "1" for c in value]


def _parse_hex(value: Any) -> bytes:
    try:
        return bytes.fromhex(value)
    except (TypeError, ValueError):
        raise InvalidKeyError("ffx_password must be a hex string") from None
