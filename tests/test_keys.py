"""KeySet: reference-compatible derivation, CSPRNG generation, identity, and the key file."""

import hashlib
import json
import os
import pickle
import random
import stat
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kpfast.ffx import ffx_table
from kpfast.keys import KeyFileError, KeySet

SEED42_PERM = [6, 16, 2, 7, 0, 5, 46, 34, 38, 29, 12, 9, 8, 17, 15, 37, 19, 47, 45, 28, 21, 13, 18, 3,
               35, 11, 27, 42, 24, 1, 26, 22, 43, 14, 39, 4, 20, 30, 40, 33, 23, 10, 32, 36, 41, 44, 31, 25]
SEED42_MASK = {6, 7, 8, 9, 15, 17, 18, 19, 24, 26, 27, 30, 32, 34, 37, 38, 39, 42, 43, 44, 45, 46, 47}
# Recognisable in any dump: hex "deadbeefcafebabe...".
MARKED_PASSWORD = bytes.fromhex("deadbeefcafebabe0123456789abcdef")


def small_key(**overrides) -> KeySet:
    args = dict(block_size=1, channels=4, perm=[2, 0, 3, 1], np_mask=[True, False, False, True],
                ffx_mask=[False, True, False, False], ffx_password=MARKED_PASSWORD)
    args.update(overrides)
    return KeySet(**args)


def rng_states():
    return torch.get_rng_state(), np.random.get_state(), random.getstate()


def assert_same_rng_states(before, after) -> None:
    assert torch.equal(before[0], after[0])
    assert before[1][0] == after[1][0] and np.array_equal(before[1][1], after[1][1]) and before[1][2:] == after[1][2:]
    assert before[2] == after[2]


# --- reference-compatible derivation ------------------------------------------------------

def test_from_seed_vectors() -> None:
    key = KeySet.from_seed(42, block_size=4, channels=3)
    assert key.num_positions == 48
    assert key.perm.dtype == torch.int64 and key.perm.tolist() == SEED42_PERM
    for mask in (key.np_mask, key.ffx_mask):
        assert mask.dtype == torch.bool
        assert set(mask.nonzero().flatten().tolist()) == SEED42_MASK
        assert int(mask.sum()) == 23
    assert KeySet.from_seed(0, block_size=1, channels=10).perm.tolist() == [4, 1, 7, 5, 3, 9, 0, 8, 6, 2]


def test_from_seed_lut() -> None:
    key = KeySet.from_seed(42, block_size=4)
    assert key.ffx_lut.dtype == torch.int64 and key.ffx_lut.shape == (256,)
    assert key.ffx_lut[:8].tolist() == [355, 522, 858, 133, 916, 326, 747, 930]
    assert key.ffx_max == 996
    assert key.ffx_inverse_lut.shape == (997,)
    assert torch.equal(key.ffx_inverse_lut[key.ffx_lut], torch.arange(256))
    assert int((key.ffx_inverse_lut >= 0).sum()) == 256
    assert KeySet.from_seed(42, 4, password=b"password") == key
    assert KeySet.from_seed(42, 4, password="other") != key


@pytest.mark.parametrize("seed, block_size, channels", [(42, 4, 3), (0, 2, 3), (123456789, 16, 3), (2**40 + 7, 32, 3), (-5, 3, 1)])
def test_from_seed_matches_global_seeding(seed: int, block_size: int, channels: int) -> None:
    length = block_size * block_size * channels
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        expected = torch.randperm(length)
    key = KeySet.from_seed(seed, block_size, channels)
    assert torch.equal(key.perm, expected)
    assert torch.equal(key.np_mask, expected > length / 2)


def test_from_seed_and_generate_leave_global_rngs_untouched() -> None:
    before = rng_states()
    KeySet.from_seed(42, 4)
    KeySet.generate(4)
    assert_same_rng_states(before, rng_states())


# --- CSPRNG generation --------------------------------------------------------------------

@pytest.mark.parametrize("block_size, channels", [(1, 1), (2, 3), (4, 3), (8, 1)])
def test_generate_is_valid(block_size: int, channels: int) -> None:
    key = KeySet.generate(block_size, channels)
    length = block_size * block_size * channels
    assert (key.block_size, key.channels, key.num_positions) == (block_size, channels, length)
    assert sorted(key.perm.tolist()) == list(range(length))
    assert key.np_mask.shape == key.ffx_mask.shape == (length,)
    assert len(key.ffx_password) == 16


def test_generate_gives_different_keys() -> None:
    a, b = KeySet.generate(4), KeySet.generate(4)
    assert a != b and a.fingerprint() != b.fingerprint()
    assert a.ffx_password != b.ffx_password and not torch.equal(a.perm, b.perm)


def test_generate_is_roughly_uniform(monkeypatch: pytest.MonkeyPatch) -> None:
    # Bands are ~6-10 standard deviations wide: a false failure is astronomically unlikely,
    # while a stuck bit, a biased mask or a fixed permutation position is still caught.
    # The FFX table is not examined here; skipping it keeps the test fast.
    monkeypatch.setattr("kpfast.keys.ffx_table", lambda password: list(range(256)))
    n, length = 300, 12
    keys = [KeySet.generate(2, 3) for _ in range(n)]
    np_freq = torch.stack([k.np_mask for k in keys]).double().mean(0)
    ffx_freq = torch.stack([k.ffx_mask for k in keys]).double().mean(0)
    assert ((np_freq > 0.2) & (np_freq < 0.8)).all()
    assert ((ffx_freq > 0.2) & (ffx_freq < 0.8)).all()
    # The two masks are independent, not one mask used twice.
    agree = torch.stack([k.np_mask == k.ffx_mask for k in keys]).double().mean()
    assert 0.4 < agree < 0.6
    perms = torch.stack([k.perm for k in keys])
    counts = torch.zeros(length, length)  # counts[position, value]
    counts.scatter_add_(1, perms.T, torch.ones(length, n))
    assert counts.max() < 70  # expected 25 per cell, sd ~4.8


# --- validation ---------------------------------------------------------------------------

@pytest.mark.parametrize("overrides, message", [
    (dict(block_size=0), "block_size"),
    (dict(block_size=1.0), "block_size"),
    (dict(block_size=True), "block_size"),
    (dict(channels=0), "channels"),
    (dict(channels="4"), "channels"),
    (dict(perm=[0, 1, 2]), "perm"),
    (dict(perm=[0, 1, 2, 2]), "not a permutation"),
    (dict(perm=[0, 1, 2, 4]), "not a permutation"),
    (dict(perm=[-1, 0, 1, 2]), "not a permutation"),
    (dict(perm=[0.0, 1.0, 2.0, 3.0]), "integers"),
    (dict(perm=[[0, 1, 2, 3]]), "perm"),
    (dict(perm="0123"), "perm"),
    (dict(perm=[0, 1, 2, 2**70]), "perm"),
    (dict(np_mask=[True, False]), "np_mask"),
    (dict(np_mask=[1, 0, 0, 1]), "boolean"),
    (dict(ffx_mask=[True] * 5), "ffx_mask"),
    (dict(ffx_mask=torch.ones(4)), "boolean"),
    (dict(ffx_password=b""), "empty"),
    (dict(ffx_password="password"), "bytes"),
])
def test_constructor_rejects_bad_arguments(overrides, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        small_key(**overrides)


def test_constructor_accepts_tensors_and_arrays_and_copies_them() -> None:
    perm = np.array([2, 0, 3, 1], dtype=np.int32)
    mask = torch.tensor([True, False, False, True])
    key = small_key(perm=perm, np_mask=mask)
    perm[0] = 0
    mask[0] = False
    assert key == small_key()
    assert key.perm.dtype == torch.int64 and key.perm.device.type == "cpu"


def test_keyset_is_immutable() -> None:
    key = small_key()
    with pytest.raises(AttributeError):
        key.perm = torch.arange(4)  # type: ignore[misc]
    with pytest.raises(AttributeError):
        key._perm = torch.arange(4)  # type: ignore[misc]


@pytest.mark.parametrize("kwargs", [dict(seed=1.5, block_size=2), dict(seed=1, block_size=0)])
def test_from_seed_rejects_bad_arguments(kwargs) -> None:
    with pytest.raises(ValueError):
        KeySet.from_seed(**kwargs)


# --- identity, repr, pickle ---------------------------------------------------------------

def test_equality_and_fingerprint() -> None:
    a, b = small_key(), small_key()
    assert a == b and hash(a) == hash(b) and a.fingerprint() == b.fingerprint()
    assert len(a.fingerprint()) == 16 and int(a.fingerprint(), 16) >= 0
    for other in (small_key(perm=[0, 1, 2, 3]), small_key(np_mask=[False] * 4),
                  small_key(ffx_mask=[False] * 4), small_key(ffx_password=b"x"),
                  small_key(block_size=2, channels=1)):
        assert other != a and other.fingerprint() != a.fingerprint()
    assert a != "not a key"
    assert len({a, b}) == 1


def test_repr_and_str_hide_key_material() -> None:
    key = KeySet.generate(2, 3)
    key = KeySet(2, 3, key.perm, key.np_mask, key.ffx_mask, MARKED_PASSWORD)
    for text in (repr(key), str(key), f"{key}"):
        assert text == f"KeySet(block_size=2, channels=3, fingerprint={key.fingerprint()})"
        assert "deadbeef" not in text.lower() and "tensor" not in text and "[" not in text


def test_pickle_round_trip() -> None:
    key = KeySet.generate(4)
    copy = pickle.loads(pickle.dumps(key))
    assert copy == key and copy.fingerprint() == key.fingerprint()
    assert torch.equal(copy.ffx_lut, key.ffx_lut) and torch.equal(copy.ffx_inverse_lut, key.ffx_inverse_lut)
    assert copy.ffx_max == key.ffx_max


@settings(max_examples=25, deadline=None)
@given(block_size=st.integers(1, 4), channels=st.integers(1, 3), password=st.binary(min_size=1, max_size=32),
       data=st.data())
def test_any_valid_key_survives_pickle(block_size: int, channels: int, password: bytes, data: st.DataObject) -> None:
    length = block_size * block_size * channels
    perm = data.draw(st.permutations(range(length)))
    masks = [data.draw(st.lists(st.booleans(), min_size=length, max_size=length)) for _ in range(2)]
    key = KeySet(block_size, channels, perm, masks[0], masks[1], password)
    assert pickle.loads(pickle.dumps(key)) == key
    assert torch.equal(key.ffx_lut, torch.tensor(ffx_table(password)))


# --- key files ----------------------------------------------------------------------------

def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_save_load_round_trip(tmp_path: Path) -> None:
    key = KeySet.generate(4)
    path = tmp_path / "key.json"
    key.save(path)
    loaded = KeySet.load(str(path))
    assert loaded == key and loaded.fingerprint() == key.fingerprint()
    assert mode(path) == 0o600
    assert os.listdir(tmp_path) == ["key.json"]  # no temp file left behind


def test_save_format_is_documented_json(tmp_path: Path) -> None:
    path = tmp_path / "key.json"
    small_key().save(path)
    doc = json.loads(path.read_text())
    assert doc["format"] == "kpfast-keyset" and doc["version"] == 1
    assert doc["perm"] == [2, 0, 3, 1] and doc["np_mask"] == "1001" and doc["ffx_mask"] == "0100"
    assert doc["ffx_password"] == MARKED_PASSWORD.hex() and len(doc["sha256"]) == 64


def test_overwrite_keeps_owner_only_mode(tmp_path: Path) -> None:
    path = tmp_path / "key.json"
    path.write_text("old")
    path.chmod(0o644)
    key = KeySet.generate(2)
    key.save(path)
    assert mode(path) == 0o600 and KeySet.load(path) == key


def test_failed_save_leaves_existing_file_intact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "key.json"
    small_key().save(path)
    before = path.read_bytes()

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        KeySet.generate(2).save(path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["key.json"]


def test_load_warns_when_group_or_others_can_read(tmp_path: Path) -> None:
    path = tmp_path / "key.json"
    small_key().save(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        KeySet.load(path)  # 0o600: no warning
    path.chmod(0o644)
    with pytest.warns(UserWarning, match="group/others"):
        assert KeySet.load(path) == small_key()


def write_doc(path: Path, doc: dict, fix_checksum: bool = True) -> None:
    """Write a key file document, recomputing its checksum so the content checks are reached."""
    doc = dict(doc)
    if fix_checksum:
        fields = {k: v for k, v in doc.items() if k != "sha256"}
        canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        doc["sha256"] = hashlib.sha256(canonical.encode("ascii")).hexdigest()
    path.write_text(json.dumps(doc))
    path.chmod(0o600)


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Path, dict]:
    path = tmp_path / "key.json"
    small_key().save(path)
    return path, json.loads(path.read_text())


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="not found"):
        KeySet.load(tmp_path / "nope.json")


def test_load_truncated_file(saved) -> None:
    path, _ = saved
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(KeyFileError, match="truncated or not JSON"):
        KeySet.load(path)
    path.write_bytes(b"\xff\xfe garbage")
    with pytest.raises(KeyFileError, match="truncated or not JSON"):
        KeySet.load(path)


def test_load_edited_field_fails_checksum(saved) -> None:
    path, doc = saved
    doc["perm"] = [0, 1, 2, 3]
    write_doc(path, doc, fix_checksum=False)
    with pytest.raises(KeyFileError, match="edited or corrupted"):
        KeySet.load(path)


@pytest.mark.parametrize("field, value, message", [
    ("format", "something-else", "not a kpfast key file"),
    ("version", 2, r"unsupported key file version 2; supported versions: 1"),
    ("version", "1", "unsupported key file version"),
    ("perm", [0, 1, 2, 2], "not a permutation"),
    ("perm", [0, 1, 2], "perm must have shape"),
    ("perm", "0123", "list of integers"),
    ("np_mask", "100", "np_mask must have shape"),
    ("ffx_mask", "10011", "ffx_mask must have shape"),
    ("ffx_mask", "10x1", "'0'/'1'"),
    ("ffx_password", "zz", "hex"),
    ("ffx_password", "", "empty"),
    ("block_size", 2, "shape"),
    ("channels", 0, "channels"),
])
def test_load_rejects_invalid_content(saved, field: str, value, message: str) -> None:
    path, doc = saved
    doc[field] = value
    write_doc(path, doc)
    with pytest.raises(KeyFileError, match=message):
        KeySet.load(path)


@pytest.mark.parametrize("field", ["perm", "ffx_password", "sha256", "version"])
def test_load_rejects_missing_field(saved, field: str) -> None:
    path, doc = saved
    del doc[field]
    write_doc(path, doc, fix_checksum=field != "sha256")
    with pytest.raises(KeyFileError, match="missing field|version"):
        KeySet.load(path)


def test_load_rejects_unknown_field_and_non_object(saved) -> None:
    path, doc = saved
    write_doc(path, {**doc, "comment": "hi"})
    with pytest.raises(KeyFileError, match="unknown field"):
        KeySet.load(path)
    path.write_text("[1, 2, 3]")
    with pytest.raises(KeyFileError, match="not a kpfast key file"):
        KeySet.load(path)


def test_key_file_error_is_a_value_error() -> None:
    assert issubclass(KeyFileError, ValueError)
