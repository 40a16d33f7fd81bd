"""Known-plaintext key recovery: what one or a few (plain, protected) pairs give away."""
import numpy as np
import pytest
import torch
from test_attacks_standins import keyed_model, labelled

from kpfast import KeySet
from kpfast.errors import ConfigError, DataError
from kpfast.protection.attacks import known_plaintext, known_plaintext_sweep
from kpfast.protection.attacks.known_plaintext import resolve_permutation, to_blocks

pytestmark = pytest.mark.usefixtures("one_thread")


def pair(stolen, key, images):
    with torch.no_grad():
        return images, stolen.transform(key)(images)


@pytest.mark.parametrize("seed", range(5))
def test_one_pair_recovers_a_shuffle_key_exactly_when_pixel_values_are_distinct(seed):
    key = KeySet.generate(4, 3, rng=np.random.default_rng(seed))
    stolen, templates = keyed_model(key, ("shuffle",), size=32, seed=seed)
    g = torch.Generator().manual_seed(seed)
    # 64 blocks of 48 values, distinct within each block.
    blocks = torch.stack([torch.randperm(256, generator=g)[:48] for _ in range(64)]).to(torch.uint8)
    image = blocks.view(1, 8, 8, 4, 4, 3).permute(0, 5, 1, 3, 2, 4).reshape(1, 3, 32, 32)
    assert torch.equal(to_blocks(image, 4), blocks)  # the block layout of docs/semantics.md §1
    x, y = labelled(16, templates, seed=seed)
    r = known_plaintext(stolen, *pair(stolen, key, image), x, y, true_key=key)
    assert r.agreement == {"perm": 1.0} and r.determined == {"perm": 1.0} and r.perm_candidates == 1.0
    assert r.reproduces_pairs == 1.0 and r.test_accuracy == 1.0


@pytest.mark.parametrize("ops", [("negpos",), ("ffx",), ("shuffle", "negpos", "ffx"), ("negpos", "shuffle"),
                                 ("ffx", "negpos"), ("negpos", "ffx", "shuffle")])
def test_the_recovered_key_reproduces_the_pairs_and_enough_pairs_give_all_of_it(ops):
    key = KeySet.generate(4, 3, rng=np.random.default_rng(1))
    stolen, templates = keyed_model(key, ops, size=32)
    g = torch.Generator().manual_seed(2)
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, generator=g)
    x, y = labelled(16, templates, seed=3)
    one, eight = known_plaintext_sweep(stolen, *pair(stolen, key, images), x, y, pairs=(1, 8), true_key=key)
    assert one.reproduces_pairs == 1.0 and one.pairs == 1 and one.blocks == 64
    assert eight.agreement == dict.fromkeys(eight.agreement, 1.0)  # 8 x 64 blocks see every byte
    assert eight.key_determined == 1.0 and eight.test_accuracy == 1.0
    if "ffx" in ops:
        assert one.ffx_max_found == key.ffx_max
        assert one.determined["ffx_lut"] <= eight.determined["ffx_lut"]


def test_grey_background_leaves_the_permutation_ambiguous_but_consistent():
    key = KeySet.generate(4, 1, rng=np.random.default_rng(4))
    stolen, templates = keyed_model(key, ("shuffle",), size=16)
    image = torch.zeros(1, 1, 16, 16, dtype=torch.uint8)
    image[..., :4, :4] = torch.arange(16, dtype=torch.uint8).view(4, 4) * 10  # one block with content
    x, y = labelled(8, templates, seed=5)
    r = known_plaintext(stolen, *pair(stolen, key, image), x, y, true_key=key)
    assert r.determined["perm"] == 1.0  # one block of distinct values is enough ...
    image[..., :4, :4] = 0
    image[..., 0, 0] = 200  # ... one bright pixel in black blocks tells one position only
    r = known_plaintext(stolen, *pair(stolen, key, image), x, y, true_key=key)
    assert r.determined["perm"] == 1 / 16 and r.reproduces_pairs == 1.0


def test_propagation_settles_what_the_candidates_force():
    candidates = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1]], dtype=torch.bool)
    src, determined = resolve_permutation(candidates, np.random.default_rng(0))
    assert src.tolist() == [1, 0, 2] and determined.all()
    src, determined = resolve_permutation(torch.ones(4, 4, dtype=torch.bool), np.random.default_rng(0))
    assert sorted(src.tolist()) == [0, 1, 2, 3] and not determined.any()


def test_bad_pairs_get_clear_errors():
    key = KeySet.generate(2, 3, rng=np.random.default_rng(6))
    stolen, templates = keyed_model(key, ("shuffle",))
    x, y = labelled(4, templates, seed=7)
    protected = stolen.transform(key)(x)
    with pytest.raises(DataError, match="uint8"):
        known_plaintext(stolen, x.float(), protected, x, y)
    with pytest.raises(DataError, match="shape"):
        known_plaintext(stolen, x, protected[:2], x, y)
    with pytest.raises(DataError, match="8 pairs asked for, but only 4"):
        known_plaintext_sweep(stolen, x, protected, x, y, pairs=(1, 8))
    with pytest.raises(ConfigError, match="pairs"):
        known_plaintext_sweep(stolen, x, protected, x, y, pairs=(0,))
