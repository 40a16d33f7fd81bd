"""Random key search and heuristic key estimation, on stand-in models that need their key by
construction (tests/test_attacks_standins.py): no training, so the properties below hold exactly."""
import contextlib
from pathlib import Path

import numpy as np
import pytest
import torch
from test_attacks_standins import keyed_model, labelled

from kpfast import KeySet
from kpfast.errors import CheckpointError, ConfigError, DataError, KeyMismatchError
from kpfast.protection.attacks import estimate_key, random_key_search
from kpfast.protection.attacks.scoring import candidate_keys

CHAIN = ("shuffle", "negpos", "ffx")
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("strategy", ["halving", "exhaustive"])
def test_with_the_true_key_among_the_candidates_the_search_finds_it(seed, strategy):
    key = KeySet.generate(2, 3, rng=np.random.default_rng(seed))
    stolen, templates = keyed_model(key, CHAIN, seed=seed)
    x, y = labelled(32, templates, seed=100 + seed)
    test_x, test_y = labelled(64, templates, seed=200 + seed)
    keys = candidate_keys(200, 2, 3, np.random.default_rng(seed))
    keys.insert(int(np.random.default_rng(seed).integers(200)), key)
    r = random_key_search(stolen, x, y, test_x, test_y, keys=keys, batch=32, strategy=strategy, true_key=key)
    assert r.best_key_fingerprint == key.fingerprint()
    assert r.agreement == {"perm": 1.0, "np_mask": 1.0, "ffx_mask": 1.0, "ffx_lut": 1.0}
    assert r.keys_tried == 201 and r.model_evaluations <= 201 * 32
    assert r.curve[-1] == [201, r.best_batch_accuracy] and all(a[1] <= b[1] for a, b in zip(r.curve, r.curve[1:]))


@contextlib.contextmanager
def interrupted(stolen, when):
    """Scoring raises KeyboardInterrupt once `when(calls)` holds (as Ctrl-C would), inside the block."""
    accuracy, calls = stolen.accuracy, {"n": 0}

    def scored(*args, **kwargs):
        calls["n"] += 1
        if when(calls["n"]):
            raise KeyboardInterrupt
        return accuracy(*args, **kwargs)

    stolen.accuracy = scored
    try:
        with pytest.raises(KeyboardInterrupt):
            yield
    finally:
        stolen.accuracy = accuracy


def test_an_interrupted_search_resumes_to_the_same_result(tmp_path):
    key = KeySet.generate(2, 3, rng=np.random.default_rng(7))
    stolen, templates = keyed_model(key, CHAIN)
    x, y = labelled(16, templates, seed=1)
    common = {"num_keys": 200, "batch": 16, "start_images": 2, "final_keys": 8, "keys_per_launch": 16,
              "images_per_launch": 64}
    reference = random_key_search(stolen, x, y, x, y, **common)
    with interrupted(stolen, lambda n: n == 3):
        random_key_search(stolen, x, y, x, y, state=tmp_path / "s", **common)
    assert (tmp_path / "s").exists()
    resumed = random_key_search(stolen, x, y, x, y, state=tmp_path / "s", **common)
    assert resumed.best_key_fingerprint == reference.best_key_fingerprint
    assert resumed.finalists_batch_accuracy == reference.finalists_batch_accuracy
    assert not (tmp_path / "s").exists()
    with interrupted(stolen, lambda n: n == 2):
        random_key_search(stolen, x, y, x, y, state=tmp_path / "s", **common)
    with pytest.raises(CheckpointError, match="other settings"):
        random_key_search(stolen, x, y, x, y, state=tmp_path / "s", **{**common, "num_keys": 150})


@pytest.mark.parametrize("seed", range(5))
def test_the_estimation_recovers_a_two_position_key_exactly(seed):
    # M = 1 with two channels: L = 2, a permutation of 2 and two 2-bit masks (8 keys). Class 0 is
    # dark in both channels, class 1 bright in one and mid-grey in the other: then every edit that
    # fixes a wrong part raises the score, from each of the 8 starts (checked for all 8 true keys).
    key = KeySet.generate(1, 2, rng=np.random.default_rng(seed))
    templates = torch.tensor([[60, 60], [200, 130]], dtype=torch.uint8).view(2, 2, 1, 1).expand(2, 2, 4, 4).contiguous()
    stolen, _ = keyed_model(key, ("shuffle", "negpos"), templates=templates)
    x, y = labelled(64, templates, seed=seed, noise=0.2)
    r = estimate_key(stolen, x, y, x, y, batch=64, passes=3, seed=1000 + seed, true_key=key)
    assert r.passes[-1]["agreement"] == {"perm": 1.0, "np_mask": 1.0}
    assert r.final_test_accuracy >= r.start_test_accuracy


def test_estimation_improves_a_mask_and_resumes_from_its_state(tmp_path):
    key = KeySet.generate(2, 3, rng=np.random.default_rng(3))
    stolen, templates = keyed_model(key, ("negpos",))
    x, y = labelled(32, templates, seed=4)
    common = {"batch": 32, "passes": 2, "seed": 5, "true_key": key}
    reference = estimate_key(stolen, x, y, x, y, **common)
    assert reference.passes[-1]["agreement"]["np_mask"] == 1.0  # an NP mask falls to bit flips
    screened = estimate_key(stolen, x, y, x, y, screen=8, screen_keep=4, **common)
    assert screened.passes[-1]["agreement"]["np_mask"] == 1.0
    assert screened.model_evaluations < reference.model_evaluations
    state = tmp_path / "e"
    with interrupted(stolen, lambda n: state.exists()):  # Ctrl-C in the second pass
        estimate_key(stolen, x, y, x, y, state=state, **common)
    assert Path(f"{state}.key").stat().st_mode & 0o077 == 0  # the estimate is kept owner-only
    resumed = estimate_key(stolen, x, y, x, y, state=state, **common)
    assert resumed.final_key_fingerprint == reference.final_key_fingerprint
    assert [p["test_accuracy"] for p in resumed.passes] == [p["test_accuracy"] for p in reference.passes]
    assert not state.exists() and not Path(f"{state}.key").exists()


def test_bad_budgets_and_keys_get_clear_errors():
    key = KeySet.generate(2, 3, rng=np.random.default_rng(0))
    stolen, templates = keyed_model(key, CHAIN)
    x, y = labelled(8, templates, seed=1)
    with pytest.raises(ConfigError, match="num_keys"):
        random_key_search(stolen, x, y, x, y, num_keys=0, batch=8)
    with pytest.raises(DataError, match="batch = 9 is more than the 8 images"):
        random_key_search(stolen, x, y, x, y, num_keys=5, batch=9)
    with pytest.raises(ConfigError, match="passes"):
        estimate_key(stolen, x, y, x, y, batch=8, passes=0)
    with pytest.raises(ConfigError, match="screen"):
        estimate_key(stolen, x, y, x, y, batch=8, screen=8)
    with pytest.raises(KeyMismatchError, match="4x4 blocks"):
        random_key_search(stolen, x, y, x, y, num_keys=5, batch=8, true_key=KeySet.generate(4, 3))
    with pytest.raises(KeyMismatchError, match="1 channel"):
        estimate_key(stolen, x, y, x, y, batch=8, true_key=KeySet.generate(2, 1))
    with pytest.raises(KeyMismatchError, match="not this model's key"):
        estimate_key(stolen, x, y, x, y, batch=8, true_key=KeySet.generate(2, 3))
