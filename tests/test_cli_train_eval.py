"""`kpfast train` and `kpfast eval` end to end on a tiny synthetic budget: keys, resume, results."""
import contextlib
import io
import json
import os
import stat

import pytest
import torch

import kpfast.engine.checkpoint
from kpfast.cli import main
from kpfast.data.synthetic import CLASSES
from kpfast.keys import KeySet
from single_thread import single_thread

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["--data", "synthetic", "--train-subset", "300", "--test-subset", "100", "--epochs", "2",
        "--batch-size", "64", "--model", "small_cnn", "--device", "cpu"]


def train(out, *extra):
    return main(["train", *TINY, "--out", str(out), *extra])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A protected model trained once: (run folder, key file, captured stdout)."""
    folder = tmp_path_factory.mktemp("train")
    out, key = folder / "run", folder / "secret.key"
    stdout = io.StringIO()
    # capsys is per test, so capture here; module fixtures run before the function-scoped one above
    with contextlib.redirect_stdout(stdout), single_thread():
        assert train(out, "--ops", "shuffle,negpos,ffx", "-M", "4", "--key", str(key)) == 0
    return out, key, stdout.getvalue()


def key_material(key) -> list[str]:
    """Strings that would betray the key if they showed up in output or results."""
    keys = KeySet.load(key)
    return [keys.ffx_password.hex(), json.dumps(keys.perm.tolist())]


def test_train_generates_an_owner_only_key_and_writes_the_run(run):
    out, key, stdout = run
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    assert "generated a fresh key" in stdout and KeySet.load(key).fingerprint() in stdout
    for secret in key_material(key):
        assert secret not in stdout
    assert {"last.pt", "model.pt", "train.json"} <= {p.name for p in out.iterdir()}
    summary = json.loads((out / "train.json").read_text())
    assert summary["key_fingerprint"] == KeySet.load(key).fingerprint()
    assert summary["config"]["ops"] == ["shuffle", "negpos", "ffx"] and len(summary["history"]["seconds"]) == 2
    assert 0.0 <= summary["test_accuracy"] <= 1.0


def test_train_refuses_to_overwrite_a_run_without_resume(run, capsys):
    out, key, _ = run
    assert train(out, "--ops", "shuffle,negpos,ffx", "--key", str(key)) == 2
    assert "--resume" in capsys.readouterr().err


def test_interrupted_train_resumes_to_the_same_model(run, tmp_path, monkeypatch, capsys):
    out, key, _ = run
    real_save, saves = kpfast.engine.checkpoint.write, []

    def crash_after_first_epoch(*args, **kwargs):
        real_save(*args, **kwargs)
        saves.append(1)
        raise KeyboardInterrupt  # Ctrl-C right after epoch 1 was saved

    monkeypatch.setattr(kpfast.engine.checkpoint, "write", crash_after_first_epoch)
    assert train(tmp_path, "--ops", "shuffle,negpos,ffx", "--key", str(key)) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err
    message = err.strip().splitlines()[-1]  # one line, after the progress bars
    assert message.startswith("kpfast train: interrupted during epoch 1/2; ") and message.endswith(
        "to continue, run the same command with --resume")
    assert saves == [1] and not (tmp_path / "model.pt").exists()
    monkeypatch.setattr(kpfast.engine.checkpoint, "write", real_save)

    assert train(tmp_path, "--ops", "shuffle,negpos,ffx", "--key", str(key), "--resume") == 0
    assert "after epoch 1/2" in capsys.readouterr().out
    resumed = torch.load(tmp_path / "model.pt", weights_only=True)["state_dict"]
    straight = torch.load(out / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(resumed[k], straight[k]) for k in straight)  # resuming changes nothing


def test_eval_prints_the_table_and_writes_results(run, tmp_path, capsys):
    out, key, _ = run
    results = tmp_path / "results"
    assert main(["eval", "--model", str(out / "model.pt"), "--key", str(key), "--data", "synthetic",
                 "--test-subset", "100", "--wrong-keys", "3", "--device", "cpu", "--out", str(results)]) == 0
    stdout = capsys.readouterr().out
    assert "| correct key |" in stdout and "| wrong keys (3)" in stdout and "| plain images (no key) |" in stdout
    data = json.loads((results / "results.json").read_text())
    assert data["wrong_keys"]["count"] == 3 and data["num_images"] == 100
    assert list(data["correct_key"]["per_class_accuracy"]) == list(CLASSES)
    assert (results / "results.md").read_text().startswith("Key fingerprint")
    written = stdout + (results / "results.json").read_text() + (results / "results.md").read_text()
    for secret in key_material(key):
        assert secret not in written


def test_eval_with_the_wrong_key_or_no_key_fails_clearly(run, tmp_path, capsys):
    out, key, _ = run
    other = tmp_path / "other.key"
    KeySet.generate(4).save(other)
    model = ["eval", "--model", str(out / "model.pt"), "--data", "synthetic", "--device", "cpu"]
    assert main([*model, "--key", str(other)]) == 2
    assert f"{other} is not the key of" in capsys.readouterr().err
    assert main(model) == 2
    assert "pass its key with --key" in capsys.readouterr().err
    assert main([*model, "--key", str(tmp_path / "missing.key")]) == 2
    assert "key file not found" in capsys.readouterr().err


def test_train_needs_a_key_for_a_keyed_chain(tmp_path, capsys):
    assert train(tmp_path / "run", "--ops", "ffx") == 2
    assert "needs --key" in capsys.readouterr().err
    assert train(tmp_path / "run", "--ops", "ffx,rot13", "--key", str(tmp_path / "k")) == 2
    assert "ops must be" in capsys.readouterr().err
    assert not (tmp_path / "k").exists()


def test_plain_model_trains_and_evaluates_without_a_key(tmp_path, capsys):
    out = tmp_path / "plain"
    assert train(out, "--ops", "plain", "--epochs", "1") == 0
    assert json.loads((out / "train.json").read_text())["key_fingerprint"] is None
    capsys.readouterr()
    assert main(["eval", "--model", str(out / "model.pt"), "--data", "synthetic", "--test-subset", "100",
                 "--device", "cpu"]) == 0
    assert "Plain model (no key)" in capsys.readouterr().out
    data = json.loads((out / "eval" / "results.json").read_text())
    assert data["key_fingerprint"] is None and 0.0 <= data["plain_images"]["accuracy"] <= 1.0
    key = tmp_path / "k.key"
    KeySet.generate(4).save(key)
    assert main(["eval", "--model", str(out / "model.pt"), "--key", str(key), "--data", "synthetic"]) == 2
    assert "drop --key" in capsys.readouterr().err
