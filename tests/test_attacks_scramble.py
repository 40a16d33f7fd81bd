"""The attacks on a chain that scrambles block locations: the key search and the estimation draw
and edit block permutations for the model's grid, the fine-tuning attacker's own key has one, the
known-plaintext attack refuses clearly, and the wrong keys of an evaluation are for the same grid."""
import numpy as np
import pytest
import torch
from test_attacks_standins import keyed_model, labelled

from kpfast import KeySet
from kpfast.data import ImageSet
from kpfast.errors import ConfigError
from kpfast.protection import evaluate_protection
from kpfast.protection.attacks import estimate_key, known_plaintext, random_key_search
from kpfast.protection.attacks.key_estimate import edits
from kpfast.protection.attacks.scoring import candidate_keys

pytestmark = pytest.mark.usefixtures("one_thread")
GRID = (2, 2)  # 8x8 images of 4x4 blocks


def scrambled(seed: int, ops=("scramble",)):
    key = KeySet.generate(4, 3, grid=GRID, rng=np.random.default_rng(seed))
    stolen, templates = keyed_model(key, ops, seed=seed)
    return key, stolen, templates


@pytest.mark.parametrize("space", ["tables", "generate", "seed"])
def test_candidates_have_uniform_block_permutations_for_the_grid(space):
    keys = candidate_keys(2000, 4, 3, np.random.default_rng(0), space=space, grid=GRID)
    assert all(k.grid == GRID for k in keys)
    perms = torch.stack([k.block_perm for k in keys])
    assert all(sorted(p.tolist()) == [0, 1, 2, 3] for p in perms[:50])
    # Each of the 4 blocks lands at each location about 1/4 of the time (500 of 2000; 5 sigma = 97).
    counts = torch.stack([(perms == b).sum(0) for b in range(4)])
    assert ((counts - 500).abs() < 97).all(), counts


@pytest.mark.parametrize("seed", range(5))
def test_the_search_finds_the_true_block_permutation(seed):
    key, stolen, templates = scrambled(seed, ("shuffle", "scramble"))
    x, y = labelled(32, templates, seed=100 + seed)
    keys = candidate_keys(100, 4, 3, np.random.default_rng(seed), grid=GRID)
    keys.insert(7, key)
    r = random_key_search(stolen, x, y, x, y, keys=keys, batch=32, true_key=key)
    assert r.best_key_fingerprint == key.fingerprint()
    assert r.agreement == {"perm": 1.0, "block_perm": 1.0}
    drawn = random_key_search(stolen, x, y, x, y, num_keys=20, batch=32, true_key=key)  # candidates drawn inside
    assert set(drawn.agreement) == {"perm", "block_perm"}  # drawn for the grid: comparable with the key


@pytest.mark.parametrize("seed", range(5))
def test_the_estimation_recovers_a_block_permutation_by_swaps(seed):
    # Scrambling alone over 4 blocks of distinct templates: a swap that puts a block back raises
    # the score, so the estimate ends at the true permutation from any start.
    key, stolen, templates = scrambled(seed)
    x, y = labelled(64, templates, seed=seed)
    r = estimate_key(stolen, x, y, x, y, batch=64, passes=3, seed=1000 + seed, true_key=key)
    assert r.passes[-1]["agreement"] == {"block_perm": 1.0}
    assert r.final_test_accuracy == 1.0
    assert r.passes[0]["candidates"] == 6  # the swaps (a, b), a < b, of 4 block locations


def test_edits_of_a_scrambling_chain_end_with_the_block_swaps():
    all_edits = list(edits(("shuffle", "negpos", "scramble"), 3, 3))
    assert all_edits[-3:] == [("block_swap", 0, 1), ("block_swap", 0, 2), ("block_swap", 1, 2)]
    assert len(all_edits) == 3 + 3 + 3


def test_known_plaintext_refuses_scrambling_with_a_reason():
    key, stolen, templates = scrambled(0, ("shuffle", "scramble"))
    with torch.no_grad():
        protected = stolen.transform(key)(templates)
    with pytest.raises(ConfigError, match="scramble.*other location"):
        known_plaintext(stolen, templates, protected, templates, torch.arange(len(templates)))


def test_evaluation_wrong_keys_are_for_the_model_grid():
    key, stolen, templates = scrambled(3, ("shuffle", "scramble"))
    x, y = labelled(40, templates, seed=4)
    data = ImageSet(x, y, tuple(str(i) for i in range(len(templates))))
    r = evaluate_protection(stolen.network, stolen.transform, key, data, wrong_keys=6, seed=5, device="cpu")
    assert r["correct_key"]["accuracy"] == 1.0
    assert r["wrong_keys"]["count"] == 6 and r["wrong_keys"]["mean"] < 1.0


def test_the_audit_counts_block_permutations_and_skips_known_plaintext(tmp_path, capsys):
    import json

    from test_attacks_standins import write_fashion_like

    from kpfast import BlockTransform
    from kpfast.cli import main
    from kpfast.models import create_model
    from kpfast.protection import ProtectedModel

    write_fashion_like(tmp_path / "data")  # 8x8 images: a 4x4 grid of 2x2 blocks
    key = KeySet.generate(2, 1, grid=(4, 4), rng=np.random.default_rng(0))
    key.save(tmp_path / "model.key")
    torch.manual_seed(0)
    ProtectedModel(create_model("small_cnn", 10, 1), BlockTransform(key, ("shuffle", "scramble"), (0.3,), (0.35,))
                   ).save(tmp_path / "model.pt")
    out = tmp_path / "audit"
    assert main(["audit", "--model", str(tmp_path / "model.pt"), "--key", str(tmp_path / "model.key"), "--data", "fashion-mnist", "--data-root",
                 str(tmp_path / "data"), "--out", str(out), "--stages", "key-space,known-plaintext",
                 "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "known-plaintext: skipped: known plaintext covers chains of in-block transforms" in printed
    assert not (out / "known-plaintext.json").exists()
    bits = json.loads((out / "key-space.json").read_text())["result"]["bits"]
    assert bits["block_perm"] == pytest.approx(np.log2(np.arange(1, 17, dtype=float)).sum())  # log2 16!
