"""One training run of the model-protection track, from a small config: the data, its
statistics, the keyed (or plain) input transform, the model, the loader and the training itself;
and the evaluation of a saved model.

`kpfast train`, `kpfast eval`, `kpfast reproduce` and the demo all build their runs here, so a
cell of the reproduction grid is exactly what `kpfast train` would do with the same settings.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data import DeviceLoader, ImageSet, load_dataset
from ..data.stats import Stats, dataset_stats
from ..engine.classifier import DEFAULTS, TrainResult, batches, evaluate, train
from ..engine.deadline import Deadline
from ..errors import ConfigError, DataError, KeyMismatchError
from ..keys import KeySet
from ..models import create_model
from ..normalize import Normalize
from ..plan import TRANSFORMS
from ..transforms import BlockTransform
from .evaluate import evaluate_plain, evaluate_protection
from .model import ProtectedModel, transform_from_config


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a training run except the key. `ops=()` is a plain model."""

    data: str = "synthetic"  # a name for kpfast.data.load_dataset, or an image folder / zip
    data_root: str | None = None
    model: str = "small_cnn"
    ops: tuple[str, ...] = ()
    block_size: int = 4
    epochs: int = DEFAULTS.epochs
    batch_size: int = DEFAULTS.batch_size
    lr: float = DEFAULTS.lr  # engine.classifier.default_lr(model) gives each model its own
    label_smoothing: float = DEFAULTS.label_smoothing
    seed: int = 0
    device: str = "cpu"
    compile: bool = False
    train_subset: int | None = None  # ImageSet.first_per_class: the first N, balanced over classes
    test_subset: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (no key material exists here to leak)."""
        d = dataclasses.asdict(self)
        d["ops"] = list(self.ops)
        return d


def parse_ops(text: str) -> tuple[str, ...]:
    """'shuffle,negpos,ffx' -> ('shuffle', 'negpos', 'ffx'); 'plain' (or '') -> () for no key."""
    text = text.strip()
    if text in ("", "plain", "none"):
        return ()
    ops = tuple(o.strip() for o in text.split(","))
    bad = [o for o in ops if o not in TRANSFORMS]
    if bad or len(set(ops)) != len(ops):
        raise ConfigError(f"ops must be 'plain' or a comma list of {', '.join(TRANSFORMS)}, each at most once; "
                          f"got {text!r}")
    return ops


# --- data --------------------------------------------------------------------------------


def load_data(config: RunConfig, progress: bool = True) -> tuple[ImageSet, ImageSet]:
    """(train, test) of the config's data set, cut to its subsets."""
    train_set, test_set = load_dataset(config.data, config.data_root, progress=progress)
    if config.train_subset is not None:
        train_set = train_set.first_per_class(config.train_subset)
    if config.test_subset is not None:
        test_set = test_set.first_per_class(config.test_subset)
    return train_set, test_set


def check_block_size(images: ImageSet, block_size: int) -> None:
    h, w = images.images.shape[2:]
    if block_size < 1 or h % block_size or w % block_size:
        raise DataError(f"block size {block_size} does not divide the {h}x{w} images of this data set")


# --- keys, transform, model --------------------------------------------------------------


def load_or_create_key(path: str | os.PathLike[str], block_size: int, channels: int) -> tuple[KeySet, bool]:
    """The key at `path`, or a fresh one (CSPRNG) saved there owner-only; True if it is new."""
    path = Path(path)
    if path.exists():
        keys = KeySet.load(path)
        if (keys.block_size, keys.channels) != (block_size, channels):
            raise KeyMismatchError(f"{path} is a key for {keys.block_size}x{keys.block_size} blocks of "
                                   f"{keys.channels} channel(s), but this run needs {block_size}x{block_size} "
                                   f"blocks of {channels}")
        return keys, False
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = KeySet.generate(block_size, channels)
    keys.save(path)
    return keys, True


def build_transform(config: RunConfig, keys: KeySet | None, stats: Stats) -> nn.Module:
    """The keyed BlockTransform (Normalize folded in), or a plain Normalize when ops is empty."""
    if not config.ops:
        if keys is not None:
            raise ConfigError("a plain run (no ops) takes no key")
        return Normalize(stats.mean, stats.std)
    if keys is None:
        raise ConfigError(f"ops {','.join(config.ops)} need a key")
    return BlockTransform(keys, config.ops, stats.mean, stats.std)


def build_model(config: RunConfig, train_set: ImageSet) -> nn.Module:
    torch.manual_seed(config.seed)  # the same initial weights for every cell of a grid
    return create_model(config.model, num_classes=train_set.num_classes,
                        in_channels=train_set.images.shape[1])


def make_loader(config: RunConfig, train_set: ImageSet) -> DeviceLoader:
    """Training batches with the reference augmentation, the data resident on the device."""
    return DeviceLoader(train_set, config.batch_size, device=config.device, shuffle=True, augment=True,
                        seed=config.seed)


def train_run(config: RunConfig, train_set: ImageSet, keys: KeySet | None, *,
              checkpoint_dir: str | os.PathLike[str] | None = None, resume: bool = False,
              loader: DeviceLoader | None = None, deadline: Deadline = Deadline(),
              progress: bool = True) -> tuple[ProtectedModel, TrainResult]:
    """Train the config's model behind its transform; returns the ProtectedModel and the history.

    The data set's statistics (`kpfast.data.stats`) are folded into the transform, whose config
    the checkpoint and the saved model record. `loader` may be shared between runs on the same
    data (each run sets its own epochs).
    """
    if config.ops:
        check_block_size(train_set, config.block_size)
    transform = build_transform(config, keys, dataset_stats(config.data, train_set))
    model = build_model(config, train_set)
    result = train(model, transform, loader or make_loader(config, train_set), epochs=config.epochs,
                   lr=config.lr, label_smoothing=config.label_smoothing, device=config.device,
                   compile=config.compile, checkpoint_dir=checkpoint_dir, resume=resume, seed=config.seed,
                   deadline=deadline, progress=progress)
    return ProtectedModel(model, transform).eval(), result


def seconds_per_epoch(seconds: list[float]) -> float:
    """Mean epoch time, leaving out the first epoch when there are more (warm-up, compilation)."""
    steady = seconds[1:] if len(seconds) > 1 else seconds
    return sum(steady) / len(steady)


# --- evaluation ----------------------------------------------------------------------------


def own_key_accuracy(protected: ProtectedModel, test_set: ImageSet, device: str | torch.device,
                     batch_size: int = 500) -> float:
    """Accuracy of the model behind its own transform (the key holder's accuracy)."""
    return evaluate(protected.model, protected.transform, batches(test_set.images, test_set.labels, batch_size),
                    device)["accuracy"]


def load_protected(path: str | os.PathLike[str], key_path: str | os.PathLike[str] | None,
                   device: str | torch.device) -> tuple[ProtectedModel, KeySet | None]:
    """A saved ProtectedModel and its key, with errors that say which file to pass or drop."""
    path = os.fspath(path)
    expected = ProtectedModel.read(path, mmap=True)["key_fingerprint"]  # mmap: the weights are not read
    keys = KeySet.load(key_path) if key_path is not None else None
    if expected is not None and keys is None:
        raise KeyMismatchError(f"{path} is a protected model (key fingerprint {expected}): pass its key with --key FILE")
    if expected is None and keys is not None:
        raise KeyMismatchError(f"{path} is a plain model that takes no key: drop --key")
    if keys is not None and keys.fingerprint() != expected:
        raise KeyMismatchError(f"{key_path} is not the key of {path}: the model expects key fingerprint "
                               f"{expected}, the file holds {keys.fingerprint()}")
    return ProtectedModel.load(path, keys, map_location=device), keys


def evaluate_model(protected: ProtectedModel, keys: KeySet | None, test_set: ImageSet, *,
                   wrong_keys: int, device: str | torch.device, batch_size: int = 500) -> dict[str, Any]:
    """`evaluate_protection` for a protected model (correct key, wrong keys, plain images);
    `evaluate_plain` for a plain one."""
    if keys is None:
        return evaluate_plain(protected.model, protected.transform, test_set, device=device, batch_size=batch_size)
    config = protected.transform.config()
    return evaluate_protection(protected.model, lambda k: transform_from_config(config, k), keys, test_set,
                               wrong_keys=wrong_keys, device=device, batch_size=batch_size)
