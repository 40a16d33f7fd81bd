"""Scoring many keys per launch: equal to scoring each key alone, and to a plain loop written here."""
import numpy as np
import pytest
import torch
from test_attacks_standins import keyed_model, labelled

from kpfast import BlockTransform, KeySet
from kpfast.errors import ConfigError, DataError
from kpfast.models import create_model
from kpfast.protection import ProtectedModel, evaluate_protection
from kpfast.protection.attacks.scoring import (
    Scores,
    candidate_keys,
    halving_schedule,
    rank_keys,
    score,
    stolen_from,
)
from kpfast.protection.evaluate import accuracy_per_key

CHAIN = ("shuffle", "negpos", "ffx")
pytestmark = pytest.mark.usefixtures("one_thread")
MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def test_many_keys_in_one_launch_transform_each_image_as_its_key_alone():
    keys = [*KeySet.generate_many(3, 4, 3, rng=np.random.default_rng(0)),
            *candidate_keys(3, 4, 3, np.random.default_rng(1))]  # password keys and table keys
    x = torch.randint(0, 256, (5, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    batched = BlockTransform(keys, CHAIN, MEAN, STD)(x.repeat(len(keys), 1, 1, 1),
                                                    torch.arange(len(keys)).repeat_interleave(len(x)))
    for i, k in enumerate(keys):
        assert torch.equal(batched[i * len(x):(i + 1) * len(x)], BlockTransform(k, CHAIN, MEAN, STD)(x))


@pytest.fixture(scope="module")
def protected():
    torch.manual_seed(0)
    key = KeySet.generate(4, 3, rng=np.random.default_rng(3))
    return ProtectedModel(create_model("small_cnn", 10, 3), BlockTransform(key, CHAIN, MEAN, STD)).eval()


def test_accuracy_per_key_equals_one_key_at_a_time_and_a_plain_loop(protected):
    keys = candidate_keys(6, 4, 3, np.random.default_rng(4))
    g = torch.Generator().manual_seed(5)
    x, y = torch.randint(0, 256, (40, 3, 16, 16), dtype=torch.uint8, generator=g), torch.randint(0, 10, (40,), generator=g)
    loop = []
    with torch.no_grad():
        for k in keys:
            predictions = protected.model(BlockTransform(k, CHAIN, MEAN, STD)(x)).argmax(1)
            loop.append((predictions == y).double().mean().item())
    for per_launch, images in ((4, 64), (1, 1000), (64, 7)):
        got = accuracy_per_key(protected, keys, x, y, keys_per_launch=per_launch, images_per_launch=images)
        assert got.tolist() == loop  # exact: the same predictions


def test_losses_are_the_mean_cross_entropy_per_key():
    key = KeySet.generate(2, 3, rng=np.random.default_rng(6))
    stolen, templates = keyed_model(key, CHAIN)
    x, y = labelled(20, templates, seed=7)
    keys = [key, *candidate_keys(3, 2, 3, np.random.default_rng(8))]
    accuracy, loss = stolen.accuracy(keys, x, y, with_loss=True, keys_per_launch=2)
    for i, k in enumerate(keys):
        logits = stolen.network(stolen.transform(k)(x))
        assert loss[i].item() == pytest.approx(torch.nn.functional.cross_entropy(logits, y).item(), rel=1e-6)
        assert accuracy[i].item() == (logits.argmax(1) == y).double().mean().item()


def test_rank_orders_by_correct_then_loss():
    s = Scores(torch.tensor([3, 5, 5, 1]), torch.tensor([0.1, 2.0, 1.0, 0.0], dtype=torch.float64), 6)
    assert s.order().tolist() == [2, 1, 0, 3]


def test_ranking_in_chunks_equals_one_call():
    key = KeySet.generate(2, 3, rng=np.random.default_rng(9))
    stolen, templates = keyed_model(key, CHAIN)
    x, y = labelled(16, templates, seed=10)
    keys = candidate_keys(10, 2, 3, np.random.default_rng(11))
    whole, chunked = score(stolen, keys, x, y), rank_keys(stolen, keys, x, y, chunk=3)
    assert torch.equal(whole.correct, chunked.correct) and torch.allclose(whole.loss, chunked.loss)


def test_halving_schedule_ends_with_every_survivor_on_the_whole_batch():
    schedule = halving_schedule(20_000, 64, start_images=4, eta=4, final_keys=16)
    assert schedule[0] == (20_000, 4) and schedule[-1][1] == 64
    assert all(a[0] >= b[0] and a[1] < b[1] for a, b in zip(schedule, schedule[1:]))
    assert halving_schedule(10, 64) == [(10, 64)]  # few keys: straight to the whole batch
    with pytest.raises(ConfigError, match="eta"):
        halving_schedule(10, 64, eta=1)


def test_candidate_spaces():
    rng = np.random.default_rng(12)
    tables = candidate_keys(50, 2, 3, rng)
    assert all(k.ffx_password is None and int(k.ffx_lut.max()) < 1000 for k in tables)
    assert len({tuple(k.ffx_lut.tolist()) for k in tables}) == 50  # injective tables, all different
    seeds = candidate_keys(3, 2, 3, np.random.default_rng(13), space="seed")
    assert all(k.ffx_password == b"password" and torch.equal(k.np_mask, k.perm > 6) for k in seeds)
    again = candidate_keys(3, 2, 3, np.random.default_rng(13), space="generate")
    assert again == candidate_keys(3, 2, 3, np.random.default_rng(13), space="generate")  # seeded
    with pytest.raises(ConfigError, match="space"):
        candidate_keys(1, 2, 3, rng, space="all")


def test_evaluate_protection_wrong_keys_are_seedable_and_batched(protected):
    g = torch.Generator().manual_seed(14)
    from kpfast.data import ImageSet

    data = ImageSet(torch.randint(0, 256, (30, 3, 16, 16), dtype=torch.uint8, generator=g),
                    torch.randint(0, 10, (30,), generator=g), tuple(str(i) for i in range(10)))
    stolen = stolen_from(protected)
    key = KeySet.generate(4, 3, rng=np.random.default_rng(3))  # the fixture's key
    common = dict(wrong_keys=5, seed=1, device="cpu", batch_size=16)
    a = evaluate_protection(protected.model, stolen.transform, key, data, **common)
    b = evaluate_protection(protected.model, stolen.transform, key, data, keys_per_launch=1, **common)
    c = evaluate_protection(protected.model, stolen.transform, key, data, **{**common, "seed": 2})
    assert a["wrong_keys"] == b["wrong_keys"]
    assert a["wrong_keys"]["fingerprints"] != c["wrong_keys"]["fingerprints"]


def test_bad_input_gets_a_clear_error(protected):
    keys = candidate_keys(2, 4, 3, np.random.default_rng(15))
    x, y = torch.zeros(4, 3, 16, 16, dtype=torch.uint8), torch.zeros(4, dtype=torch.int64)
    with pytest.raises(ConfigError, match="at least one key"):
        accuracy_per_key(protected, [], x, y)
    with pytest.raises(ConfigError, match="keys_per_launch"):
        accuracy_per_key(protected, keys, x, y, keys_per_launch=0)
    with pytest.raises(DataError, match="labels"):
        accuracy_per_key(protected, keys, x, y[:3])
    with pytest.raises(ConfigError, match="make_transform"):
        accuracy_per_key(protected.model, keys, x, y)
