"""Data kept on the CPU (image folders larger than the GPU), fed at memory speed.

:class:`StreamLoader` runs a map-style dataset of ``(uint8 image [C, H, W], label)`` samples in
``torch.utils.data.DataLoader`` workers: each worker decodes its batch, applies the key transform
(or none) and writes the result straight into one slot of a ring of shared-memory buffers, which
the main process has pinned (page-locked) when the device is a GPU; only the slot number and the
labels travel back through the DataLoader's queue. The main process then copies each batch to
the device asynchronously (a side CUDA stream, one batch ahead), so the copy overlaps the
training step::

    train = ImageFolderStream("imagenet", "train", size=224)
    loader = StreamLoader(train, 256, transform=BlockTransform(keys, mean=..., std=...),
                          device="cuda", num_workers=8, shuffle=True, ranks=Ranks.current())
    for x, y in loader:      # x: the transformed batch, already on the GPU
        ...

It follows the engine's loader protocol: ``len()``, ``set_epoch(e)`` (the order, and a dataset's
own ``set_epoch``, depend on (seed, epoch) alone), and with ``ranks`` each rank's share of the
global batch (the order and padding of :mod:`kpfast.data.loader`, the same as DeviceLoader's).

:class:`TransformCollate` is the collate function alone, for a DataLoader of your own: it stacks
the samples and applies the transform (writing into ``out`` when given one).

Ring size: a DataLoader keeps ``prefetch_factor * num_workers`` batches in flight and asks for one
more each time it hands one out; with two slots more than that, taking batch i lets a worker
rewrite the slot of batch i - 2 only, whose copy to the device the loader has waited for. A batch
on the CPU device (the ring slot itself) is valid until the next batch is asked for; clone it to
keep it longer.
"""
from __future__ import annotations

import inspect
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..engine.device import resolve_device
from ..engine.ranks import Ranks
from ..errors import ConfigError, DataError, KpfastError
from .loader import check_shardable, epoch_generator, global_batches, num_batches, rank_share

Sample = tuple[torch.Tensor, int]


def writes_into(transform: nn.Module) -> bool:
    """Whether `transform` can write its output into a given buffer (``forward(x, out=...)``)."""
    try:
        return "out" in inspect.signature(transform.forward).parameters
    except (TypeError, ValueError):
        return False


class TransformCollate:
    """Collate ``(uint8 image [C, H, W], label)`` samples into ``(transform(images), labels)``.

    Without a transform the batch stays uint8. With `out` (a buffer of the output's shape and
    dtype, e.g. a slot of a pinned ring), the batch is written there: directly by a transform
    that takes ``out=`` (BlockTransform), else by a copy of its result. The stacked uint8 batch
    that the transform reads then lives in a buffer this collate keeps for the next batch (in
    each worker its own), whose pages are already there: a fresh 9.6 MB batch of 64 ImageNet
    crops page-faults every time (about 6 % of this collate's CPU time, measured with
    benchmarks/pipeline_table.py).
    """

    def __init__(self, transform: nn.Module | None = None) -> None:
        if transform is not None:
            for t in (*transform.parameters(), *transform.buffers()):
                if t.device.type != "cpu":
                    raise ConfigError(f"the DataLoader's transform must live on the CPU (its workers run it there); "
                                      f"it holds a tensor on {t.device}")
        self.transform = transform
        self.direct = transform is not None and writes_into(transform)
        self._stacked: torch.Tensor | None = None  # the kept uint8 batch buffer (never pickled)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_stacked": None}  # a worker started by spawn makes its own

    def __call__(self, samples: Sequence[Sample], out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.tensor([label for _, label in samples], dtype=torch.int64)
        images = [image for image, _ in samples]
        if self.transform is None:
            return torch.stack(images, out=out), labels
        with torch.no_grad():
            if out is None:  # the result may be the stacked batch itself (an identity): a fresh one
                return self.transform(torch.stack(images)), labels
            batch = self._stack(images)
            if self.direct:
                self.transform(batch, out=out)
            else:
                out.copy_(self.transform(batch))
        return out, labels

    def _stack(self, images: list[torch.Tensor]) -> torch.Tensor:
        """The images stacked into the kept buffer (made anew for another image shape or dtype,
        or for a larger batch; a smaller last batch uses its first rows)."""
        first = images[0]
        kept = self._stacked
        if kept is None or kept.shape[1:] != first.shape or kept.dtype != first.dtype or len(kept) < len(images):
            kept = self._stacked = torch.empty((len(images), *first.shape), dtype=first.dtype)
        return torch.stack(images, out=kept[:len(images)])

    def output_like(self, sample: Sample) -> torch.Tensor:
        """One output image of this collate (its shape and dtype), from one sample."""
        try:
            return self([sample])[0][0]
        except (RuntimeError, ValueError, TypeError) as e:
            raise ConfigError(f"the transform cannot run on the CPU images of the DataLoader workers: "
                              f"{str(e).splitlines()[0]}") from None


@dataclass(frozen=True)
class _Request:
    """What one DataLoader task is: batch `number` of `epoch`, the dataset indices of this rank."""

    epoch: int
    number: int
    indices: list[int]


class _Requests:
    """The batch sampler: this rank's share of every global batch of an epoch, in order."""

    def __init__(self, n: int, batch_size: int, shuffle: bool, drop_last: bool, seed: int, ranks: Ranks) -> None:
        self.n, self.batch_size, self.shuffle, self.drop_last = n, batch_size, shuffle, drop_last
        self.seed, self.ranks, self.epoch = seed, ranks, 0

    def __len__(self) -> int:
        return num_batches(self.n, self.batch_size, self.drop_last)

    def __iter__(self) -> Iterator[_Request]:
        return self._requests(self.epoch)  # the epoch is taken now, when the DataLoader starts iterating

    def _requests(self, epoch: int) -> Iterator[_Request]:
        order = torch.randperm(self.n, generator=epoch_generator(self.seed, epoch)) if self.shuffle else torch.arange(self.n)
        for number, idx in enumerate(global_batches(order, self.batch_size, self.drop_last, self.ranks)):
            yield _Request(epoch, number, idx[rank_share(len(idx), self.ranks)].tolist())


class _Tasks(torch.utils.data.Dataset):
    """The dataset as DataLoader tasks: a request in, its samples out (in a worker)."""

    def __init__(self, dataset: torch.utils.data.Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitems__(self, request: _Request) -> tuple[_Request, list[Sample] | KpfastError]:
        try:
            if hasattr(self.dataset, "set_epoch"):
                self.dataset.set_epoch(request.epoch)
            return request, [self.dataset[i] for i in request.indices]
        except KpfastError as e:  # a bad image: raised as it is in the main process, not as a traceback
            return request, e


class _RingWriter:
    """The collate_fn the workers run: the request's batch into its ring slot."""

    def __init__(self, collate: TransformCollate, ring: torch.Tensor) -> None:
        self.collate, self.ring = collate, ring

    def __call__(self, task: tuple[_Request, list[Sample] | KpfastError]) -> tuple[int, int, torch.Tensor | KpfastError]:
        request, samples = task
        if isinstance(samples, KpfastError):
            return -1, 0, samples
        slot = request.number % len(self.ring)
        try:
            _, labels = self.collate(samples, out=self.ring[slot, :len(samples)])
        except RuntimeError as e:  # e.g. an image of another size than the others
            return -1, 0, DataError(f"cannot collate batch {request.number} of epoch {request.epoch}: {e}")
        return slot, len(samples), labels


def _pin(owner: object, ring: torch.Tensor) -> None:
    """Page-lock the shared ring for asynchronous copies (CUDA registers the existing pages),
    until `owner` is gone."""
    size = ring.numel() * ring.element_size()
    status = torch.cuda.cudart().cudaHostRegister(ring.data_ptr(), size, 0)
    if int(status) != 0:
        raise DataError(f"cannot pin {size / 2**20:.0f} MiB of host memory for the loader's buffers (CUDA error "
                        f"{int(status)}); use fewer workers, a smaller prefetch_factor or a smaller batch")
    weakref.finalize(owner, _unpin, ring)  # holds the ring until it is unregistered


def _unpin(ring: torch.Tensor) -> None:
    torch.cuda.cudart().cudaHostUnregister(ring.data_ptr())


class StreamLoader:
    """Batches of `dataset` decoded and transformed in DataLoader workers, on `device`.

    Args:
        dataset: map-style, ``dataset[i] -> (uint8 image [C, H, W], label)``, all images of one
            shape (e.g. :class:`~kpfast.data.image_stream.ImageFolderStream`); a ``set_epoch``
            method, if it has one, is called in the workers with each batch's epoch.
        batch_size: the global batch (all ranks together).
        transform: applied in the workers, on the CPU (a BlockTransform, Normalize, ...); None
            leaves the batch uint8 (the transform then runs on the device, as in kpfast train).
        device: where batches are delivered; CUDA gets pinned buffers and asynchronous copies.
        num_workers, prefetch_factor: of the DataLoader (0 workers: in this process).
        shuffle, drop_last, seed: the epoch's order (see :mod:`kpfast.data.loader`).
        ranks: yield this rank's share of each global batch (``Ranks.current()`` for training in a
            distributed job; default: the whole batch).
    """

    def __init__(self, dataset: torch.utils.data.Dataset, batch_size: int, *, transform: nn.Module | None = None,
                 device: str | torch.device = "cpu", num_workers: int = 4, prefetch_factor: int = 2,
                 shuffle: bool = True, drop_last: bool = False, seed: int = 0, ranks: Ranks | None = None,
                 multiprocessing_context: str | None = None) -> None:
        self.ranks = ranks or Ranks()
        self.local_batch_size = check_shardable(batch_size, self.ranks)
        if len(dataset) == 0:  # type: ignore[arg-type]
            raise DataError("the data set is empty")
        if num_workers < 0 or prefetch_factor < 1:
            raise ConfigError(f"num_workers must be >= 0 and prefetch_factor >= 1, got {num_workers}, {prefetch_factor}")
        self.dataset, self.batch_size, self.device = dataset, batch_size, resolve_device(device)
        self.collate = TransformCollate(transform)
        self.requests = _Requests(len(dataset), batch_size, shuffle, drop_last, seed, self.ranks)  # type: ignore[arg-type]
        self.num_workers, self.prefetch_factor = num_workers, prefetch_factor
        self.multiprocessing_context = multiprocessing_context
        self.seed = seed
        self._loader: torch.utils.data.DataLoader | None = None
        self.ring: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.requests)

    def set_epoch(self, epoch: int) -> None:
        """Make the next `iter()` yield epoch `epoch` (then epoch + 1, ...)."""
        self.requests.epoch = epoch

    def _start(self) -> torch.utils.data.DataLoader:
        """The ring (sized by a first sample) and the DataLoader, made once: persistent workers
        inherit the ring when they start."""
        if self._loader is None:
            example = self.collate.output_like(self.dataset[0])
            in_flight = self.prefetch_factor * self.num_workers if self.num_workers else 1
            self.ring = torch.empty((in_flight + 2, self.local_batch_size, *example.shape), dtype=example.dtype)
            self.ring.share_memory_()
            if self.device.type == "cuda":
                _pin(self, self.ring)
            extra: dict[str, Any] = {}
            if self.num_workers:
                extra = dict(prefetch_factor=self.prefetch_factor, persistent_workers=True,
                             multiprocessing_context=self.multiprocessing_context)
            self._loader = torch.utils.data.DataLoader(
                _Tasks(self.dataset), batch_sampler=self.requests, collate_fn=_RingWriter(self.collate, self.ring),
                num_workers=self.num_workers, **extra)
        return self._loader

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        tasks = iter(self._start())  # the sampler takes this epoch now
        self.requests.epoch += 1  # advance now, as DeviceLoader does
        return self._batches(tasks)

    def _batches(self, tasks: Iterator[tuple[int, int, Any]]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        assert self.ring is not None
        copy = _DeviceCopy(self.device)
        ahead = None
        for slot, n, labels in tasks:  # taking batch i lets a worker rewrite the slot of batch i - 2
            if isinstance(labels, KpfastError):
                raise labels
            batch = copy.start(self.ring[slot, :n], labels)
            if ahead is not None:
                yield copy.finish(ahead)
                copy.wait(ahead)  # batch i - 1 left its slot before batch i + 1 is taken
            ahead = batch
        if ahead is not None:
            yield copy.finish(ahead)


class _DeviceCopy:
    """Host-to-device copies one batch ahead: on a side CUDA stream from the pinned ring, each
    finished before its ring slot can be rewritten; on the CPU, the ring slot itself."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    def start(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, Any]:
        if self.stream is None:
            return x, y, None
        with torch.cuda.stream(self.stream):
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            done = torch.cuda.Event()
            done.record(self.stream)
        return x, y, done

    def finish(self, batch: tuple[torch.Tensor, torch.Tensor, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        x, y, done = batch
        if done is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(done)
            x.record_stream(current)  # the caching allocator keeps the memory until the step is done with it
            y.record_stream(current)
        return x, y

    def wait(self, batch: tuple[torch.Tensor, torch.Tensor, Any]) -> None:
        """Block until `batch` has left its ring slot (its copy is done)."""
        if batch[2] is not None:
            batch[2].synchronize()
