"""An independent numpy reference of the block transforms, written from semantics.md §1-4 in the
reference's own formulation: segment the image into blocks, index the block vectors, integrate
the blocks back. float32 throughout, as the reference."""
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


def transform(x: np.ndarray, keys, ops, *, rounding="floor", mean=None, std=None) -> np.ndarray:
    """The chain ``ops`` on float32 images in [0, 1] (uint8 images are divided by 255 first)."""
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
    out = integrate(b, M, C)
    return out if mean is None else normalize(out, mean, std)


def inverse(y: np.ndarray, keys, ops) -> np.ndarray:
    M, C = keys.block_size, keys.channels
    b = segment(y.astype(F32), M)
    for op in reversed(ops):
        if op == "shuffle":
            b = unshuffle(b, keys.perm.numpy())
        elif op == "negpos":
            b = negpos(b, keys.np_mask.numpy())
        elif op == "ffx":
            b = unffx(b, keys.ffx_mask.numpy(), keys.ffx_lut.numpy())
    return integrate(b, M, C)
