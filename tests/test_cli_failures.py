"""What the command line says when things go wrong: one line naming the file and the cause, exit
status 2 (130 for Ctrl-C), nothing lost. And the data-set statistics a run records."""
import json
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

import kpfast.atomic
import kpfast.engine.checkpoint
from kpfast.cli import main
from kpfast.cli.i2p import main as i2p_main
from kpfast.data.stats import CIFAR10, channel_stats
from standins import FullDisk

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["--data", "synthetic", "--train-subset", "200", "--test-subset", "50", "--batch-size", "64",
        "--model", "small_cnn", "--device", "cpu"]


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KPFAST_CACHE", str(tmp_path / "cache"))  # decoded folders are cached per test


def one_line(err: str) -> str:
    """The error message: the last line on stderr (after any progress bars), with no traceback."""
    assert "Traceback" not in err
    return err.strip().splitlines()[-1].split("\r")[-1]


@pytest.mark.parametrize("content, cause", [(b"", "the file is empty"), (b"\x00garbage", "not a file written by torch.save")])
def test_resume_from_an_empty_or_foreign_checkpoint(tmp_path, capsys, content, cause):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "last.pt").write_bytes(content)
    assert main(["train", *TINY, "--ops", "plain", "--epochs", "1", "--out", str(tmp_path / "run"), "--resume"]) == 2
    message = one_line(capsys.readouterr().err)
    assert message == f"kpfast train: error: {tmp_path / 'run' / 'last.pt'} is not a readable checkpoint: {cause}"
    assert (tmp_path / "run" / "last.pt").read_bytes() == content  # left as it was


def test_full_disk_while_saving_the_checkpoint_keeps_the_old_one(tmp_path, capsys, monkeypatch):
    run = ["train", *TINY, "--ops", "plain", "--epochs", "2", "--out", str(tmp_path / "run")]
    real = kpfast.engine.checkpoint.write

    def stop_after_saving(*args):
        real(*args)
        raise KeyboardInterrupt

    monkeypatch.setattr(kpfast.engine.checkpoint, "write", stop_after_saving)
    assert main(run) == 130
    monkeypatch.setattr(kpfast.engine.checkpoint, "write", real)
    before = (tmp_path / "run" / "last.pt").read_bytes()
    monkeypatch.setattr(kpfast.atomic.os, "fdopen", lambda fd, mode: FullDisk(fd))
    assert main([*run, "--resume"]) == 2
    message = one_line(capsys.readouterr().err)
    assert message.startswith(f"kpfast train: error: disk full while writing {tmp_path / 'run' / 'last.pt'}")
    assert (tmp_path / "run" / "last.pt").read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["last.pt"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a torch without a usable GPU")
@pytest.mark.parametrize("command", [["train", *TINY[:-2], "--ops", "plain", "--out", "{tmp}/run"],
                                     ["demo", "--quick", "--out", "{tmp}/demo"],
                                     ["i2p", "run", "--data", "synthetic", "--out", "{tmp}/i2p"],
                                     ["bench", "--quick"]])
def test_cuda_without_a_gpu(tmp_path, capsys, command):
    assert main([a.format(tmp=tmp_path) for a in command] + ["--device", "cuda"]) == 2
    message = one_line(capsys.readouterr().err)
    assert message.startswith(f"kpfast {command[0]}: error: device 'cuda' is not available: ")
    assert not list(tmp_path.iterdir())  # refused before anything was written


def huge_png(path, side=20_000):
    """A PNG that claims side x side pixels (its data is tiny): Pillow refuses it as a decompression bomb."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)  # 8-bit RGB
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def folder(root, classes=2, per_class=(12, 4), size=8, seed=0, scale=(0, 256)):
    rng = np.random.default_rng(seed)
    for split, n in zip(("train", "test"), per_class):
        for c in range(classes):
            (root / split / f"c{c}").mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(*scale, (size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / f"c{c}" / f"{i:02d}.png")
    return root


def test_decompression_bomb_in_a_folder_or_to_encrypt(tmp_path, capsys):
    data = folder(tmp_path / "data")
    huge_png(data / "train" / "c1" / "big.png")
    assert main(["train", "--data", str(data), "--ops", "plain", "--epochs", "1", "--device", "cpu",
                 "--out", str(tmp_path / "run")]) == 2
    message = one_line(capsys.readouterr().err)
    assert "cannot read image train/c1/big.png" in message and "decompression bomb" in message

    assert main(["keygen", str(tmp_path / "k.key")]) == 0
    assert main(["encrypt", str(data / "train"), str(tmp_path / "enc"), "--key", str(tmp_path / "k.key")]) == 2
    message = one_line(capsys.readouterr().err)
    assert f"cannot read image {data / 'train' / 'c1' / 'big.png'}" in message and "decompression bomb" in message


def test_an_image_folder_is_normalised_with_its_own_statistics(tmp_path, capsys):
    """Not with CIFAR-10's: the training set's statistics are computed and recorded."""
    data = folder(tmp_path / "data", scale=(0, 64))  # dark images: far from CIFAR-10's mean
    assert main(["train", "--data", str(data), "--ops", "plain", "--epochs", "1", "--batch-size", "8",
                 "--device", "cpu", "--out", str(tmp_path / "run")]) == 0
    from kpfast.data import load_dataset

    train_set, _ = load_dataset(str(data), progress=False)
    expected = channel_stats(train_set.images)
    assert expected.mean != CIFAR10.mean and all(m < 0.3 for m in expected.mean)
    model = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    checkpoint = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    for config in (model["transform"], checkpoint["run"]["transform"]):
        assert config["mean"] == pytest.approx(expected.mean, abs=1e-6)  # held as float32 by Normalize
        assert config["std"] == pytest.approx(expected.std, abs=1e-6)
    recorded = json.loads((tmp_path / "run" / "train.json").read_text())["normalization"]
    assert recorded["mean"] == list(expected.mean) and "computed from the 24 training images" in recorded["source"]


def test_channel_stats_against_numpy():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (50, 3, 5, 7), dtype=torch.uint8, generator=g)
    x = images.numpy().astype(np.float64) / 255
    stats = channel_stats(images)
    np.testing.assert_allclose(stats.mean, x.mean((0, 2, 3)), atol=5e-5)
    np.testing.assert_allclose(stats.std, x.std((0, 2, 3)), atol=5e-5)


I2P_TINY = ["--classifiers", "small_cnn", "--feature-model", "small_cnn", "--lambdas", "0.01", "--width", "0.0625",
            "--gan-width", "0.0625", "--batch-size", "8", "--device", "cpu", "--time-limit", "0"]


def test_i2p_no_progress_also_silences_decoding(tmp_path, capsys, monkeypatch):
    data = folder(tmp_path / "data", size=16)
    assert i2p_main(["run", "--data", str(data), *I2P_TINY, "--out", str(tmp_path / "a")]) == 3
    assert "decoding data" in capsys.readouterr().err  # the bar is there by default ...
    monkeypatch.setenv("KPFAST_CACHE", str(tmp_path / "other-cache"))  # decode again
    assert i2p_main(["run", "--data", str(data), *I2P_TINY, "--out", str(tmp_path / "b"), "--no-progress"]) == 3
    err = capsys.readouterr().err
    assert "decoding" not in err and one_line(err).startswith("kpfast i2p: time limit reached")


# --- reproduce: a bad cell leaves nothing behind; a CPU hears how long it will take ---------------

REPRODUCE_TINY = ["reproduce", "--data", "synthetic", "--train-subset", "200", "--test-subset", "50", "--epochs", "1",
                  "--model", "small_cnn", "--wrong-keys", "1", "--device", "cpu"]


def test_reproduce_a_cell_that_does_not_fit_the_images_leaves_no_folder(tmp_path, capsys):
    out = tmp_path / "repro"
    assert main([*REPRODUCE_TINY, "--cells", "plain,ffx-3", "--out", str(out)]) == 2
    assert one_line(capsys.readouterr().err) == ("kpfast reproduce: error: block size 3 does not divide the 32x32 "
                                                 "images of this data set")
    assert not out.exists()


def test_reproduce_on_a_cpu_estimates_its_time_and_suggests_a_cpu_budget(tmp_path, capsys, monkeypatch):
    import kpfast.protection.grid as grid

    monkeypatch.setattr(grid, "LONG_RUN", 0.0)  # any run counts as long: the suggestion is printed
    assert main([*REPRODUCE_TINY, "--cells", "plain", "--out", str(tmp_path / "repro")]) == 0
    out = capsys.readouterr().out
    estimate = next(line for line in out.splitlines() if line.startswith("estimate: "))
    assert estimate.startswith("estimate: a small_cnn training step of 128 images takes ")
    assert "1 model x 1 epoch x 2 steps, with evaluation, is about " in estimate
    assert ("stop this one (Ctrl-C) and pass --model small_cnn --epochs 5 --train-subset 10000 --test-subset 2000 "
            "--cells plain,shuffle-4,negpos-4,ffx-4") in out
    assert out.index("estimate: ") < out.index("[1/1] plain")  # before the first model trains


def test_run_seconds_counts_training_and_every_evaluation_pass():
    from kpfast.protection.experiment import RunConfig
    from kpfast.protection.grid import run_seconds, rough_duration

    config = RunConfig(epochs=3, batch_size=100)
    # 2 cells x (3 epochs x 5 steps x 2 s + (4 wrong keys + 2) passes x 200 / 100 batches x 0.5 s)
    assert run_seconds(config, 450, 200, 2, 4, step=2.0, forward=0.5) == 2 * (3 * 5 * 2.0 + 6 * 2 * 0.5)
    assert [rough_duration(s) for s in (42, 25 * 60, 3.5 * 3600, 3 * 86400)] == ["42 s", "25 min", "3.5 h", "3.0 days"]


def test_a_flat_folder_is_refused_naming_a_few_of_its_files(tmp_path, capsys):
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(200):
        Image.new("RGB", (8, 8)).save(flat / f"img{i:03d}.png")
    assert main(["train", "--data", str(flat), "--ops", "plain", "--out", str(tmp_path / "run"), "--device", "cpu"]) == 2
    message = one_line(capsys.readouterr().err)
    assert message.startswith(f"kpfast train: error: {flat}: train/ is missing")
    assert "img000.png" in message and "img199.png" not in message and "200" in message
    assert len(message) < 400
