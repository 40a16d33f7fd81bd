"""Data-parallel training on the CPU with gloo, 2 processes: 2 ranks train what 1 rank trains,
resume after a killed rank to the same result, resume on another number of ranks, refuse a rank
with another key before the first step, and `torchrun --nnodes 2 --rdzv-backend c10d` runs two
"nodes" on localhost with rank-0-only output.

The ranks are started as torchrun starts them (env:// with RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT on a free port), one thread each; the two-node test uses torchrun itself.

Tolerance between 1 and 2 ranks: the same global batch gives the same mathematical gradient, but
the ranks sum their halves separately and gloo adds the two partial gradients, so float32 sums
run in another order. Measured after 12 SGD steps: max |w1 - w2| = 3e-8 (weights about 0.2,
per-step changes about 1e-3); the bound, 1e-5, is 300x that and still 100x below one step's
change. Resuming with the same number of ranks is bit-identical (same sums, same order).
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kpfast.data import DeviceLoader, ImageSet
from kpfast.engine import Ranks, train
from kpfast.engine.distributed import launch_env, process_group, rank_device, wrap
from kpfast.errors import ConfigError, DeviceError, KeyMismatchError, TimeLimitReached
from kpfast.keys import KeySet

import distributed_worker as worker
from single_thread import single_thread

pytestmark = pytest.mark.usefixtures("one_thread")

TOLERANCE = 1e-5  # see the module docs
TIMEOUT = 120  # seconds for any launch: a hung collective fails the test instead of CI
WORKER = Path(worker.__file__)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") and not k.startswith("SLURM_")}
    return {**env, "OMP_NUM_THREADS": "1", **extra}


def launch(commands: list[list[str]], folder: Path) -> list[tuple[int, str]]:
    """Run one process per command as the ranks of one job; (exit status, output) of each."""
    port, procs = str(free_port()), []
    for rank, command in enumerate(commands):
        env = clean_env(RANK=str(rank), WORLD_SIZE=str(len(commands)), LOCAL_RANK=str(rank),
                        MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        log = open(folder / f"rank{rank}.log", "w+")
        procs.append((subprocess.Popen([sys.executable, *command], env=env, stdout=log, stderr=subprocess.STDOUT), log))
    results = []
    for proc, log in procs:
        try:
            proc.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            for p, _ in procs:
                p.kill()
            raise
        log.seek(0)
        results.append((proc.returncode, log.read()))
        log.close()
    return results


def launch_worker(root: Path, key: Path, *jobs: str, other_key: Path | None = None) -> list[tuple[int, str]]:
    """The two ranks of distributed_worker.py running `jobs` (kind:folder) in turn."""
    for folder in (root, *(Path(job.partition(":")[2]) for job in jobs)):
        folder.mkdir(parents=True, exist_ok=True)
    extra = ["--other-key", str(other_key)] if other_key is not None else []
    return launch([[str(WORKER), "--key", str(key), *extra, *jobs]] * 2, root)


def weights(path: Path) -> dict[str, torch.Tensor]:
    data = torch.load(path, weights_only=True)
    return data["state"]["model"] if "state" in data else data


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


class StopAfterEpochs:
    def __init__(self, epochs: int) -> None:
        self.calls, self.epochs = 0, epochs

    def check(self, upcoming: float = 0.0, what: str = "") -> None:
        self.calls += 1
        if self.calls > self.epochs:
            raise TimeLimitReached("stop")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The runs the tests below compare, each made once (2 launches of 2 ranks)."""
    with single_thread():
        return make_runs(tmp_path_factory.mktemp("distributed"))


def make_runs(root: Path) -> dict:
    key = root / "k.key"
    KeySet.generate(4).save(key)

    # One rank in this process: stopped after epoch 1 (its checkpoint), then to the end.
    one = root / "one"
    with pytest.raises(TimeLimitReached):
        worker.run_task(one, key, deadline=StopAfterEpochs(1))
    shutil.copy(one / "last.pt", root / "one-epoch1.pt")
    one_final = worker.run_task(one, key).state_dict()

    # Launch 1: the last rank kills itself at global step 6, in epoch 2 of 3 (4 steps each).
    killed = root / "killed"
    killed_results = launch_worker(root / "launch1", key, f"kill6:{killed}")
    shutil.copy(killed / "last.pt", root / "killed-epoch1.pt")
    # Launch 2, one job after the other: continue the killed run; an uninterrupted run; 1 rank's
    # epoch-1 checkpoint continued on 2 ranks; runs where the last rank holds another key, another LR.
    from_one = root / "from-one"
    from_one.mkdir()
    shutil.copy(root / "one-epoch1.pt", from_one / "last.pt")
    other_key = root / "other.key"
    KeySet.generate(4).save(other_key)
    results = launch_worker(root / "launch2", key, f"train:{killed}", f"train:{root / 'two'}", f"train:{from_one}",
                            f"mismatch:{root / 'mismatch'}", f"lr:{root / 'lr'}", other_key=other_key)

    to_one = root / "to-one"  # 2 ranks' epoch-1 checkpoint continued on 1 rank, here
    to_one.mkdir()
    shutil.copy(root / "killed-epoch1.pt", to_one / "last.pt")
    to_one_final = worker.run_task(to_one, key).state_dict()
    return dict(root=root, keys=(key, other_key), one_final=one_final, killed_results=killed_results,
                results=results, to_one_final=to_one_final)


def test_two_ranks_reach_the_weights_of_one_rank(runs):
    root = runs["root"]
    assert [rc for rc, _ in runs["results"]] == [0, 0], runs["results"]
    # From scratch, after epoch 1 (4 steps), then after all 12 steps.
    assert max_difference(weights(root / "one-epoch1.pt"), weights(root / "killed-epoch1.pt")) < TOLERANCE
    assert max_difference(runs["one_final"], weights(root / "two" / "weights.pt")) < TOLERANCE
    saved = torch.load(root / "two" / "last.pt", weights_only=True)
    assert (saved["step"], saved["world_size"], len(saved["rng_ranks"])) == (12, 2, 2)
    # Each rank has its own global RNG stream (rank 0's seed is the single-process one).
    assert not torch.equal(saved["rng_ranks"][0]["torch"], saved["rng_ranks"][1]["torch"])


def test_a_killed_rank_resumes_to_the_uninterrupted_result(runs):
    root = runs["root"]
    (rc0, log0), (rc1, _) = runs["killed_results"]
    assert rc1 == -9 and rc0 != 0 and "Connection" in log0  # rank 0 stopped at the dead peer's collective
    assert torch.load(root / "killed-epoch1.pt", weights_only=True)["epoch"] == 1  # killed mid-epoch 2
    resumed, straight = weights(root / "killed" / "weights.pt"), weights(root / "two" / "weights.pt")
    assert all(torch.equal(resumed[k], straight[k]) for k in straight)  # same ranks: bit-identical


def test_resume_on_another_number_of_ranks(runs):
    root = runs["root"]
    assert max_difference(runs["one_final"], weights(root / "from-one" / "weights.pt")) < TOLERANCE  # 1 -> 2
    assert max_difference(runs["one_final"], runs["to_one_final"]) < TOLERANCE  # 2 -> 1


def test_a_rank_with_another_key_is_refused_before_the_first_step(runs):
    folder = runs["root"] / "mismatch"
    a, b = (KeySet.load(k).fingerprint() for k in runs["keys"])
    for rank in range(2):
        message = (folder / f"rank{rank}.error").read_text()
        assert message.startswith("KeyMismatchError: the ranks of this job hold different keys")
        assert f"rank 0 has key fingerprint {a}, rank 1 has {b}" in message and "same key file" in message
        other = (runs["root"] / "lr" / f"rank{rank}.error").read_text()
        assert other == ("ConfigError: the ranks of this job were started with different settings (rank 0 -> rank 1: "
                         "lr: 0.05 -> 0.1); start every rank with the same command")
    for name in ("mismatch", "lr"):
        assert not (runs["root"] / name / "last.pt").exists()  # no step was taken, nothing was written


TINY = ["-m", "kpfast", "train", "--data", "synthetic", "--train-subset", "64", "--test-subset", "20",
        "--epochs", "1", "--batch-size", "32", "--model", "small_cnn", "--device", "cpu"]


def test_two_nodes_on_localhost_with_torchrun(tmp_path):
    """`torchrun --nnodes 2 --nproc-per-node 1 --rdzv-backend c10d`, once per "node"."""
    key, out = tmp_path / "k.key", tmp_path / "run"
    KeySet.generate(4).save(key)
    endpoint = f"127.0.0.1:{free_port()}"
    procs = []
    for node in range(2):
        log = open(tmp_path / f"node{node}.log", "w+")
        command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
                   "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", "kpfast-test",
                   *TINY, "--out", str(out), "--key", str(key)]
        procs.append((subprocess.Popen(command, env=clean_env(), stdout=log, stderr=subprocess.STDOUT), log))
    logs = []
    for proc, log in procs:
        proc.wait(TIMEOUT)
        log.seek(0)
        logs.append((proc.returncode, log.read()))
    assert [rc for rc, _ in logs] == [0, 0], logs
    # Rank 0 (on either node) speaks for the job, once; the other rank prints nothing of its own.
    text = "".join(log for _, log in logs)
    assert text.count("test accuracy with the correct key") == 1 and text.count("distributed: 2 ranks, global batch 32 "
                                                                                "(16 per rank)") == 1
    summary = json.loads((out / "train.json").read_text())
    assert summary["key_fingerprint"] == KeySet.load(key).fingerprint()
    saved = torch.load(out / "last.pt", weights_only=True)
    assert saved["world_size"] == 2 and saved["step"] == 2  # 64 images / global batch 32


# --- in one process ------------------------------------------------------------------------


def test_each_rank_takes_its_share_of_the_same_global_batch():
    images = ImageSet(torch.randint(0, 256, (50, 3, 8, 8), dtype=torch.uint8), torch.arange(50) % 2, ("a", "b"))
    one = list(DeviceLoader(images, 16, augment=True, seed=4))
    shards = [list(DeviceLoader(images, 16, augment=True, seed=4, ranks=Ranks(r, 2))) for r in range(2)]
    assert len(one) == len(shards[0]) == len(shards[1]) == 4
    for i, ((x, y), (x0, y0), (x1, y1)) in enumerate(zip(one, *shards)):
        if i < 3:  # full batches: the two halves are the single-process batch, augmentation included
            assert torch.equal(torch.cat([x0, x1]), x) and torch.equal(torch.cat([y0, y1]), y)
        else:  # 50 = 3 * 16 + 2: the last batch, split evenly
            assert len(y0) == len(y1) == 1 and torch.equal(torch.cat([y0, y1]), y)
    # 3 ranks: the last batch of 2 is padded with the epoch's first image, so every rank steps
    three = [list(DeviceLoader(images, 15, seed=4, ranks=Ranks(r, 3))) for r in range(3)]
    assert [len(b[-1][1]) for b in three] == [2, 2, 2]  # 50 = 3 * 15 + 5, padded to 6
    first = next(iter(DeviceLoader(images, 15, seed=4)))[0][0]
    assert torch.equal(three[2][-1][0][-1], first)
    # a new epoch: another order, the same on every rank
    again = [DeviceLoader(images, 16, seed=4, ranks=Ranks(r, 2)) for r in range(2)]
    for loader in again:
        loader.set_epoch(1)
    epoch1 = torch.cat([next(iter(loader))[1] for loader in again])
    assert not torch.equal(epoch1, torch.cat([shards[0][0][1], shards[1][0][1]]))


def test_a_global_batch_must_split_evenly_over_the_ranks():
    images = ImageSet(torch.zeros(8, 3, 4, 4, dtype=torch.uint8), torch.zeros(8, dtype=torch.long), ("a",))
    with pytest.raises(ConfigError, match="the batch size 5 is the global batch of all 2 ranks .* multiple of 2"):
        DeviceLoader(images, 5, ranks=Ranks(0, 2))


def test_train_refuses_a_loader_sharded_for_another_job():
    images = ImageSet(torch.zeros(8, 3, 4, 4, dtype=torch.uint8), torch.zeros(8, dtype=torch.long), ("a",))
    loader = DeviceLoader(images, 4, ranks=Ranks(1, 2))
    with pytest.raises(ConfigError, match="sharded for 2 rank.* this job has 1"):
        train(worker.model(), torch.nn.Identity(), loader, epochs=1, device="cpu", progress=False)


@pytest.mark.parametrize("env, expected", [
    ({}, None),
    ({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}, (1, 4, 1, "torchrun")),
    ({"SLURM_PROCID": "3", "SLURM_NTASKS": "8", "SLURM_LOCALID": "3", "MASTER_ADDR": "n0", "MASTER_PORT": "1"},
     (3, 8, 3, "SLURM")),
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}, None),  # a single SLURM task: one process
])
def test_launch_environment(env, expected):
    launch_info = launch_env(env)
    assert (None if launch_info is None else (launch_info.rank, launch_info.world_size, launch_info.local_rank,
                                              launch_info.source)) == expected


@pytest.mark.parametrize("env, message", [
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "2"}, "one of 2 SLURM tasks, but MASTER_ADDR and MASTER_PORT is not set"),
    ({"RANK": "x", "WORLD_SIZE": "2"}, "RANK='x' is not a whole number"),
    ({"RANK": "2", "WORLD_SIZE": "2"}, "RANK=2, WORLD_SIZE=2, LOCAL_RANK=0 do not describe a rank"),
])
def test_bad_launch_environment_is_a_clear_error(env, message):
    with pytest.raises(ConfigError, match=message):
        launch_env(env)


def test_single_process_runs_are_untouched(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    with process_group("cpu") as ranks:
        assert ranks == Ranks() and not torch.distributed.is_initialized()
        net = worker.model()
        assert wrap(net, torch.device("cpu"), ranks) is net and rank_device("cpu", ranks) == torch.device("cpu")
        assert ranks.from_main(lambda: 5) == 5 and ranks.main_first(lambda: 6) == 6 and ranks.seed(9) == 9
    assert Ranks(1, 2).seed(9) != 9
    with pytest.raises(ConfigError, match="synchronised BatchNorm needs CUDA"):
        wrap(net, torch.device("cpu"), Ranks(), sync_batchnorm=True)
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="not available"):
            rank_device("cuda", Ranks(1, 2, 1))


class WithoutGroup(Ranks):
    """A rank of a 2-rank job whose collectives return what rank 0 (`main`) sent, or every rank's
    object as `runs` lists them: the ranks' error handling without a process group."""

    def __init__(self, rank, main=None, runs=None):
        super().__init__(rank, 2)
        object.__setattr__(self, "sent", (main, runs))

    def broadcast(self, obj):
        return obj if self.is_main else self.sent[0]

    def all_gather(self, obj):
        return self.sent[1]


def test_an_error_of_rank_0_is_an_echo_on_the_other_ranks():
    """The command line prints an error on rank 0 only when the other ranks' copy is an echo
    (kpfast.engine.ranks.echoes_main): one line per job, not one per rank."""
    from kpfast.engine.ranks import echoes_main

    def fails():
        raise ConfigError("the output folder is not empty")

    with pytest.raises(ConfigError, match="not empty") as on_main:
        WithoutGroup(0).from_main(fails)
    with pytest.raises(ConfigError, match="not empty") as on_other:
        WithoutGroup(1, main=("error", ConfigError("the output folder is not empty"))).from_main(fails)
    assert not echoes_main(on_main.value) and echoes_main(on_other.value)
    runs = [{"key_fingerprint": "aa", "lr": 0.1}, {"key_fingerprint": "bb", "lr": 0.1}]
    for rank in (0, 1):
        with pytest.raises(KeyMismatchError, match="rank 0 has key fingerprint aa, rank 1 has bb") as e:
            WithoutGroup(rank, runs=runs).check_same_run(runs[rank])
        assert echoes_main(e.value) == (rank == 1)
    assert not echoes_main(ConfigError("a rank's own error"))


@pytest.mark.parametrize("rank, prints", [("0", True), ("1", False)])
def test_a_usage_error_is_printed_by_rank_0_only(monkeypatch, capsys, rank, prints):
    # Every rank parses the same command line: one usage message per job, the same exit status.
    from kpfast.cli import main

    monkeypatch.setenv("RANK", rank)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SystemExit) as e:
        main(["train", "--no-such-option"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert ("kpfast train: error:" in err) == prints


def test_the_finetune_attack_trains_data_parallel(tmp_path):
    # `kpfast attack finetune` on 2 ranks computes what one process computes with the same global
    # batch (the training losses to float tolerance, the same test accuracies), rank 0 alone
    # writing and printing; the attacks that do not train refuse to run on 2 ranks. The model is
    # the ViT: LayerNorm, no BatchNorm, whose statistics would be per rank on the CPU.
    import numpy as np
    from test_attacks_standins import write_fashion_like

    from kpfast import BlockTransform
    from kpfast.cli import main
    from kpfast.models import create_model
    from kpfast.protection import ProtectedModel

    write_fashion_like(tmp_path / "data")
    key = KeySet.generate(4, 1, rng=np.random.default_rng(0))
    torch.manual_seed(0)
    ProtectedModel(create_model("vit", 10, 1), BlockTransform(key, ("shuffle", "negpos"), (0.3,), (0.35,))
                   ).save(tmp_path / "model.pt")
    common = ["--model", str(tmp_path / "model.pt"), "--data", "fashion-mnist", "--data-root", str(tmp_path / "data"),
              "--test-subset", "40", "--fractions", "0.1", "--steps", "8", "--finetune-batch", "8", "--no-progress"]
    with single_thread():
        assert main(["attack", "finetune", *common, "--out", str(tmp_path / "one")]) == 0
    results = launch([["-m", "kpfast", "attack", "finetune", *common, "--out", str(tmp_path / "two")]] * 2, tmp_path)
    assert [code for code, _ in results] == [0, 0], results
    assert "wrote" in results[0][1] and "wrote" not in results[1][1]
    one, two = (json.loads((tmp_path / f / "finetune.json").read_text())["result"]["runs"] for f in ("one", "two"))
    assert [r["variant"] for r in one] == [r["variant"] for r in two]
    for a, b in zip(one, two):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4) and b["test_accuracy"] == a["test_accuracy"]
    refused = launch([["-m", "kpfast", "attack", "key-space", *common, "--out", str(tmp_path / "ks")]] * 2, tmp_path)
    assert [code for code, _ in refused] == [2, 2]
    assert "only finetune trains data-parallel" in refused[0][1] and "only finetune" not in refused[1][1]


def test_the_audit_refuses_torchrun_and_reuses_a_data_parallel_finetune(tmp_path):
    # `kpfast audit` runs as one process: on 2 ranks it refuses (rank 0 says why) and points to
    # `kpfast attack finetune` under torchrun, whose record a later one-process audit reuses.
    import numpy as np
    from test_attacks_standins import write_fashion_like

    from kpfast import BlockTransform
    from kpfast.cli import main
    from kpfast.models import create_model
    from kpfast.protection import ProtectedModel

    write_fashion_like(tmp_path / "data")
    key = KeySet.generate(4, 1, rng=np.random.default_rng(0))
    key.save(tmp_path / "model.key")
    torch.manual_seed(0)
    ProtectedModel(create_model("vit", 10, 1), BlockTransform(key, ("shuffle", "negpos"), (0.3,), (0.35,))
                   ).save(tmp_path / "model.pt")
    common = ["--model", str(tmp_path / "model.pt"), "--key", str(tmp_path / "model.key"), "--data", "fashion-mnist",
              "--data-root", str(tmp_path / "data"), "--test-subset", "40", "--fractions", "0.1", "--steps", "4",
              "--finetune-batch", "8", "--no-progress", "--out", str(tmp_path / "audit")]
    refused = launch([["-m", "kpfast", "audit", *common]] * 2, tmp_path)
    assert [code for code, _ in refused] == [2, 2]
    assert "kpfast audit runs as one process" in refused[0][1] and "runs as one process" not in refused[1][1]
    assert not (tmp_path / "audit").exists()
    results = launch([["-m", "kpfast", "attack", "finetune", *common]] * 2, tmp_path)
    assert [code for code, _ in results] == [0, 0], results
    record = (tmp_path / "audit" / "finetune.json").read_text()
    with single_thread():
        assert main(["audit", *common, "--stages", "finetune"]) == 0
    assert (tmp_path / "audit" / "finetune.json").read_text() == record  # reused, not run again
