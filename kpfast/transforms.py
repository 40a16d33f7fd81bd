"""The block transforms as ``nn.Module``s (kornia / torchvision.transforms.v2 style).

Every transform takes NCHW (or CHW) uint8 images or float images in [0, 1] and has ``forward``
and ``inverse``. uint8 input takes the fused table path (one read, one write per element) and
gives ``dtype`` output; float input keeps its dtype. Keys live in non-persistent buffers: they
follow ``.to(device)`` and never appear in a ``state_dict`` or a ``repr``.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from .compiled import CompiledChain
from .keys import KeySet
from .plan import ROUNDINGS, TRANSFORMS, chain_steps

OUTPUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)

KeysLike = KeySet | Sequence[KeySet]


def _as_key_list(keys: KeysLike) -> list[KeySet]:
    key_list = [keys] if isinstance(keys, KeySet) else list(keys)
    if not key_list or not all(isinstance(k, KeySet) for k in key_list):
        raise TypeError("keys must be a KeySet or a non-empty sequence of KeySets")
    first = key_list[0]
    for k in key_list[1:]:
        if (k.block_size, k.channels) != (first.block_size, first.channels):
            raise ValueError("all key sets must have the same block size and channel count, got "
                             f"{(first.block_size, first.channels)} and {(k.block_size, k.channels)}")
    return key_list


def _check_normalization(mean, std, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]] | tuple[None, None]:
    if mean is None and std is None:
        return None, None
    if mean is None or std is None:
        raise ValueError("give both mean and std for Normalize, or neither")
    mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
    if len(mean) != channels or len(std) != channels:
        raise ValueError(f"mean and std need {channels} values (one per channel), got {len(mean)} and {len(std)}")
    if any(not s > 0 for s in std):
        raise ValueError(f"std must be positive, got {std}")
    return mean, std


class BlockTransform(nn.Module):
    """A chain of block transforms under one key set (or one of several, per image).

    Args:
        keys: a :class:`KeySet`, or a sequence of key sets; with several, ``forward`` takes a
            ``key_index`` tensor saying which key set each image uses (many keys, one launch).
        ops: the transforms in the order they are applied: any of ``"shuffle"``, ``"negpos"``,
            ``"ffx"``.
        mean, std: Normalize of the destination channel, folded into the same pass.
        dtype: output dtype for uint8 input.
        rounding: how FFX quantises float input: ``"floor"`` (the reference) or ``"nearest"``
            (right for images that went through normalize/denormalize).
        straight_through: give FFX a straight-through gradient (the gradient of the pixel
            shuffle alone), for attacks; FFX is otherwise not differentiable.
    """

    def __init__(self, keys: KeysLike, ops: Sequence[str] = TRANSFORMS, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, dtype: torch.dtype = torch.float32,
                 rounding: str = "floor", straight_through: bool = False):
        super().__init__()
        key_list = _as_key_list(keys)
        ops = tuple(ops)
        for name in ops:
            if name not in TRANSFORMS:
                raise ValueError(f"unknown transform {name!r}; expected some of {TRANSFORMS}")
        if rounding not in ROUNDINGS:
            raise ValueError(f"rounding must be one of {ROUNDINGS}, got {rounding!r}")
        if dtype not in OUTPUT_DTYPES:
            raise ValueError(f"dtype must be one of {OUTPUT_DTYPES}, got {dtype}")
        first = key_list[0]
        self.ops, self.dtype, self.rounding = ops, dtype, rounding
        self.block_size, self.channels, self.num_keys = first.block_size, first.channels, len(key_list)
        self.mean, self.std = _check_normalization(mean, std, first.channels)
        self._fingerprints = tuple(k.fingerprint() for k in key_list)

        def chain(inverse: bool, integer_input: bool) -> CompiledChain:
            steps = [chain_steps(k, ops, inverse=inverse, rounding=rounding, mean=self.mean, std=self.std)
                     for k in key_list]
            return CompiledChain(key_list, steps, integer_input, straight_through)

        self._forward_int, self._forward_float = chain(False, True), chain(False, False)
        # Inverse FFX quantises with max(lut), one scale per launch: keys must share it.
        self._invertible = "ffx" not in ops or len({k.ffx_max for k in key_list}) == 1
        if self._invertible:
            self._inverse_int, self._inverse_float = chain(True, True), chain(True, False)

    def forward(self, x: torch.Tensor, key_index: torch.Tensor | None = None) -> torch.Tensor:
        """Protect images: uint8 or float in [0, 1], NCHW or CHW."""
        return self._run(self._forward_int, self._forward_float, x, key_index)

    def inverse(self, y: torch.Tensor, key_index: torch.Tensor | None = None) -> torch.Tensor:
        """Undo ``forward`` (Normalize included): returns float images in [0, 1]."""
        if not self._invertible:
            raise ValueError("these key sets have FFX tables of different maxima and cannot be "
                             "inverted in one call; invert with one BlockTransform per key set")
        return self._run(self._inverse_int, self._inverse_float, y, key_index)

    def _run(self, integer_chain: CompiledChain, float_chain: CompiledChain, x: torch.Tensor,
               key_index: torch.Tensor | None) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"expected a tensor of images, got {type(x).__name__}")
        single = x.dim() == 3
        if single:
            x = x.unsqueeze(0)
        self._check_input(x, key_index)
        chain = integer_chain if x.dtype == torch.uint8 else float_chain
        out = chain(x, key_index, self.dtype)
        return out.squeeze(0) if single else out

    def _check_input(self, x: torch.Tensor, key_index: torch.Tensor | None) -> None:
        if x.dtype != torch.uint8 and not x.dtype.is_floating_point:
            raise TypeError(f"images must be uint8 or floating point, got {x.dtype}")
        if x.dim() != 4:
            raise ValueError(f"expected images of shape [N, C, H, W] or [C, H, W], got {tuple(x.shape)}")
        if x.shape[1] != self.channels:
            raise ValueError(f"images have {x.shape[1]} channels but the key was made for {self.channels}")
        M = self.block_size
        if x.shape[2] % M or x.shape[3] % M:
            raise ValueError(f"image size {tuple(x.shape[2:])} is not divisible by the block size {M}")
        device = self._forward_int.calls[0].src.device
        if x.device != device:
            raise ValueError(f"images are on {x.device} but the transform is on {device}; "
                             f"call .to({str(x.device)!r}) on the transform")
        if key_index is None and self.num_keys > 1:
            raise ValueError(f"this transform holds {self.num_keys} key sets: pass key_index "
                             "(one key number per image)")

    def fingerprint(self) -> str:
        """The key's fingerprint (of all keys, joined, when there are several); never the key."""
        return "+".join(self._fingerprints)

    def config(self) -> dict[str, Any]:
        """Everything but the key, to rebuild the transform with :meth:`from_config`."""
        return {"type": "block", "ops": list(self.ops), "block_size": self.block_size,
                "channels": self.channels, "mean": self.mean, "std": self.std,
                "dtype": str(self.dtype).removeprefix("torch."), "rounding": self.rounding}

    @classmethod
    def from_config(cls, config: dict[str, Any], keys: KeysLike) -> BlockTransform:
        key_list = _as_key_list(keys)
        k = key_list[0]
        if (k.block_size, k.channels) != (config["block_size"], config["channels"]):
            raise ValueError(f"the key is for {k.block_size}x{k.block_size} blocks with {k.channels} channels, "
                             f"the transform for {config['block_size']}x{config['block_size']} with "
                             f"{config['channels']}")
        return cls(key_list, config["ops"], config["mean"], config["std"], getattr(torch, config["dtype"]),
                   config["rounding"])

    def __repr__(self) -> str:  # the compiled chains are an implementation detail
        return f"{type(self).__name__}({self.extra_repr()})"

    def extra_repr(self) -> str:
        norm = "" if self.mean is None else f", mean={self.mean}, std={self.std}"
        return (f"ops={self.ops}, block_size={self.block_size}, channels={self.channels}{norm}, "
                f"dtype={self.dtype}, keys={self.fingerprint()}")


class Shuffle(BlockTransform):
    """Block-wise pixel shuffling: ``out[l] = in[perm[l]]`` in every block."""

    def __init__(self, keys: KeysLike, dtype: torch.dtype = torch.float32):
        super().__init__(keys, ("shuffle",), dtype=dtype)


class NegPos(BlockTransform):
    """Negative/positive transform: ``1 - x`` (``255 - p`` on bytes) at the key's positions."""

    def __init__(self, keys: KeysLike, dtype: torch.dtype = torch.float32):
        super().__init__(keys, ("negpos",), dtype=dtype)


class FFX(BlockTransform):
    """Format-preserving (FFX) encryption of the pixel values at the key's positions."""

    def __init__(self, keys: KeysLike, rounding: str = "floor", dtype: torch.dtype = torch.float32,
                 straight_through: bool = False):
        super().__init__(keys, ("ffx",), dtype=dtype, rounding=rounding, straight_through=straight_through)
