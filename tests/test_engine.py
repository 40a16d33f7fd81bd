"""The one fit loop (kpfast.engine.fit): a state dict of several models and optimizers (a GAN is a
step with two), the tagged checkpoint and its clear errors, a full disk, Ctrl-C, the deadline,
best-validation selection, save cadence and rank awareness."""
import argparse
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import kpfast.atomic
from kpfast.engine import Deadline, Ranks, device_name, fit, resolve_device
from kpfast.engine import checkpoint as ckpt
from kpfast.errors import CheckpointError, DeviceError, DiskFullError, Interrupted, TimeLimitReached
from standins import FullDisk

pytestmark = pytest.mark.usefixtures("one_thread")


class Batches:
    """A loader with the set_epoch protocol: epoch e's batches depend on (seed, e) alone."""

    def __init__(self, n=64, batch=16, seed=0):
        self.n, self.batch, self.seed, self.epoch = n, batch, seed, 0

    def __len__(self):
        return self.n // self.batch

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(1000 * self.seed + self.epoch)
        self.epoch += 1
        for _ in range(len(self)):
            yield torch.randn(self.batch, 4, generator=g), torch.randn(self.batch, 1, generator=g)


def two_player_task(seed=0):
    """A tiny GAN-shaped task: two models, two optimizers, one step updating both in turn (with
    dropout, so the global RNG state matters on resume)."""
    torch.manual_seed(seed)
    a = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.2), nn.Linear(8, 1))
    b = nn.Linear(1, 1)
    opt_a, opt_b = torch.optim.Adam(a.parameters(), 1e-2), torch.optim.SGD(b.parameters(), 1e-2, momentum=0.9)

    def step(batch):
        x, y = batch
        loss_b = F.mse_loss(b(a(x).detach()), y)
        opt_b.zero_grad()
        loss_b.backward()
        opt_b.step()
        loss_a = F.mse_loss(b(a(x)), y)
        opt_a.zero_grad()
        loss_a.backward()
        opt_a.step()
        return {"loss_a": loss_a.detach(), "loss_b": loss_b.detach()}

    return step, {"a": a, "b": b, "opt_a": opt_a, "opt_b": opt_b}


class StopAfter:
    """A deadline that passes after `epochs` epochs."""

    def __init__(self, epochs):
        self.calls, self.epochs = 0, epochs

    def check(self, upcoming=0.0, what=""):
        self.calls += 1
        if self.calls > self.epochs:
            raise TimeLimitReached("stop")


def run(path=None, deadline=Deadline(), epochs=4, **kwargs):
    step, state = two_player_task()
    result = fit(step, Batches(), epochs=epochs, state=state, kind="test-gan", checkpoint=path, resume=True,
                 deadline=deadline, progress=False, log=lambda _: None, **kwargs)
    return result, state


def test_two_optimizers_resume_bit_identical_after_a_stop(tmp_path):
    straight, a = run()
    with pytest.raises(TimeLimitReached):
        run(tmp_path / "c.pt", StopAfter(2))
    assert torch.load(tmp_path / "c.pt", weights_only=True)["epoch"] == 2
    resumed, b = run(tmp_path / "c.pt")
    for name in ("a", "b"):
        for (key, x), y in zip(a[name].state_dict().items(), b[name].state_dict().values()):
            assert torch.equal(x, y), (name, key)
    assert [r["loss_a"] for r in resumed.history] == [r["loss_a"] for r in straight.history]


def test_checkpoint_is_tagged_and_holds_every_state(tmp_path):
    run(tmp_path / "c.pt", epochs=1, run={"settings": {"lr": 0.01}})
    data = torch.load(tmp_path / "c.pt", weights_only=True)
    assert (data["format"], data["version"], data["type"]) == ("kpfast-checkpoint", 1, "test-gan")
    assert set(data["state"]) == {"a", "b", "opt_a", "opt_b"}
    assert data["run"] == {"epochs": 1, "settings": {"lr": 0.01}} and data["step"] == len(Batches())
    with pytest.raises(CheckpointError, match="is a 'test-gan' checkpoint, not a 'classifier' one"):
        ckpt.load(tmp_path / "c.pt", "classifier")
    with pytest.raises(CheckpointError, match=r"settings changed \(epochs: 1 -> 2, lr: 0.01 -> 0.02\)"):
        run(tmp_path / "c.pt", epochs=2, run={"settings": {"lr": 0.02}})


@pytest.mark.parametrize("content, cause", [(b"", "the file is empty"),
                                            (b"not a checkpoint", "not a file written by torch.save"),
                                            (None, "it holds Python objects other than tensors"),
                                            ("truncated", r"damaged \(RuntimeError: ")])
def test_unreadable_checkpoint_is_a_clear_error(tmp_path, content, cause):
    if content is None:  # a torch file whose pickle would run code (weights_only refuses it)
        torch.save(argparse.Namespace(epoch=3), tmp_path / "c.pt")
    elif content == "truncated":  # cut short, as by a full disk without atomic writes
        torch.save({"w": torch.zeros(1000)}, tmp_path / "c.pt")
        (tmp_path / "c.pt").write_bytes((tmp_path / "c.pt").read_bytes()[:2000])
    else:
        (tmp_path / "c.pt").write_bytes(content)
    with pytest.raises(CheckpointError, match=f"c.pt is not a readable checkpoint: {cause}"):
        run(tmp_path / "c.pt")
    torch.save({"epoch": 3}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="other.pt is not a kpfast training checkpoint"):
        run(tmp_path / "other.pt")


def test_full_disk_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    with pytest.raises(TimeLimitReached):
        run(tmp_path / "c.pt", StopAfter(1))
    before = (tmp_path / "c.pt").read_bytes()

    monkeypatch.setattr(kpfast.atomic.os, "fdopen", lambda fd, mode: FullDisk(fd))
    with pytest.raises(DiskFullError, match="disk full while writing .*c.pt"):
        run(tmp_path / "c.pt")
    assert (tmp_path / "c.pt").read_bytes() == before and os.listdir(tmp_path) == ["c.pt"]


def test_ctrl_c_says_what_is_kept(tmp_path):
    step, state = two_player_task()
    calls = []

    def interrupted_step(batch):
        calls.append(1)
        if len(calls) == 6:  # in epoch 2
            raise KeyboardInterrupt
        return step(batch)

    with pytest.raises(Interrupted, match=r"interrupted during epoch 2/4; .*c.pt keeps the progress saved so far"):
        fit(interrupted_step, Batches(), epochs=4, state=state, kind="test-gan", checkpoint=tmp_path / "c.pt",
            progress=False, log=lambda _: None)
    assert issubclass(Interrupted, KeyboardInterrupt)  # never swallowed by `except Exception`
    assert torch.load(tmp_path / "c.pt", weights_only=True)["epoch"] == 1


def test_select_best_restores_the_best_epoch(tmp_path):
    step, state = two_player_task()
    losses, snapshots = iter([3.0, 1.0, 2.0]), []

    def validate():
        snapshots.append({k: v.clone() for k, v in state["a"].state_dict().items()})
        return {"val_loss": next(losses)}

    result = fit(step, Batches(), epochs=3, state=state, kind="test-gan", validate=validate, select="best",
                 progress=False, log=lambda _: None)
    assert (result.best_epoch, result.best_value) == (2, 1.0)
    assert all(torch.equal(v, snapshots[1][k]) for k, v in state["a"].state_dict().items())


def test_save_every_seconds_saves_the_last_epoch_only(tmp_path, monkeypatch):
    writes = []
    real = ckpt.write
    monkeypatch.setattr(ckpt, "write", lambda path, data: (writes.append(data["epoch"]), real(path, data)))
    run(tmp_path / "c.pt", epochs=3, save_every=3600)
    assert writes == [3]


def test_only_rank_0_logs_and_writes(tmp_path):
    step, state = two_player_task()
    lines = []
    fit(step, Batches(), epochs=2, state=state, kind="test-gan", checkpoint=tmp_path / "c.pt",
        ranks=Ranks(rank=1, world_size=1), progress=False, log=lines.append)
    assert lines == [] and not (tmp_path / "c.pt").exists()
    assert Ranks.current() == Ranks(0, 1) and Ranks().is_main


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a torch without a usable GPU")
def test_unavailable_device_is_a_clear_error():
    with pytest.raises(DeviceError, match="'cuda' is not available: this torch .* built without CUDA|torch sees no CUDA GPU"):
        resolve_device("cuda")
    with pytest.raises(DeviceError, match="not a device name"):
        resolve_device("gpu0")
    assert resolve_device("cpu") == torch.device("cpu") and device_name("cpu").startswith("CPU (")
