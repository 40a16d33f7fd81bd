"""An independent numpy reference of the block transforms, written from semantics.md §1-4 in the
reference's own formulation: segment the image into blocks, index the block vectors, integrate
the blocks back. float32 throughout, as the reference.

Block scrambling permutes the blocks of an image: with the B = (H/M) * (W/M) blocks numbered
row-major, output block j is input block ``block_perm[j]`` (``scramble``; ``unscramble`` undoes
it). ``block_lut`` and ``block_affine`` are the raw ops of csrc/schemas.h, written from their
definitions (block scrambling included), for tests of the ops on random tables and parameters."""
from __future__ import annotations

import numpy as np

F32 = np.float32


def segment(x: np.ndarray, M: int) -> np.ndarray:
    """[N, C, H, W] -> [N, H/M, W/M, L] with l = ((y % M) * M + x % M) * C + c."""
    N, C, H, W = x.shape
    b = x.reshape(N, C, H // M, M, W // M, M)
    return b.transpose(0, 2, 4, 3, 5, 1).reshape(N, H // M, W // M, M * M * C)


def integrate(b: np.ndarray, M: int, C: int) -> np.ndarray:
    N, bh, bw, _ = b.shape
    x = b.reshape(N, bh, bw, M, M, C).transpose(0, 5, 1, 3, 2, 4)
    return x.reshape(N, C, bh * M, bw * M)


def scramble(b, block_perm):
    """[N, H/M, W/M, L] blocks -> the same with block j (row-major) taken from block block_perm[j]."""
    N, bh, bw, L = b.shape
    return b.reshape(N, bh * bw, L)[:, np.asarray(block_perm)].reshape(N, bh, bw, L)


def unscramble(b, block_perm):
    N, bh, bw, L = b.shape
    out = np.empty_like(b).reshape(N, bh * bw, L)
    out[:, np.asarray(block_perm)] = b.reshape(N, bh * bw, L)
    return out.reshape(N, bh, bw, L)


def shuffle(b, perm):
    return b[..., perm]


def unshuffle(b, perm):
    out = np.empty_like(b)
    out[..., perm] = b
    return out


def negpos(b, mask):
    return np.where(mask, F32(1) - b, b).astype(F32)


def ffx(b, mask, lut, rounding="floor"):
    t = F32(255) * np.clip(b, F32(0), F32(1))
    q = (np.floor(t) if rounding == "floor" else np.round(t)).astype(np.int64)
    v = np.where(mask, lut[q], q)
    return (v.astype(F32) / F32(lut.max())).astype(F32)


def unffx(b, mask, lut):
    q = np.clip(np.round(b * F32(lut.max())), 0, lut.max()).astype(np.int64)
    inverse = np.full(lut.max() + 1, 0, dtype=np.int64)
    inverse[lut] = np.arange(256)
    p = np.where(mask, inverse[q], np.minimum(q, 255))
    return (p.astype(F32) / F32(255)).astype(F32)


def normalize(x, mean, std):
    C = x.shape[1]
    m = np.asarray(mean, F32).reshape(1, C, 1, 1)
    s = np.asarray(std, F32).reshape(1, C, 1, 1)
    return ((x - m) / s).astype(F32)


def transform(x: np.ndarray, keys, ops, *, rounding="floor", mean=None, std=None, block_perm=None) -> np.ndarray:
    """The chain ``ops`` on float32 images in [0, 1] (uint8 images are divided by 255 first);
    ``"scramble"`` permutes the blocks by ``block_perm`` (int [B]; by default the key's)."""
    if x.dtype == np.uint8:
        x = x.astype(F32) / F32(255)
    M, C = keys.block_size, keys.channels
    b = segment(x.astype(F32), M)
    perm, np_mask, ffx_mask = keys.perm.numpy(), keys.np_mask.numpy(), keys.ffx_mask.numpy()
    lut = keys.ffx_lut.numpy()
    for op in ops:
        if op == "shuffle":
            b = shuffle(b, perm)
        elif op == "negpos":
            b = negpos(b, np_mask)
        elif op == "ffx":
            b = ffx(b, ffx_mask, lut, rounding)
        elif op == "scramble":
            b = scramble(b, _block_perm(keys, block_perm))
    out = integrate(b, M, C)
    return out if mean is None else normalize(out, mean, std)


def inverse(y: np.ndarray, keys, ops, *, block_perm=None) -> np.ndarray:
    M, C = keys.block_size, keys.channels
    b = segment(y.astype(F32), M)
    for op in reversed(ops):
        if op == "shuffle":
            b = unshuffle(b, keys.perm.numpy())
        elif op == "negpos":
            b = negpos(b, keys.np_mask.numpy())
        elif op == "ffx":
            b = unffx(b, keys.ffx_mask.numpy(), keys.ffx_lut.numpy())
        elif op == "scramble":
            b = unscramble(b, _block_perm(keys, block_perm))
    return integrate(b, M, C)


def _block_perm(keys, block_perm):
    return keys.block_perm.numpy() if block_perm is None else np.asarray(block_perm)


# ---------------------------------------------------------------------------------------------
# The raw ops (csrc/schemas.h), on numpy arrays: x [N, C, H, W]; key tensors with a leading key
# dimension K, picked per image by key_index (None: K = 1).

def _gathered(x, src, M, key_index, block_src):
    """x[block_src[k, b], src[k, l]] as [N, H/M, W/M, L] blocks, and each image's key."""
    b = segment(x, M)
    N, bh, bw, L = b.shape
    keys = np.zeros(N, dtype=np.int64) if key_index is None else np.asarray(key_index)
    out = np.empty_like(b)
    for n in range(N):
        k = keys[n]
        blocks = b[n:n + 1] if block_src is None else scramble(b[n:n + 1], block_src[k])
        out[n] = blocks[0][..., src[k]]
    return out, keys


def block_lut(x, src, table_id, tables, M, qscale=255.0, rounding="floor", key_index=None, block_src=None):
    """out[b, l] = tables[table_id[l], level(x[block_src[b], src[l]])]: level is the byte of uint8
    images, else rounding(x * qscale) in float32 (float64 for float64 images) clamped to the
    table width, NaN read as 0."""
    v, keys = _gathered(x, src, M, key_index, block_src)
    if x.dtype == np.uint8:
        level = v.astype(np.int64)
    else:
        math = np.float64 if x.dtype == np.float64 else F32
        t = v.astype(math) * math(qscale)
        t = np.floor(t) if rounding == "floor" else np.round(t)
        level = np.clip(np.nan_to_num(t, nan=0.0), 0, tables.shape[1] - 1).astype(np.int64)
    rows = np.asarray(table_id)[keys][:, None, None, :]
    return integrate(tables[rows, level], M, x.shape[1])


def block_affine(x, src, params, M, key_index=None, block_src=None):
    """out[b, l] = (scale[l] * x[block_src[b], src[l]] + bias[l] - sub[l]) / div[l], in float32
    (float64 for float64 images), params rounded to that type first."""
    math = np.float64 if x.dtype == np.float64 else F32
    v, keys = _gathered(x.astype(math), src, M, key_index, block_src)
    scale, bias, sub, div = (np.asarray(params)[keys][:, j, None, None, :].astype(math) for j in range(4))
    return integrate((scale * v + bias - sub) / div, M, x.shape[1])
