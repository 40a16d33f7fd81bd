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
from typing import TYPE_CHECKING, Any, Union

import torch
from torch import nn

from ..data import DATASETS, DeviceLoader, ImageSet, load_dataset
from ..data.pipeline import StreamLoader
from ..data.protected_folder import Manifest, find_manifest
from ..data.stats import IMAGENET, Stats, dataset_stats
from ..engine.classifier import DEFAULTS, TrainResult, batches, evaluate, train
from ..engine.deadline import Deadline
from ..engine.ranks import Ranks
from ..errors import ConfigError, DataError, KeyFileError, KeyMismatchError
from ..keys import KeySet
from ..models import create_model
from ..normalize import Normalize
from ..plan import IN_BLOCK_TRANSFORMS
from ..transforms import BlockTransform
from .evaluate import evaluate_plain, evaluate_protection
from .model import ProtectedModel, transform_from_config

if TYPE_CHECKING:
    from ..data.image_stream import ImageFolderStream

WORKERS = min(8, os.cpu_count() or 1)  # DataLoader workers of a streamed folder


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
    image_size: int | None = None  # stream an image folder of any image sizes, cropped to this (image_stream.py)

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
    bad = [o for o in ops if o not in IN_BLOCK_TRANSFORMS]
    if bad or len(set(ops)) != len(ops):
        raise ConfigError(f"ops must be 'plain' or a comma list of {', '.join(IN_BLOCK_TRANSFORMS)}, each at "
                          f"most once; got {text!r}")
    return ops


# --- data --------------------------------------------------------------------------------


Data = Union[ImageSet, "ImageFolderStream"]  # in memory, or streamed from a folder (config.image_size)


def load_data(config: RunConfig, progress: bool = True) -> tuple[Data, Data]:
    """(train, test) of the config's data set, cut to its subsets; with `image_size`, the image
    folder `data` streamed: train/ with the training crops, val/ (or test/) with the evaluation ones."""
    if config.image_size is not None:
        return _stream_data(config)
    train_set, test_set = load_dataset(config.data, config.data_root, progress=progress)
    if config.train_subset is not None:
        train_set = train_set.first_per_class(config.train_subset)
    if config.test_subset is not None:
        test_set = test_set.first_per_class(config.test_subset)
    return train_set, test_set


def _stream_data(config: RunConfig) -> tuple[Data, Data]:
    from ..data.image_stream import ImageFolderStream

    if config.train_subset is not None or config.test_subset is not None:
        raise ConfigError("subsets are for data sets held in memory; a streamed folder (image size given) is read whole")
    root = Path(config.data).expanduser()
    train_set = ImageFolderStream(root, "train", size=config.image_size, seed=config.seed)
    split = "val" if (root / "val").is_dir() else "test"
    return train_set, ImageFolderStream(root, split, size=config.image_size, train=False, classes=train_set.classes)


def image_shape(data: Data) -> tuple[int, int, int]:
    """(C, H, W) of the images a data set yields."""
    if isinstance(data, ImageSet):
        return tuple(data.images.shape[1:])  # type: ignore[return-value]
    return 3, data.size, data.size


def protected_data(data: str, data_root: str | None = None) -> Manifest | None:
    """The manifest when the data is a folder or zip written by `kpfast encrypt`, else None."""
    return find_manifest(data_root if data == "cifar10-folder" else None if data in DATASETS else data)


def check_ops_fit_data(ops: tuple[str, ...], data: str, data_root: str | None = None) -> None:
    """Protected images are trained on as they are: a second key on top is refused."""
    manifest = protected_data(data, data_root)
    if ops and manifest is not None:
        raise ConfigError(f"{data_root if data == 'cifar10-folder' else data} holds protected images already "
                          f"({manifest.describe()}): train on them with --ops plain")


def data_stats(config: RunConfig, data: Data) -> Stats:
    """The normalisation folded into the transform: for a `kpfast encrypt` folder, the statistics
    its manifest records (of its plain training images: training on it then sees the inputs of
    training with the transform on the fly); ImageNet's for a streamed folder; else the data
    set's own (`kpfast.data.stats.dataset_stats`)."""
    if not isinstance(data, ImageSet):
        return IMAGENET
    manifest = protected_data(config.data, config.data_root)
    return manifest.normalization if manifest is not None else dataset_stats(config.data, data)


def check_block_size(images: Data, block_size: int) -> None:
    h, w = image_shape(images)[1:]
    if block_size < 1 or h % block_size or w % block_size:
        raise DataError(f"block size {block_size} does not divide the {h}x{w} images of this data set")


# --- keys, transform, model --------------------------------------------------------------


def load_or_create_key(path: str | os.PathLike[str], block_size: int, channels: int) -> tuple[KeySet, bool]:
    """The key at `path`, or a fresh one (CSPRNG) saved there owner-only; True if it is new.

    In a distributed job rank 0 makes a missing key, and every rank then reads the file itself
    (the key never crosses the wire; the fit loop compares the ranks' fingerprints).
    """
    path, ranks = Path(path), Ranks.current()

    def create() -> bool:
        if path.exists():
            return False
        path.parent.mkdir(parents=True, exist_ok=True)
        KeySet.generate(block_size, channels).save(path)
        return True

    created = ranks.from_main(create)
    if not path.exists():  # another machine of the job, which has no copy of the key
        raise KeyFileError(f"rank {ranks.rank}: key file {path} not found on this machine; every machine of a "
                           "distributed job needs its own copy of the key file")
    keys = KeySet.load(path)
    if (keys.block_size, keys.channels) != (block_size, channels):
        raise KeyMismatchError(f"{path} is a key for {keys.block_size}x{keys.block_size} blocks of "
                               f"{keys.channels} channel(s), but this run needs {block_size}x{block_size} "
                               f"blocks of {channels}")
    return keys, created


def build_transform(config: RunConfig, keys: KeySet | None, stats: Stats) -> nn.Module:
    """The keyed BlockTransform (Normalize folded in), or a plain Normalize when ops is empty."""
    if not config.ops:
        if keys is not None:
            raise ConfigError("a plain run (no ops) takes no key")
        return Normalize(stats.mean, stats.std)
    if keys is None:
        raise ConfigError(f"ops {','.join(config.ops)} need a key")
    return BlockTransform(keys, config.ops, stats.mean, stats.std)


def build_model(config: RunConfig, train_set: Data) -> nn.Module:
    torch.manual_seed(config.seed)  # the same initial weights for every cell of a grid
    return create_model(config.model, num_classes=train_set.num_classes, in_channels=image_shape(train_set)[0])


def make_loader(config: RunConfig, train_set: Data, workers: int = WORKERS) -> DeviceLoader | StreamLoader:
    """Training batches; in a distributed job each rank's share of the global batch
    `config.batch_size`. Data in memory live on the device, with the reference augmentation (crop
    with padding, flip); a streamed folder is decoded and cropped in `workers` DataLoader workers
    into pinned buffers, copied to the device asynchronously, and transformed there."""
    if isinstance(train_set, ImageSet):
        # Protected images from a `kpfast encrypt` folder are not augmented: a crop that is not
        # block-aligned, or a flip, does not commute with the block transform (it cuts the blocks).
        augment = protected_data(config.data, config.data_root) is None
        return DeviceLoader(train_set, config.batch_size, device=config.device, shuffle=True, augment=augment,
                            seed=config.seed, ranks=Ranks.current())
    return StreamLoader(train_set, config.batch_size, device=config.device, num_workers=workers, shuffle=True,
                        seed=config.seed, ranks=Ranks.current())


def train_run(config: RunConfig, train_set: Data, keys: KeySet | None, *,
              checkpoint_dir: str | os.PathLike[str] | None = None, resume: bool = False,
              loader: DeviceLoader | StreamLoader | None = None, deadline: Deadline = Deadline(),
              progress: bool = True, sync_batchnorm: bool = False, workers: int = WORKERS
              ) -> tuple[ProtectedModel, TrainResult]:
    """Train the config's model behind its transform; returns the ProtectedModel and the history.

    The data set's statistics (`kpfast.data.stats`) are folded into the transform, whose config
    the checkpoint and the saved model record. `loader` may be shared between runs on the same
    data (each run sets its own epochs). Under torchrun the model trains data-parallel
    (`sync_batchnorm`: global BatchNorm statistics, CUDA only; see kpfast.engine.distributed).
    """
    check_ops_fit_data(config.ops, config.data, config.data_root)
    if config.ops:
        check_block_size(train_set, config.block_size)
    transform = build_transform(config, keys, data_stats(config, train_set))
    model = build_model(config, train_set)
    result = train(model, transform, loader or make_loader(config, train_set, workers), epochs=config.epochs,
                   lr=config.lr, label_smoothing=config.label_smoothing, device=config.device,
                   compile=config.compile, checkpoint_dir=checkpoint_dir, resume=resume, seed=config.seed,
                   deadline=deadline, progress=progress, sync_batchnorm=sync_batchnorm)
    return ProtectedModel(model, transform).eval(), result


def seconds_per_epoch(seconds: list[float]) -> float:
    """Mean epoch time, leaving out the first epoch when there are more (warm-up, compilation)."""
    steady = seconds[1:] if len(seconds) > 1 else seconds
    return sum(steady) / len(steady)


# --- evaluation ----------------------------------------------------------------------------


def own_key_accuracy(protected: ProtectedModel, test_set: Data, device: str | torch.device,
                     batch_size: int = 500, workers: int = WORKERS) -> float:
    """Accuracy of the model behind its own transform (the key holder's accuracy)."""
    if isinstance(test_set, ImageSet):
        loader: Any = batches(test_set.images.to(device), test_set.labels.to(device), batch_size)
    else:  # every image, in this process alone
        loader = StreamLoader(test_set, batch_size, device=device, num_workers=workers, shuffle=False)
    return evaluate(protected.model, protected.transform, loader, device)["accuracy"]


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
