"""`ProtectedModel`: a classifier that only works behind its secret-key input transform.

The checkpoint holds the model weights, the transform's public config and the key's
fingerprint, never the key itself: whoever loads it must bring the key separately.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import nn

from .atomic import atomic_write
from .models import create_model, model_name
from .normalize import Normalize

CHECKPOINT_FORMAT = "kpfast-protected-model"
CHECKPOINT_VERSION = 1


class KeyMismatchError(ValueError):
    """The key does not match the one a model (or training run) was made with."""


class KeyMismatchWarning(UserWarning):
    """Like KeyMismatchError, when the caller chose to proceed anyway (on_mismatch="warn")."""


# --- transform registry: config["type"] -> class with from_config(config, keys) -----------


def _block_transform() -> type:
    from . import BlockTransform  # lazy: the keyed transform lives in the compiled part of kpfast

    return BlockTransform


_TRANSFORMS: dict[str, Callable[[], type]] = {
    "normalize": lambda: Normalize,
    "block": _block_transform,
}


def transform_from_config(config: dict[str, Any], keys: Any = None) -> nn.Module:
    """Rebuild an input transform from its `config()` (and keys, for keyed types)."""
    kind = config.get("type")
    if kind not in _TRANSFORMS:
        raise ValueError(f"unknown transform type {kind!r}; known types: {', '.join(sorted(_TRANSFORMS))}")
    return _TRANSFORMS[kind]().from_config(config, keys)


def check_fingerprint(
    expected: str | None, keys: Any, *, on_mismatch: Literal["error", "warn"] = "error", what: str = "model"
) -> None:
    """Compare the key a `what` was made with (by fingerprint) against `keys` (a KeySet, a list
    of KeySets, or None).

    A missing key for a keyed `what` is always an error; a wrong key raises KeyMismatchError,
    or only warns with on_mismatch="warn" (e.g. to measure what a wrong key does).
    """
    if on_mismatch not in ("error", "warn"):
        raise ValueError(f"on_mismatch must be 'error' or 'warn', got {on_mismatch!r}")
    if keys is None:
        if expected is not None:
            raise ValueError(
                f"this {what} needs a secret key (fingerprint {expected}); pass keys=KeySet.load(path)"
            )
        return
    # A list of key sets (one per image group) is identified by the joined fingerprints.
    actual = keys.fingerprint() if hasattr(keys, "fingerprint") else "+".join(k.fingerprint() for k in keys)
    if actual == expected:
        return
    if expected is None:
        message = f"this {what} is key-free but keys (fingerprint {actual}) were given"
    else:
        message = f"wrong key for this {what}: it expects fingerprint {expected}, got {actual}"
    if on_mismatch == "error":
        raise KeyMismatchError(message)
    warnings.warn(message, KeyMismatchWarning, stacklevel=3)


def _tensor_storages(module: nn.Module) -> set[int]:
    tensors = [*module.parameters(), *module.buffers()]
    return {t.untyped_storage().data_ptr() for t in tensors if t.numel() > 0}


class ProtectedModel(nn.Module):
    """`model(transform(x))` for uint8 images or float images in [0,1], both [B,C,H,W].

    `model` must come from `kpfast.models.create_model` (so it can be rebuilt by name);
    `transform` is a key transform (e.g. `kpfast.BlockTransform`) or a key-free `Normalize`.
    """

    def __init__(self, model: nn.Module, transform: nn.Module) -> None:
        super().__init__()
        # Checked here, not at save time, so a bad pair fails where it is made.
        model_name(model)
        if transform.state_dict():
            raise ValueError(
                f"{type(transform).__name__} keeps tensors in its state_dict "
                f"({', '.join(transform.state_dict())}); key material must not be saved with "
                "model weights: register such buffers with persistent=False"
            )
        self.model = model
        self.transform = transform

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.transform(x))

    @property
    def key_fingerprint(self) -> str | None:
        return self.transform.fingerprint()

    def checkpoint(self) -> dict[str, Any]:
        """The dict that `save` writes: weights, transform config, key fingerprint; no key."""
        if _tensor_storages(self.model) & _tensor_storages(self.transform):
            raise ValueError("the model shares tensors with the transform; refusing to save key material")
        return {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "arch": model_name(self.model),
            "num_classes": self.model.num_classes,
            "in_channels": self.model.in_channels,
            "state_dict": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "transform": self.transform.config(),
            "key_fingerprint": self.transform.fingerprint(),
        }

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the checkpoint atomically (an existing file is replaced only on success)."""
        checkpoint = self.checkpoint()
        if checkpoint["transform"].get("type") not in _TRANSFORMS:
            raise ValueError(
                f"transform config type {checkpoint['transform'].get('type')!r} is not loadable; "
                f"known types: {', '.join(sorted(_TRANSFORMS))}"
            )
        atomic_write(path, lambda f: torch.save(checkpoint, f))

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        keys: Any = None,
        *,
        on_mismatch: Literal["error", "warn"] = "error",
        map_location: str | torch.device = "cpu",
    ) -> ProtectedModel:
        """Rebuild a saved model (in eval mode, on `map_location`) with `keys` (a KeySet).

        Raises ValueError if the model is keyed and `keys` is None, and KeyMismatchError if
        `keys` has another fingerprint (with on_mismatch="warn": a KeyMismatchWarning, and the
        model is built with the given keys anyway).
        """
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
        if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{os.fspath(path)} is not a kpfast protected-model checkpoint")
        if checkpoint.get("version") != CHECKPOINT_VERSION:
            raise ValueError(
                f"{os.fspath(path)}: unsupported checkpoint version {checkpoint.get('version')!r} "
                f"(this kpfast reads version {CHECKPOINT_VERSION})"
            )
        check_fingerprint(checkpoint["key_fingerprint"], keys, on_mismatch=on_mismatch)
        model = create_model(checkpoint["arch"], checkpoint["num_classes"], checkpoint["in_channels"])
        model.load_state_dict(checkpoint["state_dict"])
        transform = transform_from_config(checkpoint["transform"], keys)
        return cls(model, transform).to(map_location).eval()
