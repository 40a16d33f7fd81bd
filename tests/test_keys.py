"""KeySet: reference-compatible derivation, CSPRNG generation, identity, and the key file."""

import copy
import hashlib
import json
import multiprocessing.context
import os
import pickle
import random
import stat
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import kpfast.errors
import kpfast.keys
from kpfast.errors import ConfigError, KpfastError, OutputExistsError
from kpfast.ffx import ffx_table
from kpfast.keys import InvalidKeyError, KeyFileError, KeyPicklingError, KeySet

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


@contextmanager
def spawning():
    """Pickle as multiprocessing does while it starts a spawn/forkserver child."""
    multiprocessing.context.set_spawning_popen(object())
    try:
        yield
    finally:
        multiprocessing.context.set_spawning_popen(None)


@pytest.fixture
def no_ffx_tables(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if any FFX table is derived from a password."""
    def refuse(password):
        raise AssertionError("an FFX table was derived")

    monkeypatch.setattr(kpfast.keys, "cached_ffx_table", refuse)


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


def test_generate_is_roughly_uniform(no_ffx_tables) -> None:
    # Bands are ~6-10 standard deviations wide: a false failure is astronomically unlikely,
    # while a stuck bit, a biased mask or a fixed permutation position is still caught.
    # The FFX table is not examined here, and generate does not derive it (no_ffx_tables).
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


def test_pickle_is_refused_and_points_to_save() -> None:
    key = small_key()
    with pytest.raises(KeyPicklingError, match=r"KeySet.save\(path\)") as info:
        pickle.dumps(key)
    assert isinstance(info.value, KpfastError) and isinstance(info.value, pickle.PicklingError)
    assert "deadbeef" not in str(info.value)


def test_pickle_round_trip_while_spawning_a_process() -> None:
    key = KeySet.generate(4)
    with spawning():
        copy = pickle.loads(pickle.dumps(key))
    assert copy == key and copy.fingerprint() == key.fingerprint()
    assert torch.equal(copy.ffx_lut, key.ffx_lut) and torch.equal(copy.ffx_inverse_lut, key.ffx_inverse_lut)
    assert copy.ffx_max == key.ffx_max


def test_copy_and_deepcopy_return_the_immutable_key() -> None:
    key = small_key()
    assert copy.copy(key) is key and copy.deepcopy(key) is key
    assert copy.deepcopy([key, key])[0] is key


@settings(max_examples=25, deadline=None)
@given(block_size=st.integers(1, 4), channels=st.integers(1, 3), password=st.binary(min_size=1, max_size=32),
       data=st.data())
def test_any_valid_key_survives_pickle(block_size: int, channels: int, password: bytes, data: st.DataObject) -> None:
    length = block_size * block_size * channels
    perm = data.draw(st.permutations(range(length)))
    masks = [data.draw(st.lists(st.booleans(), min_size=length, max_size=length)) for _ in range(2)]
    key = KeySet(block_size, channels, perm, masks[0], masks[1], password)
    with spawning():
        assert pickle.loads(pickle.dumps(key)) == key
        tables = KeySet.from_tables(perm, masks[0], masks[1], key.ffx_lut, block_size=block_size, channels=channels)
        assert pickle.loads(pickle.dumps(tables)) == tables
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
    key.save(path, overwrite=True)
    assert mode(path) == 0o600 and KeySet.load(path) == key


def test_save_refuses_to_overwrite_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "key.json"
    small_key().save(path)
    before = path.read_bytes()
    with pytest.raises(OutputExistsError, match=f"{path} exists; refusing to overwrite.*overwrite=True"):
        KeySet.generate(2).save(path)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["key.json"]
    # a dangling symlink is something the user has too
    link = tmp_path / "link.json"
    link.symlink_to(tmp_path / "elsewhere.json")
    with pytest.raises(OutputExistsError, match="exists"):
        small_key().save(link)
    assert link.is_symlink() and not link.exists()


def test_failed_save_leaves_existing_file_intact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "key.json"
    small_key().save(path)
    before = path.read_bytes()

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        KeySet.generate(2).save(path, overwrite=True)
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
    ("version", 3, r"unsupported key file version 3; supported versions: 1, 2"),
    ("version", 2, "missing field.*grid, block_perm"),
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
    assert KeyFileError is kpfast.errors.KeyFileError and issubclass(KeyFileError, KpfastError)
    assert issubclass(InvalidKeyError, ConfigError) and issubclass(InvalidKeyError, ValueError)
    assert issubclass(OutputExistsError, FileExistsError) and issubclass(KeyPicklingError, KpfastError)


# --- limits and hostile key files -----------------------------------------------------------

@pytest.mark.parametrize("make", [
    lambda: KeySet.generate(100000),
    lambda: KeySet.generate_many(2, 1025, 1),
    lambda: KeySet.from_seed(1, 100000),
    lambda: small_key(block_size=2**40, perm=[0]),
    lambda: KeySet.from_tables([0], [False], [False], list(range(256)), block_size=2**32),
])
def test_absurd_sizes_name_the_limit(make) -> None:
    with pytest.raises(InvalidKeyError, match=r"exceeds the limit of 1048576 \(kpfast.keys.MAX_POSITIONS\)"):
        make()


def test_largest_valid_key_file_loads_well_under_the_read_cap(tmp_path: Path) -> None:
    assert kpfast.keys.MAX_POSITIONS == 1 << 20
    key = KeySet.generate(1024, 1)  # L = MAX_POSITIONS
    path = tmp_path / "big.json"
    key.save(path)
    assert path.stat().st_size * 4 < kpfast.keys.MAX_KEY_FILE_BYTES
    assert KeySet.load(path) == key


def test_load_caps_the_size_it_reads(tmp_path: Path) -> None:
    path = tmp_path / "huge.json"
    with open(path, "wb") as f:
        f.truncate(kpfast.keys.MAX_KEY_FILE_BYTES + 1)
    path.chmod(0o600)
    with pytest.raises(KeyFileError, match=f"{path} is not a key file: larger than"):
        KeySet.load(path)


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")
def test_load_of_an_endless_file_stops() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # /dev/zero is world-readable
        with pytest.raises(KeyFileError, match="/dev/zero is not a key file: larger than"):
            KeySet.load("/dev/zero")


def test_load_of_a_directory(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match=f"cannot read key file {tmp_path}"):
        KeySet.load(tmp_path)


@pytest.mark.parametrize("text", [
    "[" * 100_000 + "]" * 100_000,               # RecursionError in the JSON parser
    '{"a": ' * 50_000 + "1" + "}" * 50_000,
    '{"perm": ' + "9" * 5000 + "}",               # int longer than Python converts
    "\x00" * 10,
    "",
])
def test_load_turns_any_parse_failure_into_a_key_file_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(text)
    path.chmod(0o600)
    with pytest.raises(KeyFileError, match=f"^{path}"):
        KeySet.load(path)


@pytest.mark.parametrize("field, value", [
    ("perm", [[[[[[0]]]]]] * 4),
    ("perm", [1e300, 0, 1, 2]),
    ("perm", [float("nan")] * 4),
    ("block_size", float("inf")),
    ("block_size", [1]),
    ("channels", {"a": 1}),
    ("np_mask", ["1", "0", "0", "1"]),
    ("ffx_password", ["ab"]),
    ("perm", "[" * 900 + "]" * 900),
])
def test_load_rejects_odd_field_types(saved, field: str, value) -> None:
    path, doc = saved
    doc[field] = json.loads(value) if isinstance(value, str) and value.startswith("[") else value
    write_doc(path, doc)
    with pytest.raises(KeyFileError, match=f"^{path}"):
        KeySet.load(path)


# --- lazy FFX table, cached per password -------------------------------------------------------

@pytest.fixture
def count_tables(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The passwords whose FFX table is derived (kpfast.ffx.ffx_table calls)."""
    calls: list[bytes] = []
    real = kpfast.ffx.ffx_table

    def counting(password, *args, **kwargs):
        calls.append(password)
        return real(password, *args, **kwargs)

    kpfast.ffx.cached_ffx_table.cache_clear()
    monkeypatch.setattr(kpfast.ffx, "ffx_table", counting)
    yield calls
    kpfast.ffx.cached_ffx_table.cache_clear()


def test_ffx_table_is_derived_on_first_use_once_per_password(count_tables: list[bytes]) -> None:
    a = small_key()
    assert count_tables == []  # the constructor derives nothing
    assert torch.equal(a.ffx_lut, torch.tensor(ffx_table(MARKED_PASSWORD)))
    b = small_key(perm=[0, 1, 2, 3])  # another key with the same password
    assert torch.equal(b.ffx_lut, a.ffx_lut) and b.ffx_max == a.ffx_max
    assert count_tables == [MARKED_PASSWORD]
    assert kpfast.ffx.cached_ffx_table.cache_info().maxsize == kpfast.ffx.TABLE_CACHE_SIZE


def test_ffx_table_cache_is_bounded(count_tables: list[bytes]) -> None:
    size = kpfast.ffx.TABLE_CACHE_SIZE
    passwords = [i.to_bytes(4, "big") for i in range(size + 1)]
    for p in passwords:
        kpfast.ffx.cached_ffx_table(p)
    assert kpfast.ffx.cached_ffx_table.cache_info().currsize == size
    kpfast.ffx.cached_ffx_table(passwords[0])  # the oldest was dropped
    assert count_tables == passwords + passwords[:1]


def test_inverse_lut_matches_its_definition() -> None:
    key = KeySet.generate(2)
    lut, inverse = key.ffx_lut.numpy(), key.ffx_inverse_lut.numpy()
    want = np.full(lut.max() + 1, -1)
    for v, code in enumerate(lut):
        want[code] = v
    assert np.array_equal(inverse, want) and key.ffx_max == lut.max()


# --- generate(rng=...) and generate_many ------------------------------------------------------

def test_generate_many_draws_no_ffx_table_and_valid_keys(no_ffx_tables) -> None:
    keys = KeySet.generate_many(500, 2, 3)
    assert len(keys) == 500 and KeySet.generate_many(0, 4) == []
    for k in keys:
        assert (k.block_size, k.channels) == (2, 3) and sorted(k.perm.tolist()) == list(range(12))
        assert k.perm.dtype == torch.int64 and k.np_mask.dtype == k.ffx_mask.dtype == torch.bool
        assert len(k.ffx_password) == 16 and k.perm.untyped_storage().nbytes() == 12 * 8  # own storage
    assert len({k.ffx_password for k in keys}) == 500


@pytest.mark.parametrize("source", ["csprng", "numpy", "random", "torch"])
def test_generate_many_distribution(source: str, no_ffx_tables) -> None:
    # n = 20,000 keys of L = 12: every cell below has its expected count +- 8 standard deviations
    # (a false failure has probability < 1e-13 per cell), while a fixed position, a biased or
    # shared mask, masks tied to the permutation, or a permutation with uniform marginals but
    # dependent positions (e.g. a random rotation) fails by far.
    seed = int(torch.randint(1 << 30, ()))
    rng = {"csprng": None, "numpy": np.random.default_rng(seed), "random": random.Random(seed),
           "torch": torch.Generator().manual_seed(seed)}[source]
    n, L = 20_000, 12
    keys = KeySet.generate_many(n, 2, 3, rng=rng)
    perms = np.stack([k.perm.numpy() for k in keys])
    np_masks = np.stack([k.np_mask.numpy() for k in keys])
    ffx_masks = np.stack([k.ffx_mask.numpy() for k in keys])

    def within(count, expected, p):
        sd = (expected * (1 - p)) ** 0.5
        return np.abs(count - expected) < 8 * sd

    # every position takes every value, uniformly: counts[position, value] ~ n / L
    counts = np.zeros((L, L))
    np.add.at(counts, (np.arange(L)[None].repeat(n, 0), perms), 1)
    assert within(counts, n / L, 1 / L).all()
    # pairs of positions are jointly uniform over distinct values: n / (L (L-1)) per cell
    pairs = np.zeros((L, L))
    np.add.at(pairs, (perms[:, 0], perms[:, 1]), 1)
    assert (np.diag(pairs) == 0).all()
    off = ~np.eye(L, dtype=bool)
    assert within(pairs[off], n / (L * (L - 1)), 1 / (L * (L - 1))).all()
    for masks in (np_masks, ffx_masks):
        assert within(masks.sum(0), n / 2, 0.5).all()
        # independent of the permutation: P(mask[l] | perm[l] = v) = 1/2 for every (l, v)
        given = np.zeros((L, L))
        np.add.at(given, (np.arange(L)[None].repeat(n, 0), perms), masks)
        assert within(given, counts / 2, 0.5).all()
    # the two masks are independent of each other, bit by bit
    assert within((np_masks & ffx_masks).sum(0), n / 4, 0.25).all()


def test_generate_with_rng_is_reproducible_and_leaves_global_rngs_untouched() -> None:
    before = rng_states()
    for make in (lambda: np.random.default_rng(7), lambda: random.Random(7), lambda: torch.Generator().manual_seed(7)):
        assert KeySet.generate(4, rng=make()) == KeySet.generate(4, rng=make())
        assert KeySet.generate(4, rng=make()) == KeySet.generate_many(1, 4, rng=make())[0]
        assert KeySet.generate_many(3, 2, 1, rng=make()) == KeySet.generate_many(3, 2, 1, rng=make())
        rng = make()
        assert KeySet.generate(4, rng=rng) != KeySet.generate(4, rng=rng)
    assert KeySet.generate(4, rng=np.random.default_rng(7)) != KeySet.generate(4, rng=np.random.default_rng(8))
    assert_same_rng_states(before, rng_states())
    with pytest.raises(TypeError, match="rng must be"):
        KeySet.generate(4, rng=7)
    with pytest.raises(InvalidKeyError, match="n must be"):
        KeySet.generate_many(-1, 4)


def test_permutations_redraw_rows_with_ties() -> None:
    # A byte source whose first draw is all zeros (every row tied), then random bytes.
    draws = []

    def source(k: int) -> bytes:
        draws.append(k)
        return bytes(k) if len(draws) == 1 else os.urandom(k)

    perms = kpfast.keys._permutations(50, 9, source)
    assert perms.dtype == np.int64 and all(sorted(p) == list(range(9)) for p in perms.tolist())
    assert draws == [50 * 9 * 8, 50 * 9 * 8]
    assert len({tuple(p) for p in perms.tolist()}) > 40


# --- keys from tables, edits, agreement --------------------------------------------------------

def random_key_parts(L: int, g: torch.Generator):
    return (torch.randperm(L, generator=g), torch.rand(L, generator=g) < 0.5, torch.rand(L, generator=g) < 0.5)


def test_from_tables_keys_behave_like_keys() -> None:
    g = torch.Generator().manual_seed(int(torch.randint(1 << 30, ())))
    perm, np_mask, ffx_mask = random_key_parts(12, g)
    lut = torch.randperm(1000, generator=g)[:256]
    key = KeySet.from_tables(perm, np_mask, ffx_mask, lut, block_size=2)
    assert key.ffx_password is None and torch.equal(key.ffx_lut, lut) and key.ffx_max == int(lut.max())
    assert torch.equal(key.ffx_inverse_lut[lut], torch.arange(256))
    same = KeySet.from_tables(perm.tolist(), np_mask.tolist(), ffx_mask.tolist(), lut.tolist(), block_size=2, channels=3)
    assert same == key and hash(same) == hash(key) and same.fingerprint() == key.fingerprint()
    assert key.fingerprint() not in repr(lut.tolist()) and "tensor" not in repr(key)
    other = KeySet.from_tables(perm, np_mask, ffx_mask, lut.flip(0), block_size=2)
    assert other != key and other.fingerprint() != key.fingerprint()
    # the same table from a password: the same transform, another identity
    pw = KeySet.generate(2)
    as_table = KeySet.from_tables(pw.perm, pw.np_mask, pw.ffx_mask, pw.ffx_lut, block_size=2)
    assert as_table != pw and as_table.fingerprint() != pw.fingerprint()
    assert pw.agreement(as_table) == {"perm": 1.0, "np_mask": 1.0, "ffx_mask": 1.0, "ffx_lut": 1.0}


def test_from_tables_keys_are_not_saved(tmp_path: Path) -> None:
    key = KeySet.from_tables([0], [True], [False], range(256), block_size=1, channels=1)
    with pytest.raises(KeyFileError, match="no password"):
        key.save(tmp_path / "k.json")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("lut, message", [
    ([0] * 256, "injective"),
    (list(range(255)), r"shape \(256,\)"),
    (list(range(-1, 255)), r"\[0, 65535\]"),
    (list(range(65281, 65537)), r"\[0, 65535\]"),
    ([float(v) for v in range(256)], "integers"),
    ("abc", "ffx_lut"),
])
def test_from_tables_rejects_bad_tables(lut, message: str) -> None:
    with pytest.raises(InvalidKeyError, match=message):
        KeySet.from_tables([0], [True], [False], lut, block_size=1, channels=1)


def test_edits_match_their_definition() -> None:
    g = torch.Generator().manual_seed(int(torch.randint(1 << 30, ())))
    key = KeySet.generate(2, 3)
    L = 12
    i, j = torch.randperm(L, generator=g)[:2].tolist()
    swapped = key.swap(i, j)
    want = key.perm.tolist()
    want[i], want[j] = want[j], want[i]
    assert swapped.perm.tolist() == want and key.swap(i, i) == key
    assert torch.equal(swapped.np_mask, key.np_mask) and swapped.ffx_password == key.ffx_password
    assert swapped.swap(i, j) == key
    for op, name in (("negpos", "np_mask"), ("ffx", "ffx_mask")):
        flipped = key.flip(op, i)
        bits = getattr(key, name).tolist()
        bits[i] = not bits[i]
        assert getattr(flipped, name).tolist() == bits and flipped.flip(op, i) == key
        other = "ffx_mask" if name == "np_mask" else "np_mask"
        assert torch.equal(getattr(flipped, other), getattr(key, other)) and torch.equal(flipped.perm, key.perm)
    perm, np_mask, ffx_mask = random_key_parts(L, g)
    replaced = key.replace(perm=perm, np_mask=np_mask)
    assert replaced == KeySet(2, 3, perm, np_mask, key.ffx_mask, key.ffx_password)
    assert key.replace(ffx_mask=ffx_mask, ffx_password=b"x") == KeySet(2, 3, key.perm, key.np_mask, ffx_mask, b"x")
    lut = torch.randperm(999, generator=g)[:256]
    assert key.replace(ffx_lut=lut) == KeySet.from_tables(key.perm, key.np_mask, key.ffx_mask, lut, block_size=2)
    assert key.replace() == key


def test_edits_keep_the_ffx_table(count_tables: list[bytes]) -> None:
    key = KeySet.generate(4)
    key.ffx_lut
    edited = key.swap(0, 1).flip("negpos", 3).flip("ffx", 5).replace(perm=torch.randperm(48))
    assert torch.equal(edited.ffx_lut, key.ffx_lut)
    assert edited.ffx_lut is key.ffx_lut and count_tables == [key.ffx_password]
    tables = KeySet.from_tables(key.perm, key.np_mask, key.ffx_mask, key.ffx_lut, block_size=4)
    assert tables.swap(2, 3).ffx_lut is tables.ffx_lut


@pytest.mark.parametrize("edit, message", [
    (lambda k: k.swap(0, 4), r"j must be a position in \[0, 4\)"),
    (lambda k: k.swap(-1, 0), "i must be a position"),
    (lambda k: k.swap(0.0, 1), "i must be a position"),
    (lambda k: k.swap(0, 1, op="negpos"), "'shuffle' or 'scramble'"),
    (lambda k: k.swap(0, 1, op="scramble"), "no block-scrambling key"),
    (lambda k: k.flip("shuffle", 0), "'negpos' or 'ffx'"),
    (lambda k: k.flip("ffx", 4), "l must be a position"),
    (lambda k: k.replace(perm=[0, 0, 1, 2]), "not a permutation"),
    (lambda k: k.replace(np_mask=[1, 0, 0, 1]), "boolean"),
    (lambda k: k.replace(ffx_password=b"a", ffx_lut=list(range(256))), "not both"),
    (lambda k: k.replace(ffx_lut=[1] * 256), "injective"),
])
def test_edits_reject_bad_arguments(edit, message: str) -> None:
    with pytest.raises(InvalidKeyError, match=message):
        edit(small_key())


def test_agreement_against_numpy() -> None:
    g = torch.Generator().manual_seed(int(torch.randint(1 << 30, ())))
    a, b = KeySet.generate(4, rng=g), KeySet.generate(4, rng=g)
    got = a.agreement(b)
    assert got == {"perm": float(np.mean(a.perm.numpy() == b.perm.numpy())),
                   "np_mask": float(np.mean(a.np_mask.numpy() == b.np_mask.numpy())),
                   "ffx_mask": float(np.mean(a.ffx_mask.numpy() == b.ffx_mask.numpy())),
                   "ffx_lut": float(np.mean(a.ffx_lut.numpy() == b.ffx_lut.numpy()))}
    partly = a.swap(0, 1).flip("negpos", 2).flip("ffx", 3)
    assert a.agreement(partly) == {"perm": 46 / 48, "np_mask": 47 / 48, "ffx_mask": 47 / 48, "ffx_lut": 1.0}
    assert a.agreement(a) == {"perm": 1.0, "np_mask": 1.0, "ffx_mask": 1.0, "ffx_lut": 1.0}
    with pytest.raises(InvalidKeyError, match="different geometry"):
        a.agreement(KeySet.generate(2))
    with pytest.raises(TypeError):
        a.agreement("key")


# --- block-scrambling keys and key file version 2 ----------------------------------------------

def fingerprint_by_the_spec(fields: dict) -> str:
    """docs/semantics.md §2.1: 16 hex characters of SHA-256 over a domain tag and the canonical
    JSON of the key file's fields (without the checksum)."""
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    return hashlib.sha256(b"kpfast-keyset-fingerprint-v1\x00" + canonical).hexdigest()[:16]


def test_generate_with_a_grid_draws_a_block_permutation() -> None:
    before = rng_states()
    key = KeySet.generate(4, 3, grid=(7, 9))
    assert key.grid == (7, 9) and key.block_perm.dtype == torch.int64
    assert sorted(key.block_perm.tolist()) == list(range(63))
    assert KeySet.generate(4, 3, grid=(7, 9)).block_perm.tolist() != key.block_perm.tolist()
    assert_same_rng_states(before, rng_states())  # the CSPRNG, not the global generators
    plain = KeySet.generate(4, 3)
    assert plain.grid is None and plain.block_perm is None
    for make in (lambda: np.random.default_rng(3), lambda: torch.Generator().manual_seed(3)):
        a = KeySet.generate(2, 1, grid=(3, 4), rng=make())
        assert a == KeySet.generate_many(1, 2, 1, grid=(3, 4), rng=make())[0]
        # the in-block parts are drawn as without a grid
        assert torch.equal(a.perm, KeySet.generate(2, 1, rng=make()).perm)


def test_block_permutations_are_uniform(no_ffx_tables) -> None:
    # 20,000 keys, B = 12 locations: every (location, source) count within 8 standard deviations
    # of n / B, and pairs of locations jointly uniform over distinct sources (as for perm).
    n, B = 20_000, 12
    keys = KeySet.generate_many(n, 1, 1, grid=(3, 4), rng=np.random.default_rng(int(torch.randint(1 << 30, ()))))
    perms = np.stack([k.block_perm.numpy() for k in keys])
    counts = np.zeros((B, B))
    np.add.at(counts, (np.arange(B)[None].repeat(n, 0), perms), 1)
    assert (np.abs(counts - n / B) < 8 * (n / B * (1 - 1 / B)) ** 0.5).all()
    pairs = np.zeros((B, B))
    np.add.at(pairs, (perms[:, 0], perms[:, 1]), 1)
    expected = n / (B * (B - 1))
    off = ~np.eye(B, dtype=bool)
    assert (np.diag(pairs) == 0).all() and (np.abs(pairs[off] - expected) < 8 * expected ** 0.5).all()
    csprng = KeySet.generate_many(200, 1, 1, grid=(3, 4))
    assert len({tuple(k.block_perm.tolist()) for k in csprng}) > 190


@pytest.mark.parametrize("kwargs, message", [
    (dict(grid=(2, 2)), "together"),
    (dict(block_perm=[0, 1, 2, 3]), "together"),
    (dict(grid=(2, 2), block_perm=[0, 1, 2]), r"block_perm must have shape \(4,\)"),
    (dict(grid=(2, 2), block_perm=[0, 1, 2, 2]), "block_perm is not a permutation"),
    (dict(grid=(0, 2), block_perm=[]), "grid rows must be >= 1"),
    (dict(grid=(2,), block_perm=[0, 1]), "grid must be"),
    (dict(grid="2x2", block_perm=[0, 1, 2, 3]), "grid must be"),
    (dict(grid=(2, 2.0), block_perm=[0, 1, 2, 3]), "grid columns must be an int"),
    (dict(grid=(1025, 1024), block_perm=[0]), r"exceeds the limit of 1048576 \(kpfast.keys.MAX_BLOCKS\)"),
])
def test_block_scrambling_key_is_checked(kwargs, message: str) -> None:
    with pytest.raises(InvalidKeyError, match=message):
        small_key(**kwargs)


def test_block_permutation_is_part_of_the_identity() -> None:
    a = small_key(grid=(2, 3), block_perm=[5, 0, 1, 2, 3, 4])
    assert a == small_key(grid=(2, 3), block_perm=[5, 0, 1, 2, 3, 4])
    others = [small_key(), small_key(grid=(2, 3), block_perm=[0, 5, 1, 2, 3, 4]),
              small_key(grid=(3, 2), block_perm=[5, 0, 1, 2, 3, 4])]
    for other in others:
        assert other != a and other.fingerprint() != a.fingerprint()
    assert repr(a) == f"KeySet(block_size=1, channels=4, grid=(2, 3), fingerprint={a.fingerprint()})"
    with spawning():
        assert pickle.loads(pickle.dumps(a)) == a
        tables = KeySet.from_tables(a.perm, a.np_mask, a.ffx_mask, a.ffx_lut, block_size=1, channels=4,
                                    grid=(2, 3), block_perm=a.block_perm)
        assert pickle.loads(pickle.dumps(tables)) == tables and tables.grid == (2, 3)


def test_key_file_version_2_round_trip(tmp_path: Path) -> None:
    key = KeySet.generate(4, 3, grid=(8, 8))
    path = tmp_path / "key.json"
    key.save(path)
    doc = json.loads(path.read_text())
    assert doc["version"] == 2 and doc["grid"] == [8, 8] and doc["block_perm"] == key.block_perm.tolist()
    loaded = KeySet.load(path)
    assert loaded == key and loaded.grid == (8, 8) and mode(path) == 0o600
    assert key.fingerprint() == fingerprint_by_the_spec({k: v for k, v in doc.items() if k != "sha256"})


def test_keys_without_a_grid_keep_version_1_files_and_fingerprints(tmp_path: Path) -> None:
    path = tmp_path / "key.json"
    small_key().save(path)
    doc = json.loads(path.read_text())
    assert doc["version"] == 1 and "grid" not in doc and "block_perm" not in doc
    assert small_key().fingerprint() == fingerprint_by_the_spec({k: v for k, v in doc.items() if k != "sha256"})
    # a version-1 file as earlier kpfast wrote it (fields of the spec, checksum by hand) still loads
    v1 = {"format": "kpfast-keyset", "version": 1, "block_size": 1, "channels": 2, "perm": [1, 0],
          "np_mask": "10", "ffx_mask": "01", "ffx_password": "00ff"}
    write_doc(tmp_path / "v1.json", v1)
    assert KeySet.load(tmp_path / "v1.json") == KeySet(1, 2, [1, 0], [True, False], [False, True], b"\x00\xff")


@pytest.mark.parametrize("field, value, message", [
    ("block_perm", [0, 1, 2, 2], "block_perm is not a permutation"),
    ("block_perm", [0, 1, 2], r"block_perm must have shape \(4,\)"),
    ("block_perm", "0123", "block_perm must be a list of integers"),
    ("grid", [2, 2, 1], "grid must be"),
    ("grid", [0, 4], "grid rows"),
    ("grid", "2x2", "grid must be a list of integers"),
    ("grid", [True, 4], "grid must be a list of integers"),
])
def test_load_rejects_invalid_block_scrambling_keys(tmp_path: Path, field: str, value, message: str) -> None:
    path = tmp_path / "key.json"
    small_key(grid=(2, 2), block_perm=[3, 2, 1, 0]).save(path)
    doc = json.loads(path.read_text())
    doc[field] = value
    write_doc(path, doc)
    with pytest.raises(KeyFileError, match=message):
        KeySet.load(path)


def test_version_1_file_with_a_grid_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "key.json"
    small_key(grid=(2, 2), block_perm=[3, 2, 1, 0]).save(path)
    doc = json.loads(path.read_text())
    write_doc(path, {**doc, "version": 1})
    with pytest.raises(KeyFileError, match="unknown field.*block_perm, grid"):
        KeySet.load(path)


def test_block_scrambling_edits_and_agreement() -> None:
    g = torch.Generator().manual_seed(int(torch.randint(1 << 30, ())))
    key = KeySet.generate(2, 3, grid=(4, 5), rng=g)
    i, j = torch.randperm(20, generator=g)[:2].tolist()
    swapped = key.swap(i, j, op="scramble")
    want = key.block_perm.tolist()
    want[i], want[j] = want[j], want[i]
    assert swapped.block_perm.tolist() == want and torch.equal(swapped.perm, key.perm)
    assert swapped.swap(i, j, op="scramble") == key and key.swap(0, 1).block_perm is key.block_perm
    assert key.agreement(swapped) == {"perm": 1.0, "np_mask": 1.0, "ffx_mask": 1.0, "ffx_lut": 1.0,
                                      "block_perm": 18 / 20}
    other = torch.randperm(20, generator=g)
    replaced = key.replace(block_perm=other)
    assert replaced.block_perm.tolist() == other.tolist() and replaced.grid == (4, 5)
    assert key.agreement(replaced)["block_perm"] == float(np.mean(key.block_perm.numpy() == other.numpy()))
    regridded = key.replace(grid=(2, 2), block_perm=[1, 0, 3, 2])
    assert regridded.grid == (2, 2) and regridded.block_perm.tolist() == [1, 0, 3, 2]
    plain = key.replace()  # unchanged, grid included
    assert plain == key
    without = KeySet.generate(2, 3, rng=g)
    assert "block_perm" not in key.agreement(without)
    assert without.replace(grid=(1, 2), block_perm=[1, 0]).grid == (1, 2)
    with pytest.raises(InvalidKeyError, match="different grids"):
        key.agreement(regridded)
    with pytest.raises(InvalidKeyError, match="needs a new block_perm"):
        key.replace(grid=(2, 2))
    with pytest.raises(InvalidKeyError, match="give the grid with block_perm"):
        without.replace(block_perm=[0])
    with pytest.raises(InvalidKeyError, match="not a permutation"):
        key.replace(block_perm=[0] * 20)
