"""kpfast protect-model and kpfast rekey: a saved plain ViT or ConvMixer becomes a protected model
file that, with its key, computes what the plain model computes; bad requests are refused before
any file is written."""
import os
import stat

import pytest
import torch

from kpfast import KeySet
from kpfast.cli import main
from kpfast.models import create_model
from kpfast.normalize import Normalize
from kpfast.protection import ProtectedModel
from test_model_transform import EXACT, generator, images, randomize, relative_error

STATS = ((0.49, 0.48, 0.45), (0.25, 0.24, 0.26))


@pytest.fixture
def plain(tmp_path):
    """A saved plain ViT (random weights) and its outputs on some images."""
    g = generator()
    model = ProtectedModel(randomize(create_model("vit", 10, 3), g), Normalize(*STATS))
    path = tmp_path / "plain.pt"
    model.save(path)
    x = images(8, 3, 32, g)
    with torch.no_grad():
        return path, x, model(x)


def outputs(path, key_path, x):
    with torch.no_grad():
        return ProtectedModel.load(path, KeySet.load(key_path))(x)


def test_protect_model_with_a_new_key(plain, tmp_path, capsys):
    path, x, want = plain
    key, out = tmp_path / "new.key", tmp_path / "protected.pt"
    args = ["protect-model", "--model", str(path), "--key", str(key), "--ops", "shuffle,negpos,scramble",
            "--image-size", "32", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}: ViT protected with shuffle+negpos+scramble under new key written to {key}" in printed
    assert " ms" in printed and stat.S_IMODE(os.stat(key).st_mode) == 0o600
    keys = KeySet.load(key)
    assert (keys.block_size, keys.channels, keys.grid) == (4, 3, (8, 8))
    assert ProtectedModel.read(out)["key_fingerprint"] == keys.fingerprint()
    assert relative_error(outputs(out, key, x), want) < EXACT
    # the output exists now: refused without --force, replaced with it (the key file is reused)
    assert main(args) == 2 and "refusing to overwrite" in capsys.readouterr().err
    assert main(args + ["--force"]) == 0
    assert KeySet.load(key) == keys


def test_rekey_moves_the_model_to_another_key(plain, tmp_path, capsys):
    path, x, want = plain
    old, new = tmp_path / "old.key", tmp_path / "new.key"
    protected, moved = tmp_path / "protected.pt", tmp_path / "moved.pt"
    assert main(["protect-model", "--model", str(path), "--key", str(old), "--ops", "negpos,scramble,shuffle",
                 "--image-size", "32", "--out", str(protected)]) == 0
    assert main(["rekey", "--model", str(protected), "--key", str(old), "--new-key", str(new),
                 "--out", str(moved)]) == 0
    assert "ViT re-keyed with negpos+scramble+shuffle under new key" in capsys.readouterr().out
    assert KeySet.load(new).grid == (8, 8) and KeySet.load(new) != KeySet.load(old)
    assert relative_error(outputs(moved, new, x), want) < EXACT
    with pytest.raises(ValueError, match="wrong key"):
        ProtectedModel.load(moved, KeySet.load(old))
    # another chain
    other = tmp_path / "other.pt"
    assert main(["rekey", "--model", str(moved), "--key", str(new), "--new-key", str(old), "--ops", "shuffle",
                 "--out", str(other)]) == 0
    assert ProtectedModel.read(other)["transform"]["ops"] == ["shuffle"]
    assert relative_error(outputs(other, old, x), want) < EXACT
    # the same key, a wrong key, a plain model
    assert main(["rekey", "--model", str(moved), "--key", str(new), "--new-key", str(new),
                 "--out", str(tmp_path / "x.pt")]) == 2
    assert "holds the model's current key" in capsys.readouterr().err
    assert main(["rekey", "--model", str(moved), "--key", str(old), "--new-key", str(tmp_path / "n2.key"),
                 "--out", str(tmp_path / "x.pt")]) == 2
    assert "is not the key of" in capsys.readouterr().err
    assert not (tmp_path / "n2.key").exists() and not (tmp_path / "x.pt").exists()


@pytest.mark.parametrize("extra, message", [
    (["--ops", "shuffle,scramble"], "scramble needs --image-size"),
    (["--ops", "shuffle,ffx"], "FFX cannot be folded"),
    (["--ops", "scramble", "--image-size", "30"], "not divisible by the patch size 4"),
    (["--ops", "scramble", "--image-size", "64"], "larger than this ViT's position embeddings"),
])
def test_refused_requests_write_nothing(plain, tmp_path, capsys, extra, message):
    path, _, _ = plain
    key, out = tmp_path / "k.key", tmp_path / "p.pt"
    assert main(["protect-model", "--model", str(path), "--key", str(key), "--out", str(out), *extra]) == 2
    assert message in capsys.readouterr().err
    assert not key.exists() and not out.exists()


@pytest.mark.parametrize("ops, message", [("shuffle,rotate", "got 'shuffle,rotate'"), ("negpos,negpos", "got 'negpos,negpos'"),
                                         ("", "got ''")])
def test_a_chain_that_is_not_one_is_a_usage_error(plain, tmp_path, capsys, ops, message):
    path, _, _ = plain
    for command in (["protect-model", "--key", str(tmp_path / "k.key")],
                    ["rekey", "--key", str(tmp_path / "k.key"), "--new-key", str(tmp_path / "n.key")]):
        with pytest.raises(SystemExit) as exit:
            main([*command, "--model", str(path), "--ops", ops, "--out", str(tmp_path / "p.pt")])
        assert exit.value.code == 2
        err = capsys.readouterr().err
        assert "argument --ops: expected a comma list of shuffle, negpos, ffx, scramble, each at most once" in err
        assert message in err
    assert not any(tmp_path.glob("*.key")) and not (tmp_path / "p.pt").exists()


def test_models_and_keys_that_do_not_fit(plain, tmp_path, capsys):
    path, _, _ = plain
    key, out = tmp_path / "k.key", tmp_path / "p.pt"
    KeySet.generate(2, 3).save(key)
    assert main(["protect-model", "--model", str(path), "--key", str(key), "--ops", "shuffle", "--out", str(out)]) == 2
    assert "key is for 2x2 blocks" in capsys.readouterr().err
    KeySet.generate(4, 3).save(key, overwrite=True)
    assert main(["protect-model", "--model", str(path), "--key", str(key), "--ops", "scramble",
                 "--out", str(out)]) == 2
    assert "no block-scrambling key" in capsys.readouterr().err
    assert main(["protect-model", "--model", str(path), "--key", str(key), "--ops", "shuffle", "--out", str(out)]) == 0
    assert main(["protect-model", "--model", str(out), "--key", str(key), "--ops", "shuffle",
                 "--out", str(tmp_path / "q.pt")]) == 2
    assert "already a protected model" in capsys.readouterr().err
    cnn = tmp_path / "cnn.pt"
    ProtectedModel(create_model("small_cnn", 10), Normalize(*STATS)).save(cnn)
    assert main(["protect-model", "--model", str(cnn), "--key", str(key), "--ops", "shuffle",
                 "--out", str(tmp_path / "q.pt")]) == 2
    assert "only models with a patch embedding" in capsys.readouterr().err
    assert main(["protect-model", "--model", str(path), "--key", str(key), "--ops", "shuffle",
                 "--out", str(path)]) == 2
    assert "--out is the input model" in capsys.readouterr().err
