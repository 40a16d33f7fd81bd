import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from kpfast.data.synthetic import CLASSES, make_synthetic

pytestmark = pytest.mark.usefixtures("one_thread")


def test_shapes_and_types():
    train, test = make_synthetic(100, 30)
    assert train.images.shape == (100, 3, 32, 32) and test.images.shape == (30, 3, 32, 32)
    assert train.images.dtype == torch.uint8 and train.images.is_contiguous()
    assert train.labels.dtype == torch.int64
    assert train.classes == CLASSES == test.classes and len(set(CLASSES)) == 10
    assert "red-disc" in CLASSES


def test_deterministic_per_seed():
    a, a_test = make_synthetic(60, 20, seed=3)
    b, b_test = make_synthetic(60, 20, seed=3)
    c, _ = make_synthetic(60, 20, seed=4)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert torch.equal(a_test.images, b_test.images)
    assert not torch.equal(a.images, c.images)
    assert not torch.equal(a.images[:20], a_test.images)  # train and test are different draws
    assert torch.equal(make_synthetic(10, 20, seed=3)[1].images, a_test.images)  # n_train-independent


def test_balanced():
    train, _ = make_synthetic(205, 10)
    counts = torch.bincount(train.labels, minlength=10)
    assert counts.sum() == 205 and counts.min() == 20 and counts.max() == 21


def test_varied_images():
    train, _ = make_synthetic(200, 10)
    x = train.images.float()
    assert x.std(0).mean() > 40  # per-pixel spread over images: positions and colours vary
    assert x.std((1, 2, 3)).min() > 10  # no blank images


def _scramble(x: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """A fixed secret shuffle of the 48 values (4 x 4 pixels x 3 channels) inside every block."""
    n, c, h, w = x.shape
    blocks = x.reshape(n, c, h // 4, 4, w // 4, 4).permute(0, 2, 4, 1, 3, 5).reshape(n, h // 4, w // 4, -1)
    blocks = blocks[..., key].reshape(n, h // 4, w // 4, c, 4, 4)
    return blocks.permute(0, 3, 1, 4, 2, 5).reshape(n, c, h, w)


def _accuracy(model: nn.Module, x_train: torch.Tensor, y_train: torch.Tensor,
              x_test: torch.Tensor, y_test: torch.Tensor, steps: int, batch: int, lr: float, seed: int) -> float:
    opt = torch.optim.Adam(model.parameters(), lr)
    order = torch.randint(0, len(x_train), (steps, batch), generator=torch.Generator().manual_seed(seed))
    for idx in order:
        loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return (model(x_test).argmax(1) == y_test).float().mean().item()


def logistic_accuracy(seed: int = 0) -> float:
    """Logistic regression on the mean colour of every 4x4 block: the coarse information a block
    scramble keeps."""
    train, test = make_synthetic(2000, 500, seed=seed)
    features = lambda s: F.avg_pool2d(s.images.float() / 255, 4).flatten(1)  # noqa: E731
    torch.manual_seed(seed)
    return _accuracy(nn.Linear(3 * 8 * 8, 10), features(train), train.labels, features(test),
                     test.labels, steps=200, batch=2000, lr=0.05, seed=seed)


def scrambled_accuracy(seed: int = 0) -> float:
    """A model that sees whole 4x4 blocks (a stride-4 first layer) copes with any shuffle inside
    the blocks: a few seconds of training on block-scrambled images (300 steps: after 120, seeds 0-4
    reached only 0.56-0.66)."""
    train, test = make_synthetic(2000, 500, seed=seed)
    key = torch.randperm(48, generator=torch.Generator().manual_seed(seed + 1))
    scrambled = lambda s: _scramble(s.images, key).float() / 255  # noqa: E731
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(3, 32, 4, stride=4), nn.ReLU(),
                          nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))
    return _accuracy(model, scrambled(train), train.labels, scrambled(test), test.labels,
                     steps=300, batch=64, lr=1e-2, seed=seed)


def test_learnable_by_logistic_regression():
    acc = logistic_accuracy()
    assert acc > 0.5, acc  # seeds 0-4 x 1/2 threads: 0.93-0.96 (chance 0.1)


def test_learnable_when_block_scrambled():
    acc = scrambled_accuracy()
    assert acc > 0.35, acc  # seeds 0-4 x 1/2 threads: 0.68-0.90 (chance 0.1)
