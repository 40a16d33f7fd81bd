"""Attack 5, known-plaintext key recovery.

Threat model: the attacker holds the protected model file (weights and the public chain config,
not the key) and P pairs of a plain image and the same image protected with the model's key, as
the model is fed it (the transform's output, its Normalize included; the statistics are public
in the model file). Every block of every image is transformed with the same key
(docs/semantics.md §1), so a 32x32 pair at M = 4 already gives 64 equations per position.

What the pairs determine, step by step:

1. **FFX scale.** Every output is ``code / max(ffx_lut)``: the smallest scale in 255..999 under
   which every observed value is exactly such a fraction (then normalised) is ``max(ffx_lut)``.
2. **Permutation.** A chain is ``out[l] = f_l(p[src[l]])`` per block (§5), with ``src`` the
   shuffle's permutation. Position l can read from source s only if, over all blocks, equal
   bytes at s always go with equal outputs at l and back (f_l is a function, and one-to-one
   except where float rounding merges two levels); where a value map without FFX (identity or
   NP) gives the outputs at l exactly from the bytes at s, only such sources remain. Candidates
   are narrowed by propagation (a source taken by a determined position is no one else's); what
   stays ambiguous is filled by a random one-to-one matching among the candidates.
3. **Per position.** The hypotheses "NP or not" x "FFX or not" are tested against the observed
   (byte, output) pairs with the float32 arithmetic of §4: a hypothesis without FFX predicts
   every output exactly; with FFX it reads off table entries ``ffx_lut[level] = code``, which must
   form one injective table shared by all FFX positions. NP before FFX at an FFX position is
   only determined through that shared table (a negated level with one table looks like the
   plain level with another).
4. **The recovered key**: ``KeySet.from_tables`` of the determined parts, undetermined mask bits
   drawn at random, table entries never observed filled with random unused codes (keeping the
   observed maximum). Its accuracy on the test set says what the pairs are worth.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from ...errors import ConfigError, DataError
from ...keys import KeySet
from .scoring import FFX_CODES, StolenModel, check_images, random_table, used_agreement

MIN_FFX_MAX = 255  # 256 distinct codes: the largest is at least 255
# The recovery below matches each protected block with the plain block at the same location.
SCRAMBLE_NOT_COVERED = ("known plaintext covers chains of in-block transforms: with 'scramble' a protected block "
                        "comes from a secret other location, which this attack does not search")


def covers(ops: Sequence[str]) -> bool:
    """Whether this attack applies to the chain ``ops`` (not to block scrambling)."""
    return "scramble" not in ops


@dataclass
class KnownPlaintextResult:
    pairs: int
    blocks: int  # equations per position: pairs x blocks per image
    determined: dict[str, float]  # per key part the chain uses: the fraction the pairs determine
    key_determined: float  # mean of `determined` over those parts
    perm_candidates: float | None  # mean number of candidate sources per position (shuffle chains)
    ffx_max_found: int | None  # the FFX scale read off the pairs
    reproduces_pairs: float  # fraction of the protected values the recovered key reproduces exactly
    test_accuracy: float  # the model with the recovered key
    test_images: int
    agreement: dict[str, float] | None = None  # recovered vs true key (evaluation mode)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def to_blocks(images: torch.Tensor, block_size: int) -> torch.Tensor:
    """[N, C, H, W] -> [N * blocks, L]: each row one block vector in the order of §1."""
    n, c, h, w = images.shape
    m = block_size
    return images.reshape(n, c, h // m, m, w // m, m).permute(0, 2, 4, 3, 5, 1).reshape(-1, m * m * c)


def known_plaintext(stolen: StolenModel, plain: torch.Tensor, protected: torch.Tensor, test_x: torch.Tensor,
                    test_y: torch.Tensor, *, seed: int = 0, true_key: KeySet | None = None) -> KnownPlaintextResult:
    """Recover what ``P`` (plain uint8, protected float) image pairs determine of the model's key.

    Args:
        plain: uint8 [P, C, H, W].
        protected: the model's input for them: its transform with the secret key applied to ``plain``.
        test_x, test_y: where the recovered key is scored.
        seed: draws what the pairs leave open.
        true_key: evaluation mode only: the model's key, to report the agreement.
    """
    if plain.dtype != torch.uint8:
        raise DataError(f"plain images must be uint8, got {plain.dtype}")
    if protected.shape != plain.shape or not protected.is_floating_point():
        raise DataError(f"protected images must be float images of the plain images' shape {tuple(plain.shape)}, "
                        f"got {protected.dtype} {tuple(protected.shape)}")
    if len(plain) == 0:
        raise DataError("known plaintext needs at least one pair")
    if not covers(stolen.ops):
        raise ConfigError(SCRAMBLE_NOT_COVERED)
    check_images(stolen, plain, what="pairs")
    stolen.check_key(true_key, "true key")
    rng = np.random.default_rng(seed)
    ops, L, C = stolen.ops, stolen.num_positions, stolen.channels
    p = to_blocks(plain.cpu(), stolen.block_size).long()
    o = to_blocks(protected.detach().cpu().float(), stolen.block_size)
    mean, std = _statistics(stolen.config, C)
    values = _ValueModel(ops, stolen.config.get("rounding", "floor"), mean, std)

    ffx_max = values.find_scale(o) if "ffx" in ops else None
    if "shuffle" in ops:
        candidates = permutation_candidates(p, o, values.exact_fits(p, o, ffx_max))
        src, perm_determined = resolve_permutation(candidates, rng)
        perm_candidates = float(candidates.sum(1).double().mean())
    else:
        src, perm_determined, perm_candidates = torch.arange(L), None, None
    source = p[:, src]  # the byte each output position reads
    fit = values.fit(source, o, ffx_max)

    # Mask bits live at the destination position after a shuffle, at the source before one.
    order = {op: i for i, op in enumerate(ops)}

    def mask_index(op: str) -> torch.Tensor:
        return src if "shuffle" in ops and order["shuffle"] > order[op] else torch.arange(L)

    determined: dict[str, float] = {}
    if perm_determined is not None:
        determined["perm"] = float(perm_determined.double().mean())
    np_mask = torch.from_numpy(rng.random(L) < 0.5)
    ffx_mask = torch.from_numpy(rng.random(L) < 0.5)
    if "negpos" in ops:
        idx = mask_index("negpos")
        np_mask[idx[fit.np_known]] = fit.np_bit[fit.np_known]
        determined["np_mask"] = float(fit.np_known.double().mean())
    if "ffx" in ops:
        idx = mask_index("ffx")
        ffx_mask[idx[fit.fx_known]] = fit.fx_bit[fit.fx_known]
        determined["ffx_mask"] = float(fit.fx_known.double().mean())
        determined["ffx_lut"] = len(fit.table) / 256
        lut = _fill_table(fit.table, ffx_max, rng)
    else:
        lut = random_table(rng)
    perm = src if "shuffle" in ops else torch.arange(L)
    recovered = KeySet.from_tables(perm, np_mask, ffx_mask, lut, block_size=stolen.block_size, channels=C)

    with torch.inference_mode():
        again = stolen.transform(recovered)(plain.to(stolen.device)).cpu()
    reproduces = float((again == protected.cpu()).double().mean())
    test = float(stolen.accuracy([recovered], test_x, test_y)[0])
    notes = [] if fit.conflicts == 0 else [f"{fit.conflicts} positions fit no hypothesis (a wrong source?)"]
    return KnownPlaintextResult(
        pairs=len(plain), blocks=len(p), determined=determined,
        key_determined=float(np.mean(list(determined.values()))) if determined else 1.0,
        perm_candidates=perm_candidates, ffx_max_found=ffx_max, reproduces_pairs=reproduces, test_accuracy=test,
        test_images=len(test_y), agreement=used_agreement(recovered, true_key, ops), notes=notes)


def known_plaintext_sweep(stolen: StolenModel, plain: torch.Tensor, protected: torch.Tensor, test_x: torch.Tensor,
                          test_y: torch.Tensor, *, pairs: Sequence[int] = (1, 2, 4, 8), seed: int = 0,
                          true_key: KeySet | None = None) -> list[KnownPlaintextResult]:
    """:func:`known_plaintext` with the first P pairs, for each P in ``pairs``."""
    if not pairs or any(not isinstance(n, int) or n < 1 for n in pairs):
        raise ConfigError(f"pairs must be counts >= 1, got {list(pairs)!r}")
    if max(pairs) > len(plain):
        raise DataError(f"{max(pairs)} pairs asked for, but only {len(plain)} images given")
    return [known_plaintext(stolen, plain[:n], protected[:n], test_x, test_y, seed=seed, true_key=true_key)
            for n in pairs]


# --- step 1: the permutation ----------------------------------------------------------------------


def _distinct(values: torch.Tensor) -> torch.Tensor:
    """Distinct values along the last dimension."""
    ordered = values.sort(-1).values
    return 1 + (ordered[..., 1:] != ordered[..., :-1]).sum(-1)


def permutation_candidates(p: torch.Tensor, o: torch.Tensor, exact: torch.Tensor | None = None) -> torch.Tensor:
    """bool [L, L]: ``[l, s]`` when output position l can read from source position s.

    A candidate keeps "equal bytes at s <=> equal outputs at l" over all blocks (checked as equal
    distinct counts); a position that no source passes both ways keeps those that pass one way.
    Where ``exact`` (from :meth:`_ValueModel.exact_fits`) marks sources whose bytes give the
    outputs exactly under a known value map, a position keeps only those."""
    B, L = p.shape
    rank = torch.stack([torch.unique(o[:, l], return_inverse=True)[1] for l in range(L)])  # [L, B]
    distinct_p = _distinct(p.T)  # [L] per source
    distinct_o = _distinct(rank)  # [L] per output
    forward = torch.empty(L, L, dtype=torch.bool)
    both = torch.empty(L, L, dtype=torch.bool)
    step = max(1, (1 << 24) // max(1, B * L))  # output positions per chunk: bounds the [B, l, s] codes
    for start in range(0, L, step):
        pairs = _distinct(p.T.unsqueeze(0) * B + rank[start:start + step].unsqueeze(1))  # [l, s]
        forward[start:start + step] = pairs == distinct_p
        both[start:start + step] = forward[start:start + step] & (pairs == distinct_o[start:start + step, None])
    candidates = torch.where(both.any(1, keepdim=True), both,
                             torch.where(forward.any(1, keepdim=True), forward, torch.ones_like(forward)))
    if exact is not None:
        exact = exact & forward
        candidates = torch.where(exact.any(1, keepdim=True), exact, candidates)
    return candidates


def resolve_permutation(candidates: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A permutation consistent with ``candidates`` and which of its positions are determined.

    Propagates until nothing changes: a position with one candidate takes it from every other
    position, a source that only one position can read goes to it. The rest is a random
    perfect matching among the remaining candidates (augmenting paths), or random where none exists."""
    cand = candidates.clone()
    while True:
        before = cand.sum()
        single = cand.sum(1) == 1
        taken = cand[single].any(0)
        cand &= ~taken | single.unsqueeze(1)
        only = cand.sum(0) == 1  # sources that one position alone can read
        rows = cand[:, only].any(1)
        cand[rows] &= only
        if cand.sum() == before:
            break
    determined = cand.sum(1) == 1
    L = len(cand)
    options = [list(rng.permutation(np.flatnonzero(cand[l].numpy()))) for l in range(L)]
    owner = [-1] * L  # source -> position

    def augment(l: int, seen: set[int]) -> bool:
        for s in options[l]:
            if s not in seen:
                seen.add(s)
                if owner[s] < 0 or augment(owner[s], seen):
                    owner[s] = l
                    return True
        return False

    for l in rng.permutation(L).tolist():
        augment(l, set())
    src = torch.full((L,), -1, dtype=torch.int64)
    for s, l in enumerate(owner):
        if l >= 0:
            src[l] = s
    free = [s for s in range(L) if owner[s] < 0]
    rng.shuffle(free)
    src[src < 0] = torch.tensor(free, dtype=torch.int64)
    return src, determined & (src == cand.float().argmax(1))


# --- steps 2 and 3: scale and per-position hypotheses ---------------------------------------------


def _statistics(config: dict[str, Any], channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalize's mean and std per channel (0 and 1 without one), float32."""
    if config.get("mean") is None:
        return torch.zeros(channels), torch.ones(channels)
    return torch.tensor(config["mean"], dtype=torch.float32), torch.tensor(config["std"], dtype=torch.float32)


@dataclass
class _Fit:
    np_bit: torch.Tensor  # bool [L] per output position
    np_known: torch.Tensor
    fx_bit: torch.Tensor
    fx_known: torch.Tensor
    table: dict[int, int]  # observed FFX table entries: level -> code
    conflicts: int


class _ValueModel:
    """The value part of the chain per position, in the float32 arithmetic of docs/semantics.md §4
    (as kpfast.plan computes it): bytes v/255, NP ``1 - x``, FFX ``lut[level(x)] / max``,
    then Normalize of the position's channel."""

    def __init__(self, ops: Sequence[str], rounding: str, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.ops = [op for op in ops if op != "shuffle"]
        self.rounding, self.mean, self.std = rounding, mean, std
        self.np_choices = (False, True) if "negpos" in self.ops else (False,)
        self.np_after_ffx = "ffx" in self.ops and "negpos" in self.ops and \
            self.ops.index("negpos") > self.ops.index("ffx")

    def _normalize(self, x: torch.Tensor, channel: torch.Tensor) -> torch.Tensor:
        return (x - self.mean[channel]) / self.std[channel]

    def level(self, negate: bool) -> torch.Tensor:
        """int64 [256]: the level FFX reads for each byte (after the steps before FFX)."""
        x = torch.arange(256, dtype=torch.float32) / 255
        if negate and not self.np_after_ffx:
            x = 1 - x
        t = x * 255.0
        t = torch.floor(t) if self.rounding == "floor" else torch.round(t)
        return t.clamp(0, 255).long()

    def after(self, codes: torch.Tensor, scale: int | torch.Tensor, negate: bool, channel: torch.Tensor) -> torch.Tensor:
        """The model input for FFX output codes (the steps after FFX, then Normalize)."""
        x = codes.float() / torch.as_tensor(scale, dtype=torch.float32)
        if negate and self.np_after_ffx:
            x = 1 - x
        return self._normalize(x, channel)

    def plain_output(self, negate: bool, scale: int | None, channel: torch.Tensor) -> torch.Tensor:
        """float32 [L, 256]: the model input for every byte at every position, without FFX at it."""
        if "ffx" in self.ops:
            return self.after(self.level(negate).expand(len(channel), 256), scale, negate, channel[:, None])
        x = torch.arange(256, dtype=torch.float32) / 255
        x = (1 - x) if negate else x
        return self._normalize(x.expand(len(channel), 256), channel[:, None])

    def codes(self, o: torch.Tensor, scale: int | torch.Tensor, negate: bool, channel: torch.Tensor) -> torch.Tensor:
        """The FFX code behind each model input (``scale`` broadcasts against ``o``), -1 where no
        code gives the input exactly."""
        r = o.double() * self.std[channel].double() + self.mean[channel].double()
        if negate and self.np_after_ffx:
            r = 1 - r
        scale = torch.as_tensor(scale)
        code = torch.minimum(torch.round(r * scale).clamp(min=0), scale).long()
        return torch.where(self.after(code, scale, negate, channel) == o, code, -1)

    def find_scale(self, o: torch.Tensor) -> int:
        """max(ffx_lut): the smallest scale in 255..999 that explains every observed value (or the
        most of them)."""
        channel = torch.arange(o.shape[1]) % len(self.mean)
        scales = torch.arange(MIN_FFX_MAX, FFX_CODES)
        explained = torch.zeros(len(scales), dtype=torch.int64)
        total = 0
        for c in range(len(self.mean)):
            values = torch.unique(o[:, channel == c])
            total += len(values)
            ch = torch.full((len(values), 1), c, dtype=torch.int64)
            ok = torch.zeros(len(values), len(scales), dtype=torch.bool)
            for negate in (self.np_choices if self.np_after_ffx else (False,)):
                ok |= self.codes(values[:, None], scales[None, :], negate, ch) >= 0
            explained += ok.sum(0)
        full = torch.nonzero(explained == total).flatten()
        return int(scales[full[0] if len(full) else explained.argmax()])

    def exact_fits(self, p: torch.Tensor, o: torch.Tensor, scale: int | None) -> torch.Tensor:
        """bool [L, L]: ``[l, s]`` when the bytes at source s give exactly the outputs at l under a
        hypothesis without FFX at l (the value map is then known, not just a function)."""
        B, L = p.shape
        channel = torch.arange(L) % len(self.mean)
        fits = torch.zeros(L, L, dtype=torch.bool)
        step = max(1, (1 << 24) // max(1, B * L))
        for negate in self.np_choices:
            table = self.plain_output(negate, scale, channel)  # [L, 256]
            for start in range(0, L, step):
                rows = torch.arange(start, min(L, start + step))
                predicted = table[rows][:, p.T]  # [l, s, B]
                fits[rows] |= (predicted == o.T[rows].unsqueeze(1)).all(2)
        return fits

    def fit(self, source: torch.Tensor, o: torch.Tensor, scale: int | None) -> _Fit:
        """Test the hypotheses of every position against its (byte, output) observations."""
        B, L = source.shape
        channel = torch.arange(L) % len(self.mean)
        np_bit = torch.zeros(L, dtype=torch.bool)
        np_known = torch.zeros(L, dtype=torch.bool)
        fx_bit = torch.zeros(L, dtype=torch.bool)
        fx_known = torch.zeros(L, dtype=torch.bool)
        # Without FFX at the position: the output is predicted exactly.
        plain_fits = torch.stack([(self.plain_output(n, scale, channel).gather(1, source.T) == o.T).all(1)
                                  for n in self.np_choices])  # [hypotheses, L]
        # With FFX: the observations give table entries level -> code, one-to-one.
        ffx_options: dict[int, list[tuple[bool, dict[int, int]]]] = {}
        conflicts = 0
        for l in range(L):
            fits = [n for n, ok in zip(self.np_choices, plain_fits[:, l].tolist()) if ok]
            if fits:
                np_bit[l], np_known[l] = fits[0], len(fits) == 1
                fx_known[l] = "ffx" in self.ops
                continue
            if "ffx" not in self.ops:
                conflicts += 1
                continue
            fx_bit[l] = fx_known[l] = True
            options = []
            for n in self.np_choices:
                codes = self.codes(o[:, l], scale, n, channel[l].expand(B))
                if bool((codes < 0).any()):
                    continue
                levels = self.level(n)[source[:, l]].tolist()
                pairs = set(zip(levels, codes.tolist()))
                if len(pairs) == len(set(levels)) == len(set(codes.tolist())):  # a one-to-one table
                    options.append((n, dict(pairs)))
            if not options:
                conflicts += 1
            ffx_options[l] = options
        table, decided = _shared_table(ffx_options)
        for l, (n, known) in decided.items():
            np_bit[l], np_known[l] = n, known
        return _Fit(np_bit, np_known, fx_bit, fx_known, table, conflicts)


def _shared_table(options: dict[int, list[tuple[bool, dict[int, int]]]]
                  ) -> tuple[dict[int, int], dict[int, tuple[bool, bool]]]:
    """Pick one NP hypothesis per FFX position so that all their table entries form one injective
    table. Returns the table and, per position, (NP bit, whether the table forced it)."""
    table: dict[int, int] = {}
    codes: dict[int, int] = {}

    def clash(entries: dict[int, int]) -> bool:
        return any(table.get(q, c) != c or codes.get(c, q) != q for q, c in entries.items())

    def overlap(entries: dict[int, int]) -> int:
        return sum(table.get(q) == c for q, c in entries.items())

    def take(entries: dict[int, int]) -> None:
        for q, c in entries.items():
            table[q], codes[c] = c, q

    decided: dict[int, tuple[bool, bool]] = {l: (False, False) for l, opts in options.items() if not opts}
    undecided = {l: opts for l, opts in options.items() if opts}
    # Positions that one hypothesis fits on its own first, then those the table built so far decides.
    for l in [l for l, opts in undecided.items() if len(opts) == 1]:
        n, entries = undecided.pop(l)[0]
        if not clash(entries):
            take(entries)
        decided[l] = (n, True)
    while undecided:
        chosen = None
        for l, opts in undecided.items():
            fitting = [(n, e) for n, e in opts if not clash(e)]
            if len(fitting) == 1:  # the table rules the other hypothesis out
                chosen = l, fitting[0], True
            elif len(fitting) > 1 and max(overlap(e) for _, e in fitting) > 0:  # the table prefers one
                chosen = l, max(fitting, key=lambda ne: overlap(ne[1])), False
            elif not fitting:
                chosen = l, opts[0], False
            if chosen is not None:
                break
        if chosen is None:  # nothing links the rest to the table: take any first hypothesis
            l = next(iter(undecided))
            chosen = l, undecided[l][0], False
        l, (n, entries), forced = chosen
        del undecided[l]
        if not clash(entries):
            take(entries)
        decided[l] = (n, forced)
    return table, decided


def _fill_table(known: dict[int, int], scale: int, rng: np.random.Generator) -> torch.Tensor:
    """A full injective table: the observed entries, the rest random unused codes of 0..scale, one
    of them ``scale`` itself when it was not observed (so the table's maximum is the scale)."""
    lut = torch.full((256,), -1, dtype=torch.int64)
    for q, c in known.items():
        lut[q] = c
    unknown = torch.nonzero(lut < 0).flatten().numpy()
    if len(unknown):
        unused = np.setdiff1d(np.arange(scale + 1), lut[lut >= 0].numpy())
        fill = list(rng.permutation(unused[unused != scale])[: len(unknown)])
        if scale not in set(known.values()):
            fill[0] = scale
        lut[torch.from_numpy(rng.permutation(unknown))] = torch.tensor(fill, dtype=torch.int64)
    return lut
