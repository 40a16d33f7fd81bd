"""Attack 1, key space: how many key sets a brute-force search would have to try.

Threat model: none needed; this is counting. For a chain at block size M with C channels
(L = M*M*C positions, docs/semantics.md §2):

* :meth:`KeySet.generate` keys: a uniform permutation (L! choices) for Shuffle, an independent
  L-bit mask for NP and another for FFX, and a 128-bit FFX password. A password selects one FFX
  table, an injective map of the 256 bytes into the 1000 three-digit codes; there are
  1000!/744! (about 2^2499.5) such maps, so the 2^128 passwords reach at most 2^128 distinct tables
  (and, FFX being a pseudo-random permutation, two passwords share a table with probability
  about 2^-2499: in effect never).
* with ``"scramble"`` (block scrambling over a grid of B = rows x columns blocks), a uniform
  permutation of the block locations: B! choices more;
* the reference's keys (:meth:`KeySet.from_seed`): one 32-bit seed derives the permutation, both
  masks are ``perm > L/2`` (the same mask, marking L - 1 - L//2 positions) and the password is
  the public ``"password"``: at most min(2^32, L!) key sets for a chain with Shuffle, and
  min(2^32, C(L, L - 1 - L//2)) for NP or FFX alone; one FFX table.

Sizes are exact log2 of those counts (the number of key sets, not of distinct transforms: e.g. an
FFX mask without marked positions makes every table act alike).
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

from ...errors import ConfigError
from ...keys import PASSWORD_BYTES, check_grid, num_positions
from ...report.tables import TRANSFORM_LABELS, markdown_table
from .scoring import FFX_CODES

SEED_BITS = 32  # torch seeds its CPU generator with the low 32 bits (docs/semantics.md §2.2)


def log2_factorial(n: int) -> float:
    """log2(n!), summed exactly enough for 16 digits (fsum of the logs)."""
    return math.fsum(math.log2(i) for i in range(2, n + 1))


def log2_injections(codes: int = FFX_CODES, values: int = 256) -> float:
    """log2 of the number of injective maps of ``values`` bytes into ``codes`` codes: codes!/(codes-values)!."""
    return math.fsum(math.log2(i) for i in range(codes - values + 1, codes + 1))


@dataclass(frozen=True)
class KeySpace:
    ops: tuple[str, ...]
    block_size: int
    channels: int
    positions: int  # L
    bits: dict[str, float]  # log2 of the choices per part: "perm", "np_mask", "ffx_mask", "ffx_table", "block_perm"
    total_bits: float  # log2 of the number of generate() key sets for the chain
    ffx_tables_bits: float  # log2 of the number of distinct FFX tables generate() keys reach
    reference_bits: float  # log2 of the from_seed() keys the chain tells apart (an upper bound: seeds may collide)

    def as_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["ops"] = list(self.ops)
        return d


def key_space(ops: Sequence[str], block_size: int, channels: int = 3, *,
              grid: tuple[int, int] | None = None) -> KeySpace:
    """The key space of ``ops`` at block size M = ``block_size`` with ``channels`` channels (and,
    for a chain with ``"scramble"``, the ``grid`` of blocks it scrambles)."""
    L = num_positions(block_size, channels)
    tables = min(8 * PASSWORD_BYTES, log2_injections())
    bits: dict[str, float] = {}
    if "shuffle" in ops:
        bits["perm"] = log2_factorial(L)
    if "negpos" in ops:
        bits["np_mask"] = float(L)
    if "ffx" in ops:
        bits["ffx_mask"] = float(L)
        bits["ffx_table"] = tables
    if "scramble" in ops:
        if grid is None:
            raise ConfigError("the key space of a chain with 'scramble' depends on the grid of blocks: give grid=")
        rows, columns = check_grid(grid)
        bits["block_perm"] = log2_factorial(rows * columns)
    # The reference's keys: the seed fixes the permutation, which fixes the one mask (perm > L / 2).
    if "shuffle" in ops:
        reference = min(float(SEED_BITS), log2_factorial(L))
    elif "negpos" in ops or "ffx" in ops:
        reference = min(float(SEED_BITS), math.log2(math.comb(L, L - 1 - L // 2)))
    else:
        reference = 0.0
    return KeySpace(tuple(ops), block_size, channels, L, bits, math.fsum(bits.values()),
                    tables if "ffx" in ops else 0.0, reference)


DEFAULT_CHAINS: tuple[tuple[str, ...], ...] = (("shuffle",), ("negpos",), ("ffx",), ("shuffle", "negpos", "ffx"))


def chain_label(ops: Sequence[str]) -> str:
    return "+".join(TRANSFORM_LABELS.get(op, op) for op in ops) or "plain"


def key_space_table(block_sizes: Iterable[int], channels: int = 3,
                    chains: Iterable[Sequence[str]] = DEFAULT_CHAINS) -> list[str]:
    """Markdown lines: one row per (chain, M), log2 sizes of each part and in all."""
    rows = []
    for ops in chains:
        for m in block_sizes:
            s = key_space(ops, m, channels)
            rows.append([chain_label(ops), m, s.positions, _bits(s.bits.get("perm")), _bits(s.bits.get("np_mask")),
                         _bits(s.bits.get("ffx_mask")), _bits(s.bits.get("ffx_table")), f"**{s.total_bits:.1f}**",
                         f"{s.reference_bits:.1f}"])
    return markdown_table(["chain", "M", "L", "perm (log2 L!)", "NP mask", "FFX mask", "FFX tables",
                           "generate() keys, log2", "from_seed() keys, log2"], rows)


def _bits(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"
