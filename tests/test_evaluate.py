"""evaluate_protection: correct key against wrong keys and plain images; reports without key material."""
import standins
import json
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from kpfast.atomic import write_json
from kpfast.engine import train
from kpfast.protection.evaluate import evaluate_protection, format_markdown
from single_thread import single_thread

SHAPE = (3, 8, 8)
# Ten classes: a wrong key maps each class to some class at random, and with only four a few of
# five wrong keys kept 3 of 4 classes (best wrong key 0.25-0.61 over seeds 0-9).
CLASSES = ("plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


class FakeKey(standins.FakeKey):
    def __init__(self, seed: int) -> None:
        super().__init__(seed, SHAPE)


PixelShuffle = standins.PixelShuffle


def toy_set(n: int, seed: int, task: int = 0) -> SimpleNamespace:
    """ImageSet-like: each class has its own random template image (drawn from `task`), plus noise."""
    templates = torch.randint(0, 2, (len(CLASSES), *SHAPE), generator=torch.Generator().manual_seed(task)) * 160
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, len(CLASSES), (n,), generator=g)
    images = templates[labels] + torch.randint(0, 96, (n, *SHAPE), generator=g)
    return SimpleNamespace(images=images.to(torch.uint8), labels=labels, classes=CLASSES)


def train_behind_key(seed: int = 0) -> nn.Module:
    """A linear classifier trained for a moment behind key `seed` on task `seed`."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(SHAPE), len(CLASSES)))
    data = toy_set(256, seed=1000 * seed + 1, task=seed)
    batches = list(zip(data.images.split(32), data.labels.split(32)))
    train(model, PixelShuffle(FakeKey(seed)), batches, epochs=3, lr=0.05, label_smoothing=0.0, device="cpu",
          seed=seed, progress=False)
    return model


def protection(model: nn.Module, seed: int = 0) -> dict:
    """evaluate_protection of `train_behind_key(seed)` on fresh images, with 5 other keys."""
    wrong = iter(range(1000 * seed + 100, 1000 * seed + 200))
    return evaluate_protection(model, PixelShuffle, FakeKey(seed), toy_set(400, seed=1000 * seed + 2, task=seed),
                               wrong_keys=5, generate_key=lambda: FakeKey(next(wrong)), device="cpu", batch_size=128)


@pytest.fixture(scope="module")
def trained():
    with single_thread():
        return train_behind_key()


def test_correct_key_beats_wrong_keys_and_plain_images(trained, one_thread):
    results = protection(trained)
    correct = results["correct_key"]["accuracy"]
    # seeds 0-9 x 1 thread, 0-4 x 2 threads (train_behind_key, protection): correct key 1.00-1.00
    # (chance 0.1); correct minus the best wrong key 0.69-0.92, minus plain images 0.71-0.98
    assert correct > 0.55
    assert results["wrong_keys"]["max"] < correct - 0.3
    assert results["plain_images"]["accuracy"] < correct - 0.3
    assert results["wrong_keys"]["min"] <= results["wrong_keys"]["mean"] <= results["wrong_keys"]["max"]
    assert results["wrong_keys"]["count"] == len(results["wrong_keys"]["fingerprints"]) == 5
    assert list(results["correct_key"]["per_class_accuracy"]) == list(CLASSES)
    assert results["key_fingerprint"] == FakeKey(0).fingerprint() and results["num_images"] == 400


def test_markdown_and_json_hold_the_numbers_not_the_key(trained, tmp_path):
    results = evaluate_protection(trained, PixelShuffle, FakeKey(0), toy_set(200, seed=3),
                                  wrong_keys=[FakeKey(7), FakeKey(8)], device="cpu")
    text = format_markdown(results)
    for value in (results["correct_key"]["accuracy"], results["wrong_keys"]["mean"],
                  results["wrong_keys"]["min"], results["wrong_keys"]["max"],
                  results["plain_images"]["accuracy"], *results["correct_key"]["per_class_accuracy"].values()):
        assert f"{100 * value:.2f} %" in text
    assert all(name in text for name in CLASSES)
    assert results["key_fingerprint"] in text

    write_json(tmp_path / "r.json", results)
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved == results
    compact = json.dumps(saved, separators=(",", ":"))
    assert json.dumps(FakeKey(0).perm.tolist(), separators=(",", ":"))[1:-1] not in compact


def test_a_wrong_key_equal_to_the_right_one_is_refused(trained):
    with pytest.raises(ValueError, match="equals the correct key"):
        evaluate_protection(trained, PixelShuffle, FakeKey(0), toy_set(10, seed=4), wrong_keys=[FakeKey(0)], device="cpu")


def test_with_the_real_block_transform():
    from kpfast import BlockTransform, KeySet

    data = toy_set(64, seed=5)
    make = lambda k: BlockTransform(k, ["shuffle"], mean=(0.5,) * 3, std=(0.25,) * 3)  # noqa: E731
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(SHAPE), len(CLASSES)))
    results = evaluate_protection(model, make, KeySet.generate(4), data, wrong_keys=2, device="cpu")
    assert results["wrong_keys"]["count"] == 2  # default generator: KeySet.generate(4, 3)
    assert results["transform"]["ops"] == ["shuffle"]
