"""`kpfast reproduce` on a tiny CPU budget: the report, the plot, per-model resume, --cells errors."""
import json
import os
import stat

import pytest

import kpfast.protection.grid
from kpfast.cli import main
from kpfast.keys import KeySet
from kpfast.protection.grid import Cell, default_cells, parse_cells
from single_thread import single_thread

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["--data", "synthetic", "--model", "small_cnn", "--epochs", "1", "--batch-size", "64",
        "--train-subset", "200", "--test-subset", "100", "--wrong-keys", "2", "--device", "cpu"]
CELLS = "plain,ffx-4,shuffle-2"


def reproduce(out, cells=CELLS, *extra):
    return main(["reproduce", *TINY, "--cells", cells, "--out", str(out), *extra])


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    out = tmp_path_factory.mktemp("repro")
    with single_thread():  # module fixtures run before the function-scoped one above
        assert reproduce(out) == 0
    return out


def test_report_holds_our_numbers_beside_the_published_ones(grid):
    results = json.loads((grid / "results.json").read_text())
    cells = {c["cell"]: c for c in results["cells"]}
    assert list(cells) == ["plain", "shuffle-2", "ffx-4"]  # grid order
    md = (grid / "results.md").read_text()
    rows = {line.split("|")[1].strip(): line for line in md.splitlines() if line.startswith("| ")}
    for name, label, published in (("plain", "plain", "95.43"), ("shuffle-2", "Shuffle", "94.77"),
                                   ("ffx-4", "FFX", "92.27")):
        assert f"| {100 * cells[name]['accuracy']:.2f} | {published} |" in rows[label]
    assert "1 epoch" in md and "(200 ep.)" in md and "synthetic (200 train / 100 test images)" in md
    assert "CPU" in md
    ffx = cells["ffx-4"]
    assert ffx["wrong_keys"]["count"] == 2 and ffx["wrong_keys"]["min"] <= ffx["wrong_keys"]["max"]
    assert ffx["transform_share_of_step"] > 0 and ffx["seconds_per_epoch"] > 0
    assert cells["plain"]["wrong_keys"] is None
    assert f"{ffx['seconds_per_epoch'] / cells['plain']['seconds_per_epoch']:.2f}x" in md  # overhead vs plain


def test_plot_is_a_png(grid):
    assert (grid / "accuracy_vs_block_size.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_keys_are_owner_only_and_never_in_results(grid):
    assert stat.S_IMODE(os.stat(grid / "keys").st_mode) == 0o700
    written = "".join(p.read_text() for p in [grid / "results.json", grid / "results.md", *grid.glob("cells/*")])
    for name in ("ffx-4", "shuffle-2"):
        path = grid / "keys" / f"{name}.key"
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        keys = KeySet.load(path)
        assert keys.fingerprint() in written and keys.ffx_password.hex() not in written
    assert not (grid / "checkpoints").exists()  # every cell finished: no checkpoint left


def test_rerun_skips_finished_cells(grid, capsys):
    before = {p.name: p.stat().st_mtime_ns for p in (grid / "cells").iterdir()}
    assert reproduce(grid) == 0
    out = capsys.readouterr().out
    assert all(f"skipping {name}: finished" in out for name in CELLS.split(","))
    assert {p.name: p.stat().st_mtime_ns for p in (grid / "cells").iterdir()} == before


def test_interrupted_cell_resumes_from_its_checkpoint_with_its_key(grid, monkeypatch, capsys):
    real = kpfast.protection.grid.experiment.evaluate_model

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # training done and checkpointed, evaluation cut short

    monkeypatch.setattr(kpfast.protection.grid.experiment, "evaluate_model", crash)
    assert reproduce(grid, "negpos-4") == 130
    assert "run the same command again" in capsys.readouterr().err
    assert (grid / "checkpoints" / "negpos-4" / "last.pt").exists()
    key = KeySet.load(grid / "keys" / "negpos-4.key").fingerprint()
    monkeypatch.setattr(kpfast.protection.grid.experiment, "evaluate_model", real)

    assert reproduce(grid, "negpos-4") == 0
    assert "after epoch 1/1" in capsys.readouterr().out  # resumed, not retrained
    record = json.loads((grid / "cells" / "negpos-4.json").read_text())
    assert record["key_fingerprint"] == key
    assert "| NP | 4 |" in (grid / "results.md").read_text()


def test_other_settings_in_the_same_folder_are_refused(grid, capsys):
    assert main(["reproduce", *TINY, "--cells", "plain", "--out", str(grid), "--lr", "0.01"]) == 2
    assert "other settings (lr: 0.05 -> 0.01)" in capsys.readouterr().err


def test_cells_syntax():
    assert parse_cells("plain,ffx-4,shuffle-4,negpos-4") == [Cell(), Cell("ffx", 4), Cell("shuffle", 4),
                                                              Cell("negpos", 4)]
    cells = default_cells()
    assert len(cells) == 13 and parse_cells("all") == cells
    assert [c.name for c in cells[:4]] == ["plain", "shuffle-4", "negpos-4", "ffx-4"]
    assert parse_cells(" ffx-32 ") == [Cell("ffx", 32)]
    for bad in ("np-4", "ffx", "ffx-0", "ffx-x", "shuffle-4,", "Plain"):
        with pytest.raises(ValueError, match="unknown cell"):
            parse_cells(bad)
    with pytest.raises(ValueError, match="listed twice"):
        parse_cells("ffx-4,plain,ffx-4")


def test_cells_errors_are_clear_on_the_command_line(tmp_path, capsys):
    assert reproduce(tmp_path, "plain,foo-3") == 2
    err = capsys.readouterr().err
    assert "unknown cell 'foo-3'" in err and "plain,ffx-4,shuffle-4,negpos-4" in err
    assert reproduce(tmp_path, "ffx-5") == 2
    assert "block size 5 does not divide the 32x32 images" in capsys.readouterr().err
