"""kpfast.atomic: whole files or nothing, modes without touching the process umask, a full disk
reported as such with the old file kept."""
import json
import os
import stat
import threading

import pytest
import torch

import kpfast.atomic as atomic
from kpfast.atomic import atomic_write, write_json, write_text
from kpfast.errors import DiskFullError
from standins import FullDisk


@pytest.fixture
def umask():
    """The process umask, set to a known value for the test (tests run in one thread here)."""
    old = os.umask(0o022)
    yield 0o022
    os.umask(old)


def test_modes_never_read_or_change_the_umask(tmp_path, umask, monkeypatch):
    def no_umask(mask):
        raise AssertionError("atomic_write changed the process umask")

    monkeypatch.setattr(os, "umask", no_umask)
    atomic_write(tmp_path / "plain", lambda f: f.write(b"x"))
    atomic_write(tmp_path / "secret", lambda f: f.write(b"k"), mode=0o600)
    assert stat.S_IMODE(os.stat(tmp_path / "plain").st_mode) == 0o666 & ~umask
    assert stat.S_IMODE(os.stat(tmp_path / "secret").st_mode) == 0o600


def test_files_other_threads_create_meanwhile_keep_their_umask(tmp_path, umask):
    """Before, every write set the umask to 0 for a moment: a file another thread created then got
    mode 0666 (reported 2 times in 3,000). The race is rare, so the test above is the one that
    always failed before the fix; this one is the scenario itself."""
    stop = threading.Event()

    def writer(i):
        n = 0
        while not stop.is_set():
            atomic_write(tmp_path / f"w{i}", lambda f: f.write(b"data"))
            n += 1

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    try:
        modes = set()
        for i in range(3000):
            path = tmp_path / f"own{i}"
            with open(path, "w"):
                pass
            modes.add(stat.S_IMODE(os.stat(path).st_mode))
            path.unlink()
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert modes == {0o666 & ~umask}


def test_write_text_and_json(tmp_path):
    write_text(tmp_path / "a.md", "λ = 1\n")
    assert (tmp_path / "a.md").read_text(encoding="utf-8") == "λ = 1\n"
    write_json(tmp_path / "a.json", {"x": [1, 2]})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": [1, 2]}
    assert (tmp_path / "a.json").read_text().endswith("\n")


@pytest.mark.parametrize("writer", ["bytes", "torch.save"])
def test_full_disk_says_so_and_keeps_the_old_file(tmp_path, monkeypatch, writer):
    path = tmp_path / "last.pt"
    torch.save({"epoch": 1}, path)
    before = path.read_bytes()
    monkeypatch.setattr(atomic.os, "fdopen", lambda fd, mode: FullDisk(fd, room=100))
    state = {"weights": torch.zeros(10_000)}
    write = (lambda f: f.write(b"x" * 1000)) if writer == "bytes" else (lambda f: torch.save(state, f))
    with pytest.raises(DiskFullError, match=f"disk full while writing {path}"):
        atomic_write(path, write)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["last.pt"]  # the temporary file is gone


def test_other_write_errors_pass_through_and_leave_nothing(tmp_path):
    def broken(f):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        atomic_write(tmp_path / "a", broken)
    assert os.listdir(tmp_path) == []
