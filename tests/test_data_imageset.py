import pytest
import torch

from kpfast.data.imageset import ImageSet


def make(n: int = 30, classes: int = 3) -> ImageSet:
    """Image i is filled with the value i, so images identify themselves."""
    images = torch.arange(n, dtype=torch.uint8)[:, None, None, None].expand(n, 2, 2, 2)
    labels = torch.arange(n) % classes
    return ImageSet(images.contiguous(), labels, tuple("abcdefghij"[:classes]))


def test_basics():
    s = make()
    assert len(s) == 30 and s.num_classes == 3
    assert "n=30" in repr(s)


@pytest.mark.parametrize("images, labels, classes, error", [
    (torch.zeros(2, 1, 2, 2, dtype=torch.float64), torch.zeros(2, dtype=torch.int64), ("a",), "uint8"),
    (torch.zeros(2, 2, 2, dtype=torch.uint8), torch.zeros(2, dtype=torch.int64), ("a",), "uint8"),
    (torch.zeros(2, 1, 2, 4, dtype=torch.uint8)[..., ::2],
     torch.zeros(2, dtype=torch.int64), ("a",), "contiguous"),
    (torch.zeros(2, 1, 2, 2, dtype=torch.uint8), torch.zeros(2, dtype=torch.int32), ("a",), "int64"),
    (torch.zeros(2, 1, 2, 2, dtype=torch.uint8), torch.zeros(3, dtype=torch.int64), ("a",), "labels"),
    (torch.zeros(2, 1, 2, 2, dtype=torch.uint8), torch.tensor([0, 1]), ("a",), r"\[0, 1\)"),
    (torch.zeros(2, 1, 2, 2, dtype=torch.uint8), torch.tensor([0, -1]), ("a",), r"\[0, 1\)"),
    (torch.zeros(2, 1, 2, 2, dtype=torch.uint8), torch.zeros(2, dtype=torch.int64), ["a"], "tuple"),
    (torch.zeros(2, 1, 2, 2, dtype=torch.uint8), torch.zeros(2, dtype=torch.int64), (), "empty"),
])
def test_validation(images, labels, classes, error):
    with pytest.raises((TypeError, ValueError), match=error):
        ImageSet(images, labels, classes)


def test_frozen():
    with pytest.raises(AttributeError):
        make().classes = ("x",)  # type: ignore[misc]


def test_subset():
    s = make()
    sub = s.subset([4, 1, 1])
    assert sub.images[:, 0, 0, 0].tolist() == [4, 1, 1] and sub.labels.tolist() == [1, 1, 1]
    assert sub.images.is_contiguous() and sub.classes == s.classes
    assert s.subset(s.labels == 2).images[:, 0, 0, 0].tolist() == list(range(2, 30, 3))
    assert len(s.subset([])) == 0


def test_split_is_stratified_disjoint_and_deterministic():
    s = make(n=60, classes=3)  # 20 per class
    a, b = s.split(0.25, seed=1)
    assert torch.bincount(a.labels).tolist() == [5, 5, 5]
    assert torch.bincount(b.labels).tolist() == [15, 15, 15]
    ids_a, ids_b = set(a.images[:, 0, 0, 0].tolist()), set(b.images[:, 0, 0, 0].tolist())
    assert ids_a | ids_b == set(range(60)) and not ids_a & ids_b
    assert sorted(ids_a) == a.images[:, 0, 0, 0].tolist()  # original order kept
    assert torch.equal(a.labels, a.images[:, 0, 0, 0].long() % 3)  # labels follow images
    a2, _ = s.split(0.25, seed=1)
    a3, _ = s.split(0.25, seed=2)
    assert torch.equal(a.images, a2.images)
    assert not torch.equal(a.images, a3.images)


def test_split_bounds():
    s = make()
    assert len(s.split(0.0)[0]) == 0 and len(s.split(1.0)[1]) == 0
    with pytest.raises(ValueError, match="fraction"):
        s.split(1.5)


def test_first_per_class_is_the_one_subset():
    """`--train-subset N` everywhere (kpfast train, reproduce, i2p): the first images of each class,
    N in all, balanced as N allows, in the original order."""
    s = make(30, classes=3)  # image i has label i % 3
    sub = s.first_per_class(7)
    assert sub.images[:, 0, 0, 0].tolist() == [0, 1, 2, 3, 4, 5, 6]  # 3 + 2 + 2: the first of each class
    assert sub.labels.tolist() == [0, 1, 2, 0, 1, 2, 0]
    uneven = s.subset(torch.tensor([0, 3, 6, 9, 1, 2]))  # class 0 has four images, classes 1 and 2 one each
    assert uneven.first_per_class(4).labels.tolist() == [0, 0, 1, 2]  # quotas 2, 1, 1
    assert s.first_per_class(100) is s
    with pytest.raises(ValueError, match="at least 1 image"):
        s.first_per_class(0)
