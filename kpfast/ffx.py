"""Format-preserving encryption of decimal integers, output-compatible with pyffx 0.3.0.

This reimplements ``pyffx.Integer(password, length).encrypt/decrypt`` so kpfast can build
its FFX lookup table without depending on pyffx at runtime (pyffx is only a test oracle).

Construction (an unbalanced Feistel network over radix-10 digits):

* The value is written as ``length`` decimal digits, most significant first
  (``str(v).zfill(length)``) and split into ``a`` = the first ``length // 2`` digits and
  ``b`` = the rest.
* Ten rounds ``i = 0..9``: ``c = (a + F_i(b)) mod 10`` digit by digit over ``len(a)``
  digits, then ``a, b = b, c``. The halves swap sizes every round. The output is ``a + b``.
  Decryption runs the rounds backwards with subtraction.
* The round function ``F_i(s)`` is an HMAC-SHA1 digit stream keyed by the password. The
  first message is the little-endian uint32s ``i, s[0], s[1], ...`` followed by the block
  counter ``0``; the digest, read as a big integer ``d``, gives the digits
  ``d % 10, d // 10 % 10, ...`` (least significant first, 48 per digest). Longer streams
  chain: the next message is the previous digest followed by counter ``1``, and so on.

pyffx packs with native byte order (``struct 'I'``); we fix little-endian, which is what
pyffx produces on every platform kpfast supports.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import struct
from collections.abc import Iterator

ROUNDS = 10
RADIX = 10
# Passwords whose 256-entry table is remembered: a key search or a key list that shares
# passwords derives each table once (2,560 HMACs, about 10 ms in Python).
TABLE_CACHE_SIZE = 256
# Whole decimal digits one SHA-1 digest yields: int(20 * log10(256)), as in pyffx.
_DIGITS_PER_HASH = 48


def _round_digits(password: bytes, i: int, s: list[int]) -> Iterator[int]:
    """Yield the digit stream of round function F_i(s)."""
    message = struct.pack(f"<{len(s) + 1}I", i, *s)
    counter = 0
    while True:
        h = hmac.new(password, message + struct.pack("<I", counter), hashlib.sha1)
        d = int.from_bytes(h.digest(), "big")
        for _ in range(_DIGITS_PER_HASH):
            d, r = divmod(d, RADIX)
            yield r
        message = h.digest()
        counter += 1


def _to_digits(value: int, length: int) -> list[int]:
    if not isinstance(length, int) or length < 1:
        raise ValueError(f"length must be a positive integer, got {length!r}")
    if not isinstance(value, int) or not 0 <= value < RADIX**length:
        raise ValueError(f"value must be an integer in [0, {RADIX**length}), got {value!r}")
    return [int(ch) for ch in str(value).zfill(length)]


def _from_digits(digits: list[int]) -> int:
    return int("".join(map(str, digits)))


def ffx_encrypt(password: bytes, value: int, length: int) -> int:
    """Encrypt ``value`` (``length`` decimal digits); equals ``pyffx.Integer(password, length).encrypt(value)``."""
    digits = _to_digits(value, length)
    a, b = digits[: length // 2], digits[length // 2 :]
    for i in range(ROUNDS):
        c = [(x + f) % RADIX for x, f in zip(a, _round_digits(password, i, b))]
        a, b = b, c
    return _from_digits(a + b)


def ffx_decrypt(password: bytes, value: int, length: int) -> int:
    """Inverse of :func:`ffx_encrypt`."""
    digits = _to_digits(value, length)
    a, b = digits[: length // 2], digits[length // 2 :]
    for i in reversed(range(ROUNDS)):
        # Undo "a, b = b, c": the old b is the current a, the old a is recovered from c = b.
        b, c = a, b
        a = [(x - f) % RADIX for x, f in zip(c, _round_digits(password, i, b))]
    return _from_digits(a + b)


def ffx_table(password: bytes, count: int = 256, length: int = 3) -> list[int]:
    """Return ``[ffx_encrypt(password, v, length) for v in range(count)]`` (distinct values)."""
    if not isinstance(count, int) or not 0 <= count <= RADIX**length:
        raise ValueError(f"count must be an integer in [0, {RADIX**length}], got {count!r}")
    return [ffx_encrypt(password, v, length) for v in range(count)]


@functools.lru_cache(maxsize=TABLE_CACHE_SIZE)
def cached_ffx_table(password: bytes) -> tuple[int, ...]:
    """``ffx_table(password)`` as a tuple, remembered for the last ``TABLE_CACHE_SIZE`` passwords."""
    return tuple(ffx_table(password))
