"""`kpfast audit` and `kpfast attack` end to end on a tiny model, and their errors for bad input."""
import json

import numpy as np
import pytest
import torch
from test_attacks_standins import write_fashion_like

from kpfast import BlockTransform, KeySet
from kpfast.cli import main
from kpfast.models import create_model
from kpfast.protection import ProtectedModel

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["--test-subset", "40", "--wrong-keys", "3", "--keys", "40", "--search-batch", "8", "--passes", "1",
        "--estimate-batch", "8", "--fractions", "0.05", "--steps", "1", "--finetune-batch", "8", "--pairs", "1,2",
        "--no-progress"]
VERDICTS = ("wrong key collapses:", "plain images collapse:", "key space out of brute-force reach:",
            "random key search finds no usable key", "heuristic key estimation fails", "fine-tuning advantage with 5 %",
            "falls to 1 known pair:")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Fashion-MNIST-like 8x8 idx files, and a small CNN saved behind a key at M = 2 (untrained:
    the commands are tested here, not the attacks' strength)."""
    root = tmp_path_factory.mktemp("attack-cli")
    write_fashion_like(root / "data")
    key = KeySet.generate(2, 1, rng=np.random.default_rng(0))
    key.save(root / "model.key")
    torch.manual_seed(0)
    ProtectedModel(create_model("small_cnn", 10, 1), BlockTransform(key, ("shuffle", "negpos", "ffx"), (0.3,), (0.35,))
                   ).save(root / "model.pt")
    return root


def data(files):
    return ["--data", "fashion-mnist", "--data-root", str(files / "data")]


def test_audit_writes_every_verdict_and_resumes(files, capsys):
    out = files / "audit"
    args = ["audit", "--model", str(files / "model.pt"), "--key", str(files / "model.key"), *data(files),
            "--out", str(out), *TINY]
    assert main(args) == 0
    report = (out / "report.md").read_text()
    for verdict in VERDICTS:
        assert sum(line.startswith(f"- {verdict}") for line in report.splitlines()) == 1, verdict
    sections = report.split("\n## ")[2:]  # after the header and the verdicts: one per stage, then the plots
    assert len(sections) == 7 and all(s.split("\n")[2].startswith("Threat model: ") for s in sections[:-1])
    saved = json.loads((out / "report.json").read_text())
    assert len(saved["meta"]["verdicts"]) == len(VERDICTS)
    assert {p for p in saved["meta"]["plots"]} == {"key-search.png", "key-estimate.png", "finetune.png",
                                                   "known-plaintext.png"}
    assert all((out / p).stat().st_size > 1000 for p in saved["meta"]["plots"])
    key = KeySet.load(files / "model.key")
    text = "".join(p.read_text() for p in out.rglob("*.json")) + report
    assert json.dumps(key.perm.tolist()) not in text and key.ffx_password.hex() not in text
    assert not list(out.glob("*.state*"))  # progress files are removed when a stage is done

    capsys.readouterr()
    assert main(args) == 0  # the same command again: every stage is done
    assert capsys.readouterr().out.count("done before") == 6
    assert main([*args[:-len(TINY)], *TINY[:-3], "--pairs", "1", "--no-progress"]) == 2  # other settings
    assert "holds a result of other settings (pairs: [1, 2] -> [1])" in capsys.readouterr().err


def test_an_attack_runs_without_the_key(files, capsys):
    out = files / "search"
    assert main(["attack", "key-search", "--model", str(files / "model.pt"), *data(files), "--out", str(out),
                 "--strategy", "both", *TINY]) == 0
    result = json.loads((out / "key-search.json").read_text())["result"]
    assert [s["strategy"] for s in result["searches"]] == ["halving", "exhaustive"]
    assert all(s["agreement"] is None for s in result["searches"])  # no key: nothing to compare with
    assert main(["attack", "known-plaintext", "--model", str(files / "model.pt"), *data(files), "--out",
                 str(out), *TINY]) == 2
    assert "needs the model's key (--key FILE)" in capsys.readouterr().err


@pytest.mark.parametrize("case, message", [
    ("not-a-model", "is not a kpfast protected-model checkpoint"),
    ("plain-model", "is a plain model: it has no key to attack"),
    ("block-size", "the key key.key is for 4x4 blocks of 1 channel(s), the model for 2x2 blocks of 1"),
    ("channels", "the key key.key is for 2x2 blocks of 3 channel(s), the model for 2x2 blocks of 1"),
    ("other-key", "not this model's key"),
    ("too-many", "the key search batch = 100000 images asked for, but the set has only 300"),
])
def test_bad_input_gets_one_clear_line(files, tmp_path, capsys, monkeypatch, case, message):
    monkeypatch.chdir(tmp_path)
    model, extra = str(files / "model.pt"), []
    if case == "not-a-model":
        torch.save({"weights": torch.zeros(3)}, tmp_path / "m.pt")
        model = "m.pt"
    elif case == "plain-model":
        from kpfast.normalize import Normalize

        ProtectedModel(create_model("small_cnn", 10, 1), Normalize((0.3,), (0.35,))).save(tmp_path / "m.pt")
        model = "m.pt"
    elif case in ("block-size", "channels", "other-key"):
        geometry = {"block-size": (4, 1), "channels": (2, 3), "other-key": (2, 1)}[case]
        KeySet.generate(*geometry).save(tmp_path / "key.key")
        extra = ["--key", "key.key"]
    else:
        extra = ["--search-batch", "100000"]
    code = main(["attack", "key-search", "--model", model, *data(files), "--out", "out", *TINY, *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1, err


def test_budgets_of_zero_are_refused_by_the_parser(files, capsys):
    for flag in ("--keys", "--passes", "--steps", "--pairs", "--wrong-keys"):
        with pytest.raises(SystemExit) as stop:
            main(["attack", "key-search", "--model", str(files / "model.pt"), *data(files), "--out", "o", flag, "0"])
        assert stop.value.code == 2 and "must be at least 1" in capsys.readouterr().err
