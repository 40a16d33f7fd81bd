"""One rank of the small distributed runs of test_distributed.py (and the same run in one process).

    python tests/distributed_worker.py --key FILE [--other-key FILE] JOB [JOB ...]

Each JOB runs in turn in the same process group (one launch pays the start-up of torch once):
``train:OUT`` trains (or resumes) into OUT and writes OUT/weights.pt; ``kill6:OUT`` does the same,
but the last rank kills itself before global step 6; ``mismatch:OUT`` trains with --other-key on
the last rank, ``lr:OUT`` with another learning rate there, and both write each rank's error
message to OUT/rank<r>.error.

The task: a BN-free CNN (BatchNorm statistics are per rank on the CPU, which would make 1 and 2
ranks differ by design) behind a keyed BlockTransform, trained with kpfast.engine.train on a
sharded, augmented DeviceLoader with a checkpoint every epoch. `--kill-at-step N` makes the last
rank kill itself (SIGKILL, no clean-up) when it is about to take global step N.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

import torch
from torch import nn

from kpfast import BlockTransform, KeySet
from kpfast.data import DeviceLoader, ImageSet
from kpfast.engine import train
from kpfast.engine.distributed import process_group
from kpfast.engine.ranks import Ranks
from kpfast.errors import ConfigError, KeyMismatchError

GLOBAL_BATCH = 16
IMAGES = 64  # 4 steps per epoch


def data() -> ImageSet:
    g = torch.Generator().manual_seed(123)
    images = torch.randint(0, 256, (IMAGES, 3, 8, 8), dtype=torch.uint8, generator=g)
    labels = (images.float().mean((1, 2, 3)) > 127.5).long()  # something learnable
    return ImageSet(images, labels, ("dark", "light"))


def model() -> nn.Module:
    torch.manual_seed(7)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(32, 2))


class KillAt:
    """The loader, with this process killing itself before global step `step` (the last rank only)."""

    def __init__(self, loader: DeviceLoader, step: int | None) -> None:
        self.loader, self.step = loader, step
        self.ranks = loader.ranks

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        self.loader.set_epoch(epoch)

    def __iter__(self):
        first = self.loader.epoch * len(self.loader)
        for i, batch in enumerate(self.loader):
            if self.step is not None and self.ranks.rank == self.ranks.world_size - 1 and first + i == self.step:
                os.kill(os.getpid(), signal.SIGKILL)
            yield batch


def run_task(out: Path, key: Path, kill_at_step: int | None = None, deadline=None, epochs: int = 3,
             lr: float = 0.05) -> nn.Module:
    net = model()
    transform = BlockTransform(KeySet.load(key), ("shuffle", "negpos", "ffx"), mean=(0.5,) * 3, std=(0.25,) * 3)
    loader = DeviceLoader(data(), GLOBAL_BATCH, augment=True, padding=2, seed=5, ranks=Ranks.current())
    extra = {"deadline": deadline} if deadline is not None else {}
    train(net, transform, KillAt(loader, kill_at_step), epochs=epochs, lr=lr, device="cpu", checkpoint_dir=out,
          resume=True, seed=3, progress=False, **extra)
    return net


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("jobs", nargs="+")
    p.add_argument("--key", type=Path, required=True)
    p.add_argument("--other-key", type=Path)
    args = p.parse_args(argv)
    with process_group("cpu") as ranks:
        last = ranks.rank == ranks.world_size - 1
        for job in args.jobs:
            kind, _, folder = job.partition(":")
            out = Path(folder)
            if kind in ("mismatch", "lr"):
                try:
                    if kind == "mismatch":
                        run_task(out, args.other_key if last else args.key)
                    else:
                        run_task(out, args.key, lr=0.1 if last else 0.05)
                except (KeyMismatchError, ConfigError) as e:
                    (out / f"rank{ranks.rank}.error").write_text(f"{type(e).__name__}: {e}")
                continue
            net = run_task(out, args.key, kill_at_step=6 if kind == "kill6" else None)
            if ranks.is_main:
                torch.save(net.state_dict(), out / "weights.pt")
    return 0


if __name__ == "__main__":
    code = main(sys.argv[1:])
    # Leave without interpreter teardown: now and then a gloo thread still running at exit made it
    # abort ("terminate called without an active exception", status -6) after the work was done.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
