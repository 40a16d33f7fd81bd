"""ProtectedModel: outputs, the saved file (no key; settings bound to the fingerprint), clear errors."""
import standins
import os

import pytest
import torch

from kpfast.errors import CheckpointError, KeyMismatchError
from kpfast.models import create_model
from kpfast.normalize import Normalize
from kpfast.protection import model as protected
from kpfast.protection.model import KeyMismatchWarning, ProtectedModel

SHAPE = (3, 16, 16)


class FakeKey(standins.FakeKey):
    def __init__(self, seed: int) -> None:
        super().__init__(seed, SHAPE)


PixelShuffle = standins.PixelShuffle


@pytest.fixture
def stand_in_registry(monkeypatch):
    # Load "block" transforms with the stand-in instead of kpfast.BlockTransform.
    monkeypatch.setitem(protected._TRANSFORMS, "block", lambda: PixelShuffle)


@pytest.fixture
def images():
    return torch.randint(0, 256, (4, *SHAPE), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))


def make_protected(key_seed: int = 0) -> ProtectedModel:
    torch.manual_seed(0)
    return ProtectedModel(create_model("small_cnn", 5), PixelShuffle(FakeKey(key_seed))).eval()


def test_uint8_and_unit_float_inputs_agree(images):
    pm = make_protected()
    with torch.no_grad():
        torch.testing.assert_close(pm(images), pm(images.float() / 255))


def test_round_trip_gives_identical_outputs(tmp_path, images, stand_in_registry):
    pm = make_protected()
    pm.model.train()(pm.transform(images))  # move BN running stats away from their defaults
    pm.eval()
    pm.save(tmp_path / "m.pt")
    loaded = ProtectedModel.load(tmp_path / "m.pt", FakeKey(0))
    assert not loaded.training
    with torch.no_grad():
        assert torch.equal(loaded(images), pm(images))
    assert loaded.key_fingerprint == FakeKey(0).fingerprint()


def test_plain_model_round_trip(tmp_path, images):
    pm = ProtectedModel(create_model("resnet20", 10), Normalize((0.5,) * 3, (0.25,) * 3)).eval()
    pm.save(tmp_path / "plain.pt")
    loaded = ProtectedModel.load(tmp_path / "plain.pt")
    with torch.no_grad():
        assert torch.equal(loaded(images), pm(images))
    assert torch.load(tmp_path / "plain.pt", weights_only=True)["key_fingerprint"] is None


def test_checkpoint_holds_no_key(tmp_path):
    pm = make_protected()
    pm.save(tmp_path / "m.pt")
    perm = pm.transform.perm
    # Not in the raw bytes (in any dtype it could plausibly be stored as) ...
    raw = (tmp_path / "m.pt").read_bytes()
    for dtype in (torch.int64, torch.int32, torch.int16):
        assert perm.to(dtype).numpy().tobytes() not in raw
    # ... nor among the tensors, and the file says which key it needs by fingerprint only.
    checkpoint = torch.load(tmp_path / "m.pt", weights_only=True)
    assert not any(t.numel() == perm.numel() and torch.equal(t.flatten().long(), perm)
                   for t in checkpoint["state_dict"].values())
    assert set(checkpoint["state_dict"]) == set(pm.model.state_dict())
    assert checkpoint["key_fingerprint"] == FakeKey(0).fingerprint()
    assert checkpoint["arch"] == "small_cnn" and checkpoint["num_classes"] == 5
    assert "perm" not in str(checkpoint["transform"])


def test_wrong_key_raises_or_warns(tmp_path, images, stand_in_registry):
    pm = make_protected()
    pm.save(tmp_path / "m.pt")
    with pytest.raises(KeyMismatchError, match="wrong key"):
        ProtectedModel.load(tmp_path / "m.pt", FakeKey(1))
    with pytest.warns(KeyMismatchWarning, match="wrong key"):
        attacker = ProtectedModel.load(tmp_path / "m.pt", FakeKey(1), on_mismatch="warn")
    with torch.no_grad():
        assert not torch.equal(attacker(images), pm(images))


def test_missing_key_is_an_error(tmp_path):
    make_protected().save(tmp_path / "m.pt")
    with pytest.raises(ValueError, match="needs a secret key"):
        ProtectedModel.load(tmp_path / "m.pt")


def test_failed_save_leaves_the_old_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "m.pt"
    pm = make_protected()
    pm.save(path)
    before = path.read_bytes()
    with torch.no_grad():
        for p in pm.parameters():
            p.add_(1.0)

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        pm.save(path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["m.pt"]  # the temporary file was cleaned up


def test_rejects_transforms_that_would_save_tensors():
    class Leaky(PixelShuffle):
        def __init__(self, key):
            super().__init__(key)
            self.register_buffer("saved_perm", key.perm.clone())  # persistent: would be saved

    with pytest.raises(ValueError, match="persistent=False"):
        ProtectedModel(create_model("small_cnn", 5), Leaky(FakeKey(0)))


def test_not_a_checkpoint(tmp_path):
    torch.save({"hello": 1}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="not a kpfast protected-model checkpoint"):
        ProtectedModel.load(tmp_path / "x.pt")
    for name, content in (("empty.pt", b""), ("text.pt", b"hello"), ("half.pt", None)):
        if content is None:  # a truncated torch file
            make_protected().save(tmp_path / "whole.pt")
            content = (tmp_path / "whole.pt").read_bytes()[:500]
        (tmp_path / name).write_bytes(content)
        with pytest.raises(CheckpointError, match=f"{name} is not a readable model checkpoint"):
            ProtectedModel.load(tmp_path / name)
    with pytest.raises(CheckpointError, match="model checkpoint not found"):
        ProtectedModel.load(tmp_path / "missing.pt")


def edited(path, tmp_path, edit):
    """A copy of the saved model at `path` with `edit` applied to its dict (as a user or an attacker could)."""
    checkpoint = torch.load(path, weights_only=True)
    edit(checkpoint)
    torch.save(checkpoint, tmp_path / "edited.pt")
    return tmp_path / "edited.pt"


def test_edited_settings_are_refused(tmp_path, images):
    """The transform config is bound to the key fingerprint: an edited chain or type does not
    load, with the right key or without one, instead of serving a model that ignores its key."""
    from kpfast import BlockTransform, KeySet

    keys = KeySet.generate(4)
    transform = BlockTransform(keys, ["shuffle", "negpos", "ffx"], mean=(0.5,) * 3, std=(0.25,) * 3)
    ProtectedModel(create_model("small_cnn", 5), transform).save(tmp_path / "m.pt")
    ProtectedModel.load(tmp_path / "m.pt", keys)  # untouched: loads

    def shuffle_only(c):
        c["transform"]["ops"] = ["shuffle"]

    def key_free(c):
        c["transform"] = {"type": "normalize", "mean": [0.5] * 3, "std": [0.25] * 3}

    def key_free_and_no_fingerprint(c):
        key_free(c)
        c["key_fingerprint"] = None

    for edit in (shuffle_only, key_free, key_free_and_no_fingerprint):
        path = edited(tmp_path / "m.pt", tmp_path, edit)
        with pytest.raises(CheckpointError, match="edited or damaged"):
            ProtectedModel.load(path, keys)
        with pytest.raises(CheckpointError, match="edited or damaged"):
            ProtectedModel.load(path)


def test_missing_fingerprint_unknown_type_and_old_version_are_clear_errors(tmp_path):
    make_protected().save(tmp_path / "m.pt")

    def drop_fingerprint(c):
        del c["key_fingerprint"]

    with pytest.raises(CheckpointError, match="has no key_fingerprint entry"):
        ProtectedModel.load(edited(tmp_path / "m.pt", tmp_path, drop_fingerprint), FakeKey(0))

    def unknown_type(c):  # a consistent file of a type this kpfast does not know (a newer one wrote it)
        c["transform"]["type"] = "rotate"
        c["binding"] = protected.binding(c["transform"], c["key_fingerprint"])

    with pytest.raises(CheckpointError, match="unknown transform type 'rotate'"):
        ProtectedModel.load(edited(tmp_path / "m.pt", tmp_path, unknown_type), FakeKey(0))

    def version_1(c):  # written before the settings digest existed
        c["version"] = 1
        del c["binding"]

    with pytest.raises(CheckpointError, match="unsupported checkpoint version 1.*without a settings digest"):
        ProtectedModel.load(edited(tmp_path / "m.pt", tmp_path, version_1), FakeKey(0))


def test_round_trip_with_the_real_block_transform(tmp_path, images):
    from kpfast import BlockTransform, KeySet

    keys, other = KeySet.generate(4), KeySet.generate(4)
    torch.manual_seed(0)
    transform = BlockTransform(keys, ["shuffle", "negpos", "ffx"], mean=(0.5,) * 3, std=(0.25,) * 3)
    pm = ProtectedModel(create_model("small_cnn", 5), transform).eval()
    pm.save(tmp_path / "m.pt")

    loaded = ProtectedModel.load(tmp_path / "m.pt", keys)
    with torch.no_grad():
        assert torch.equal(loaded(images), pm(images))
    raw = (tmp_path / "m.pt").read_bytes()
    assert keys.perm.numpy().tobytes() not in raw and keys.ffx_password not in raw
    with pytest.raises(KeyMismatchError):
        ProtectedModel.load(tmp_path / "m.pt", other)
    with pytest.raises(ValueError, match="needs a secret key"):
        ProtectedModel.load(tmp_path / "m.pt")
