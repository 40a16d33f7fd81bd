"""The one checkpoint format of every kpfast training run, and clear errors for every file that
is not one.

A checkpoint is a dict written with ``torch.save`` (atomically: a crash or a full disk leaves the
previous checkpoint in place) and read with ``torch.load(weights_only=True)``::

    {"format": "kpfast-checkpoint", "version": 1,
     "type": "classifier" | "i2p-net" | "i2p-gan" | ...,  # what the state dicts belong to
     "run": {...},          # what defines the run (settings, epochs, key fingerprint): must match on resume
     "epoch": 3, "epochs": 10, "step": 1173,   # epochs completed, planned, optimizer steps taken
     "history": [{...}, ...],                  # one row of metrics per completed epoch
     "best": {"epoch", "value", "state"} | None,   # with select="best": the best epoch's modules
     "state": {name: state_dict},              # models, optimizers, schedulers
     "rng": {"torch", "cuda", "data"},         # RNG states, so a resumed run ends bit-identical
     "world_size": 2,                          # ranks of the run that saved it (1 outside torchrun)
     "rng_ranks": [{"torch", "cuda", "data"}, ...]}   # every rank's RNG states ("rng" is rank 0's)

"step" counts global optimizer steps (every rank takes each one), so a checkpoint continues on any
number of ranks; the last two entries are absent from checkpoints of earlier releases.

It never holds key material: a keyed run identifies its key by ``run["key_fingerprint"]``.
"""
from __future__ import annotations

import os
import pickle
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_write
from ..errors import CheckpointError, KeyMismatchError

FORMAT = "kpfast-checkpoint"
VERSION = 1


def read(path: str | os.PathLike[str], *, what: str = "checkpoint", mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, or one CheckpointError naming the file
    and the cause for anything that is not a readable torch file (missing, empty, truncated, a
    pickle with code in it, text, a folder, ...)."""
    path = os.fspath(path)
    try:
        with warnings.catch_warnings():  # a foreign pickle's protocol warning would precede our error
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except FileNotFoundError:
        raise CheckpointError(f"{what} not found: {path}") from None
    except OSError as e:
        raise CheckpointError(f"cannot read {what} {path}: {e.strerror or e}") from None
    except Exception as e:  # torch.load reports a bad file in many ways (EOFError, KeyError, RuntimeError, ...)
        raise CheckpointError(f"{path} is not a readable {what}: {_why_unreadable(path, e)}") from None


def _why_unreadable(path: str, error: Exception) -> str:
    if os.path.getsize(path) == 0:
        return "the file is empty"
    with open(path, "rb") as f:
        if f.read(4) != b"PK\x03\x04":  # torch.save writes a zip archive
            return "not a file written by torch.save"
    if isinstance(error, pickle.UnpicklingError):  # weights_only refused it: loading it would run code
        return ("it holds Python objects other than tensors and plain data, which kpfast does not load "
                "(they could run code)")
    return f"damaged ({type(error).__name__}: {(str(error).splitlines() or ['unreadable'])[0][:160]})"


def write(path: str | os.PathLike[str], data: Any) -> None:
    """``torch.save(data)`` to `path` atomically (folders created as needed)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: torch.save(data, f))


def load(path: str | os.PathLike[str], kind: str) -> dict[str, Any]:
    """A checkpoint of type `kind`, after checking it is one (format, version, type)."""
    data = read(path)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{os.fspath(path)} is not a kpfast training checkpoint (written by another program "
                              "or an older kpfast); delete it to start over")
    if data.get("version") != VERSION:
        raise CheckpointError(f"{os.fspath(path)}: unsupported checkpoint version {data.get('version')!r} "
                              f"(this kpfast reads version {VERSION})")
    if data.get("type") != kind:
        raise CheckpointError(f"{os.fspath(path)} is a {data.get('type')!r} checkpoint, not a {kind!r} one: "
                              "another kind of run wrote it")
    return data


def check_run(path: str | os.PathLike[str], saved: Mapping[str, Any], current: Mapping[str, Any]) -> None:
    """Refuse to resume a run whose definition changed: another key (KeyMismatchError) or other
    settings (CheckpointError listing each change)."""
    expected, actual = saved.get("key_fingerprint"), current.get("key_fingerprint")
    if expected != actual:
        raise KeyMismatchError(f"cannot resume {os.fspath(path)}: it was trained with key fingerprint {expected}, "
                               f"but the transform's key has fingerprint {actual}")
    changes = run_changes(saved, current)
    if changes:
        raise CheckpointError(f"cannot resume {os.fspath(path)}: the run's settings changed ({', '.join(changes)}); "
                              "use the same settings, or another output folder to start a new run")


def run_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """What differs between two run definitions, one "name: old -> new" per changed setting."""
    changes = []
    for name in dict.fromkeys([*old, *new]):
        a, b = old.get(name), new.get(name)
        if isinstance(a, Mapping) and isinstance(b, Mapping):  # settings: name each changed entry
            changes += [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in dict.fromkeys([*a, *b]) if a.get(k) != b.get(k)]
        elif a != b:
            changes.append(f"{name}: {a!r} -> {b!r}")
    return changes
