from pathlib import Path

import numpy as np
import pytest

from kpfast.data.cache import cache_dir, load_arrays, save_arrays


def test_cache_dir_choice(tmp_path, monkeypatch):
    monkeypatch.setenv("KPFAST_CACHE", str(tmp_path / "env"))
    assert cache_dir() == tmp_path / "env" and (tmp_path / "env").is_dir()
    assert cache_dir(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv("KPFAST_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "kpfast"


def test_save_load_round_trip(tmp_path):
    path = tmp_path / "sub" / "a.npz"
    save_arrays(path, x=np.arange(6, dtype=np.uint8).reshape(2, 3), names=np.array(["a", "b"]))
    loaded = load_arrays(path)
    assert loaded is not None
    assert loaded["x"].tolist() == [[0, 1, 2], [3, 4, 5]] and loaded["names"].tolist() == ["a", "b"]
    assert [p.name for p in path.parent.iterdir()] == ["a.npz"]  # no temporary file left


def test_missing_or_damaged_cache_reads_as_none(tmp_path):
    assert load_arrays(tmp_path / "missing.npz") is None
    damaged = tmp_path / "damaged.npz"
    save_arrays(damaged, x=np.zeros(1000))
    damaged.write_bytes(damaged.read_bytes()[:100])
    assert load_arrays(damaged) is None


def test_failed_save_leaves_nothing(tmp_path):
    class Boom:
        def __array__(self, *args, **kwargs):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        save_arrays(tmp_path / "a.npz", x=Boom())  # type: ignore[arg-type]
    assert list(Path(tmp_path).iterdir()) == []
