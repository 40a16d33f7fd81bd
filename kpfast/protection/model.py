"""`ProtectedModel`: a classifier that only works behind its secret-key input transform.

The saved file holds the model weights, the transform's public config and the key's fingerprint,
never the key itself: whoever loads it must bring the key separately. A digest binds the config
to the fingerprint, so an edited file (another chain, a key-free type) is refused at load instead
of silently serving a model that ignores its key. Like the key file's checksum, the digest
detects edits and corruption; it is not a signature.

File format (version 2), a dict written with ``torch.save``::

    {"format": "kpfast-protected-model", "version": 2,
     "arch": "resnet18", "num_classes": 10, "in_channels": 3, "state_dict": {...},
     "transform": {"type": "block" | "normalize", ...},   # the transform's config()
     "key_fingerprint": "..." | None,                        # None: a plain (key-free) model
     "binding": "<sha256 over transform and key_fingerprint>"}
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import nn

from ..engine import checkpoint as ckpt
from ..errors import CheckpointError, ConfigError, KeyMismatchError
from ..models import create_model, model_name
from ..normalize import Normalize

CHECKPOINT_FORMAT = "kpfast-protected-model"
CHECKPOINT_VERSION = 2
_BINDING_DOMAIN = b"kpfast protected-model binding v2\0"


class KeyMismatchWarning(UserWarning):
    """Like KeyMismatchError, when the caller chose to proceed anyway (on_mismatch="warn")."""


# --- transform registry: config["type"] -> class with from_config(config, keys) -----------


def _block_transform() -> type:
    from ..transforms import BlockTransform

    return BlockTransform


_TRANSFORMS: dict[str, Callable[[], type]] = {
    "normalize": lambda: Normalize,
    "block": _block_transform,
}


def transform_from_config(config: dict[str, Any], keys: Any = None) -> nn.Module:
    """Rebuild an input transform from its `config()` (and keys, for keyed types)."""
    kind = config.get("type") if isinstance(config, dict) else None
    if kind not in _TRANSFORMS:
        raise CheckpointError(f"unknown transform type {kind!r}; known types: {', '.join(sorted(_TRANSFORMS))}")
    return _TRANSFORMS[kind]().from_config(config, keys)


def binding(config: dict[str, Any], fingerprint: str | None) -> str:
    """The digest that ties a transform config to the key fingerprint it was saved with."""
    text = json.dumps({"transform": config, "key_fingerprint": fingerprint}, sort_keys=True,
                      separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(_BINDING_DOMAIN + text.encode("ascii")).hexdigest()


def check_fingerprint(
    expected: str | None, keys: Any, *, on_mismatch: Literal["error", "warn"] = "error", what: str = "model"
) -> None:
    """Compare the key a `what` was made with (by fingerprint) against `keys` (a KeySet, a list
    of KeySets, or None).

    A missing key for a keyed `what` is always an error; a wrong key raises KeyMismatchError,
    or only warns with on_mismatch="warn" (e.g. to measure what a wrong key does).
    """
    if on_mismatch not in ("error", "warn"):
        raise ConfigError(f"on_mismatch must be 'error' or 'warn', got {on_mismatch!r}")
    if keys is None:
        if expected is not None:
            raise KeyMismatchError(
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
            raise ConfigError(
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
            raise ConfigError("the model shares tensors with the transform; refusing to save key material")
        config, fingerprint = self.transform.config(), self.transform.fingerprint()
        return {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "arch": model_name(self.model),
            "num_classes": self.model.num_classes,
            "in_channels": self.model.in_channels,
            "state_dict": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "transform": config,
            "key_fingerprint": fingerprint,
            "binding": binding(config, fingerprint),
        }

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the checkpoint atomically (an existing file is replaced only on success)."""
        checkpoint = self.checkpoint()
        if checkpoint["transform"].get("type") not in _TRANSFORMS:
            raise ConfigError(
                f"transform config type {checkpoint['transform'].get('type')!r} is not loadable; "
                f"known types: {', '.join(sorted(_TRANSFORMS))}"
            )
        ckpt.write(path, checkpoint)

    @classmethod
    def read(cls, path: str | os.PathLike[str], *, mmap: bool = False) -> dict[str, Any]:
        """The checked contents of a saved model (format, version, fields, digest), without
        building it; `mmap` leaves the weights on disk (a cheap look at the fingerprint)."""
        path = os.fspath(path)
        data = ckpt.read(path, what="model checkpoint", mmap=mmap)
        if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"{path} is not a kpfast protected-model checkpoint")
        if data.get("version") != CHECKPOINT_VERSION:
            older = " (an older kpfast wrote it without a settings digest: train it again)" \
                if data.get("version") == 1 else ""
            raise CheckpointError(f"{path}: unsupported checkpoint version {data.get('version')!r} "
                                  f"(this kpfast reads version {CHECKPOINT_VERSION}){older}")
        missing = [k for k in ("arch", "num_classes", "in_channels", "state_dict", "transform",
                               "key_fingerprint", "binding") if k not in data]
        if missing:
            raise CheckpointError(f"{path} is damaged: it has no {', '.join(missing)} entry")
        if data["binding"] != binding(data["transform"], data["key_fingerprint"]):
            raise CheckpointError(f"{path}: the transform settings or the key fingerprint were edited or damaged "
                                  "(they do not match the digest saved with them); refusing to load it")
        if not isinstance(data["transform"], dict) or data["transform"].get("type") not in _TRANSFORMS:
            raise CheckpointError(f"{path}: unknown transform type {data['transform'].get('type')!r}; "
                                  f"known types: {', '.join(sorted(_TRANSFORMS))}")
        return data

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

        Raises KeyMismatchError if the model is keyed and `keys` is None, or if `keys` has
        another fingerprint (with on_mismatch="warn": a KeyMismatchWarning, and the model is
        built with the given keys anyway); CheckpointError for a file that is not a saved model,
        is damaged or was edited.
        """
        data = cls.read(path)
        check_fingerprint(data["key_fingerprint"], keys, on_mismatch=on_mismatch)
        model = create_model(data["arch"], data["num_classes"], data["in_channels"])
        try:
            model.load_state_dict(data["state_dict"])
        except RuntimeError as e:
            raise CheckpointError(f"{os.fspath(path)}: its weights do not fit a {data['arch']}: {e}") from None
        transform = transform_from_config(data["transform"], keys)
        return cls(model, transform).to(map_location).eval()
