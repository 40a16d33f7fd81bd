"""One training run, from a small config: the data, its normalisation, the keyed (or plain) input
transform, the model, the loader and the training itself.

`kpfast train` and `kpfast reproduce` both build their runs here, so a cell of the reproduction
grid is exactly what `kpfast train` would do with the same settings.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .data import DeviceLoader, ImageSet, load_dataset
from .evaluate import evaluate_protection, format_markdown
from .keys import KeySet
from .models import create_model
from .normalize import CIFAR10_MEAN, CIFAR10_STD, Normalize
from .plan import TRANSFORMS
from .protected import KeyMismatchError, ProtectedModel, transform_from_config
from .train import TrainResult, evaluate, train
from .transforms import BlockTransform

FASHION_MNIST_MEAN, FASHION_MNIST_STD = (0.2860,), (0.3530,)


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a training run except the key. `ops=()` is a plain model."""

    data: str = "synthetic"  # a name for kpfast.data.load_dataset, or an image folder / zip
    data_root: str | None = None
    model: str = "small_cnn"
    ops: tuple[str, ...] = ()
    block_size: int = 4
    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.05  # default_lr(model) gives each model its own
    label_smoothing: float = 0.1
    seed: int = 0
    device: str = "cpu"
    compile: bool = False
    train_subset: int | None = None  # keep the first N train images, balanced over classes
    test_subset: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (no key material exists here to leak)."""
        d = dataclasses.asdict(self)
        d["ops"] = list(self.ops)
        return d


# --- defaults for the device and model -------------------------------------------------------


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def default_model(device: str) -> str:
    # ResNet-18 is the published setting; on a CPU only the small CNN trains in useful time.
    return "resnet18" if device.startswith("cuda") else "small_cnn"


def default_batch_size(device: str) -> int:
    return 512 if device.startswith("cuda") else 128


def default_lr(model: str) -> float:
    """Peak one-cycle learning rate: the reference's 0.2 for ResNet-18; less for the others,
    which diverge with it (small_cnn: 0.2 lost 60 points on the synthetic set in 3 epochs)."""
    return {"resnet18": 0.2, "resnet20": 0.1}.get(model, 0.05)


def device_name(device: str | torch.device) -> str:
    """A readable name of the machine that ran: the GPU's name, or the CPU model and threads."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"CPU ({cpu}, {torch.get_num_threads()} threads)"


# --- ops ---------------------------------------------------------------------------------


def parse_ops(text: str) -> tuple[str, ...]:
    """'shuffle,negpos,ffx' -> ('shuffle', 'negpos', 'ffx'); 'plain' (or '') -> () for no key."""
    text = text.strip()
    if text in ("", "plain", "none"):
        return ()
    ops = tuple(o.strip() for o in text.split(","))
    bad = [o for o in ops if o not in TRANSFORMS]
    if bad or len(set(ops)) != len(ops):
        raise ValueError(f"ops must be 'plain' or a comma list of {', '.join(TRANSFORMS)}, each at most once; "
                         f"got {text!r}")
    return ops


# --- data --------------------------------------------------------------------------------


def first_per_class(images: ImageSet, n: int) -> ImageSet:
    """The first images of each class, n in all, as balanced as n allows, in the original order.

    Deterministic and without randomness, so a quick run always sees the same images.
    """
    if n < 1:
        raise ValueError(f"a subset needs at least 1 image, got {n}")
    if n >= len(images):
        return images
    k = images.num_classes
    labels = images.labels.cpu()
    # Quotas n // k (+1 for the first n % k classes), capped by what each class has.
    quota = torch.full((k,), n // k, dtype=torch.int64)
    quota[: n % k] += 1
    rank = torch.zeros_like(labels)  # position of each image within its class
    for c in range(k):
        members = labels == c
        rank[members] = torch.arange(int(members.sum()))
    return images.subset(rank < quota[labels])


def load_data(config: RunConfig, progress: bool = True) -> tuple[ImageSet, ImageSet]:
    """(train, test) of the config's data set, cut to its subsets."""
    # Downloads and image decoding show progress; the other loaders are quick and take no flag.
    kwargs: dict[str, Any] = {} if config.data in ("fashion-mnist", "synthetic") else {"progress": progress}
    train_set, test_set = load_dataset(config.data, config.data_root, **kwargs)
    if config.train_subset is not None:
        train_set = first_per_class(train_set, config.train_subset)
    if config.test_subset is not None:
        test_set = first_per_class(test_set, config.test_subset)
    return train_set, test_set


def normalization(data: str, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of the data set (folded into the keyed transform)."""
    if data == "fashion-mnist":
        return FASHION_MNIST_MEAN, FASHION_MNIST_STD
    if data != "synthetic" and channels == 3:  # cifar10 and CIFAR-10 image folders / zips
        return CIFAR10_MEAN, CIFAR10_STD
    return (0.5,) * channels, (0.25,) * channels


def check_block_size(images: ImageSet, block_size: int) -> None:
    h, w = images.images.shape[2:]
    if block_size < 1 or h % block_size or w % block_size:
        raise ValueError(f"block size {block_size} does not divide the {h}x{w} images of this data set")


# --- keys, transform, model --------------------------------------------------------------


def load_or_create_key(path: str | os.PathLike[str], block_size: int, channels: int) -> tuple[KeySet, bool]:
    """The key at `path`, or a fresh one (CSPRNG) saved there owner-only; True if it is new."""
    path = Path(path)
    if path.exists():
        keys = KeySet.load(path)
        if (keys.block_size, keys.channels) != (block_size, channels):
            raise ValueError(f"{path} is a key for {keys.block_size}x{keys.block_size} blocks of {keys.channels} "
                             f"channel(s), but this run needs {block_size}x{block_size} blocks of {channels}")
        return keys, False
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = KeySet.generate(block_size, channels)
    keys.save(path)
    return keys, True


def build_transform(config: RunConfig, keys: KeySet | None, channels: int) -> nn.Module:
    """The keyed BlockTransform (Normalize folded in), or a plain Normalize when ops is empty."""
    mean, std = normalization(config.data, channels)
    if not config.ops:
        if keys is not None:
            raise ValueError("a plain run (no ops) takes no key")
        return Normalize(mean, std)
    if keys is None:
        raise ValueError(f"ops {','.join(config.ops)} need a key")
    return BlockTransform(keys, config.ops, mean, std)


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
              loader: DeviceLoader | None = None, progress: bool = True) -> tuple[ProtectedModel, TrainResult]:
    """Train the config's model behind its transform; returns the ProtectedModel and the history.

    `loader` may be shared between runs on the same data (each run sets its own epochs).
    """
    if config.ops:
        check_block_size(train_set, config.block_size)
    transform = build_transform(config, keys, train_set.images.shape[1])
    model = build_model(config, train_set)
    result = train(model, transform, loader or make_loader(config, train_set), epochs=config.epochs,
                   lr=config.lr, label_smoothing=config.label_smoothing, schedule="onecycle",
                   device=config.device, amp="auto", compile=config.compile, checkpoint_dir=checkpoint_dir,
                   resume=resume, seed=config.seed, progress=progress)
    return ProtectedModel(model, transform).eval(), result


def seconds_per_epoch(seconds: list[float]) -> float:
    """Mean epoch time, leaving out the first epoch when there are more (warm-up, compilation)."""
    steady = seconds[1:] if len(seconds) > 1 else seconds
    return sum(steady) / len(steady)


# --- evaluation ----------------------------------------------------------------------------


def to_device(images: ImageSet, device: str | torch.device) -> ImageSet:
    """The set moved to `device` once, so evaluation batches are views, not copies."""
    return ImageSet(images.images.to(device), images.labels.to(device), images.classes)


def own_key_accuracy(protected: ProtectedModel, test_set: ImageSet, device: str | torch.device,
                     batch_size: int = 500) -> float:
    """Accuracy of the model behind its own transform (the key holder's accuracy)."""
    batches = list(zip(test_set.images.split(batch_size), test_set.labels.split(batch_size)))
    return evaluate(protected.model, protected.transform, batches, device)["accuracy"]


def load_protected(path: str | os.PathLike[str], key_path: str | os.PathLike[str] | None,
                   device: str | torch.device) -> tuple[ProtectedModel, KeySet | None]:
    """A saved ProtectedModel and its key, with errors that say which file to pass or drop."""
    path = os.fspath(path)
    try:  # a cheap look at the fingerprint first (mmap: the weights are not read)
        expected = torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("key_fingerprint")
    except (RuntimeError, pickle.UnpicklingError, EOFError, AttributeError):
        raise ValueError(f"{path} is not a kpfast model checkpoint (not a file written by torch.save)") from None
    keys = KeySet.load(key_path) if key_path is not None else None
    if expected is not None and keys is None:
        raise ValueError(f"{path} is a protected model (key fingerprint {expected}): pass its key with --key FILE")
    if expected is None and keys is not None:
        raise ValueError(f"{path} is a plain model that takes no key: drop --key")
    if keys is not None and keys.fingerprint() != expected:
        raise KeyMismatchError(f"{key_path} is not the key of {path}: the model expects key fingerprint "
                               f"{expected}, the file holds {keys.fingerprint()}")
    return ProtectedModel.load(path, keys, map_location=device), keys


def evaluate_model(protected: ProtectedModel, keys: KeySet | None, test_set: ImageSet, *,
                   wrong_keys: int, device: str | torch.device, batch_size: int = 500) -> dict[str, Any]:
    """`evaluate_protection` for a protected model (correct key, wrong keys, plain images);
    a plain model has no key to get right or wrong, so it is measured on plain images only."""
    if keys is None:
        batches = list(zip(test_set.images.split(batch_size), test_set.labels.split(batch_size)))
        plain = evaluate(protected.model, protected.transform, batches, device)
        return {
            "num_images": len(test_set),
            "chance": 1 / test_set.num_classes,
            "transform": protected.transform.config(),
            "key_fingerprint": None,
            "plain_images": {"accuracy": plain["accuracy"], "loss": plain["loss"],
                             "per_class_accuracy": dict(zip(test_set.classes, plain["per_class_accuracy"]))},
        }
    config = protected.transform.config()
    return evaluate_protection(protected.model, lambda k: transform_from_config(config, k), keys, test_set,
                               wrong_keys=wrong_keys, device=device, batch_size=batch_size)


def results_markdown(results: dict[str, Any]) -> str:
    """`format_markdown` of kpfast.evaluate, or its plain-model counterpart."""
    if results["key_fingerprint"] is not None:
        return format_markdown(results)
    plain = results["plain_images"]
    lines = [f"Plain model (no key), {results['num_images']} test images.", "",
             "| input | accuracy |", "|---|---|",
             f"| plain images | {_pct(plain['accuracy'])} |", f"| chance | {_pct(results['chance'])} |", "",
             "| class | accuracy |", "|---|---|"]
    lines += [f"| {name} | {_pct(acc)} |" for name, acc in plain["per_class_accuracy"].items()]
    return "\n".join(lines) + "\n"


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f} %"
