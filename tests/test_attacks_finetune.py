"""The fine-tuning attack: the stolen weights fine-tuned on n plain images, beside the same
architecture from scratch and beside fine-tuning behind an own key; and the key-space sizes."""
import math

import numpy as np
import pytest
import torch
from test_attacks_standins import labelled

from kpfast import BlockTransform, KeySet
from kpfast.data import ImageSet
from kpfast.errors import ConfigError, DataError
from kpfast.models import create_model
from kpfast.protection import ProtectedModel
from kpfast.protection.attacks import finetune_attack, key_space, key_space_table
from kpfast.protection.attacks.finetune import sizes_from_fractions
from kpfast.protection.attacks.scoring import stolen_from

pytestmark = pytest.mark.usefixtures("one_thread")


def grey_set(n: int, seed: int) -> ImageSet:
    templates = torch.randint(0, 256, (10, 1, 8, 8), generator=torch.Generator().manual_seed(0)).to(torch.uint8)
    x, y = labelled(n, templates, seed=seed)
    return ImageSet(x, y, tuple(str(c) for c in range(10)))


@pytest.fixture(scope="module")
def stolen():
    torch.manual_seed(0)
    key = KeySet.generate(2, 1, rng=np.random.default_rng(0))
    protected = ProtectedModel(create_model("small_cnn", 10, 1), BlockTransform(key, ("shuffle", "negpos"), (0.5,), (0.25,)))
    return stolen_from(protected.eval())


def test_fine_tuning_returns_every_curve_and_reuses_finished_runs(stolen, tmp_path):
    train, test = grey_set(200, 1), grey_set(50, 2)
    before = {k: v.clone() for k, v in stolen.network.state_dict().items()}
    r = finetune_attack(stolen, train, test, sizes=[20, 40], steps=2, batch_size=16, seed=0,
                        out=tmp_path / "out", cache=tmp_path / "cache")
    assert r.sizes == [20, 40] and [round(f, 2) for f in r.fractions] == [0.1, 0.2]
    for n in r.sizes:
        for variant in ("stolen", "scratch", "own-key"):
            assert 0 <= r.accuracy(variant, n) <= 1
        assert r.advantage(n) == r.accuracy("stolen", n) - r.accuracy("scratch", n)
    assert all(run["steps"] >= 2 and len(run["loss"]) == run["epochs"] for run in r.runs)
    assert all(torch.equal(v, before[k]) for k, v in stolen.network.state_dict().items())  # the stolen model is kept
    assert len(list((tmp_path / "cache").glob("scratch-*.json"))) == 2  # shared with other models
    assert len(list((tmp_path / "out").glob("*.json"))) == 4 and not list((tmp_path / "out").glob("*/"))
    again = finetune_attack(stolen, train, test, sizes=[20, 40], steps=2, batch_size=16, seed=0,
                            out=tmp_path / "out", cache=tmp_path / "cache")
    assert again.runs == r.runs  # read back, not trained again
    d = r.as_dict()
    assert set(d["advantage"]) == {"20", "40"}
    # Another model with another chain and key reuses the same from-scratch runs.
    key = KeySet.generate(2, 1, rng=np.random.default_rng(1))
    other = stolen_from(ProtectedModel(create_model("small_cnn", 10, 1), BlockTransform(key, ("ffx",), (0.5,), (0.25,))).eval())
    shared = finetune_attack(other, train, test, sizes=[20, 40], steps=2, batch_size=16, seed=0, variants=("scratch",),
                             out=tmp_path / "other", cache=tmp_path / "cache")
    assert [run["test_accuracy"] for run in shared.runs] == [r.accuracy("scratch", n) for n in (20, 40)]
    assert len(list((tmp_path / "cache").glob("scratch-*.json"))) == 2 and not (tmp_path / "other").exists()


def test_fine_tuning_budgets_are_checked(stolen):
    train, test = grey_set(30, 1), grey_set(10, 2)
    with pytest.raises(DataError, match="the training set has only 30"):
        finetune_attack(stolen, train, test, sizes=[31])
    with pytest.raises(ConfigError, match="steps"):
        finetune_attack(stolen, train, test, sizes=[10], steps=0)
    with pytest.raises(ConfigError, match="fractions"):
        sizes_from_fractions([0.0], 100)
    assert sizes_from_fractions([0.01, 0.1], 60_000) == [600, 6000]


def test_key_space_sizes():
    s = key_space(("shuffle", "negpos", "ffx"), 4, 3)
    assert s.positions == 48
    assert s.bits["perm"] == pytest.approx(math.log2(math.factorial(48)), rel=1e-12)
    assert (s.bits["np_mask"], s.bits["ffx_mask"], s.bits["ffx_table"]) == (48, 48, 128)
    assert s.total_bits == pytest.approx(math.log2(math.factorial(48)) + 48 + 48 + 128, rel=1e-12)
    assert s.reference_bits == 32
    # 1000!/744! injective FFX tables, more than the 2^128 passwords reach
    injections = math.log2(math.factorial(1000) // math.factorial(744))
    assert key_space(("ffx",), 4, 3).ffx_tables_bits == 128 < injections
    small = key_space(("shuffle",), 1, 3)  # L = 3: 3! = 6 permutations, fewer than 2^32 seeds
    assert small.total_bits == small.reference_bits == pytest.approx(math.log2(6))
    assert key_space(("negpos",), 2, 3).reference_bits == pytest.approx(math.log2(792))  # C(12, 5) masks
    scrambled = key_space(("shuffle", "scramble"), 4, 3, grid=(8, 8))  # 64 block locations more
    assert scrambled.bits["block_perm"] == pytest.approx(math.log2(math.factorial(64)), rel=1e-12)
    with pytest.raises(ConfigError, match="grid"):
        key_space(("scramble",), 4, 3)
    lines = key_space_table([2, 4], 3)
    assert len(lines) == 2 + 4 * 2 and "Shuffle+NP+FFX" in lines[-1]
