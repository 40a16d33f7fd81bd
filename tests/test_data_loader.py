import pytest
import torch
import torch.nn.functional as F

from kpfast.data.augment import crop_u8, random_crop_u8, random_flip_u8
from kpfast.data.imageset import ImageSet
from kpfast.data.loader import DeviceLoader

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def numbered(n: int = 50) -> ImageSet:
    """Image i is random but its first pixel is i, and its label is i."""
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    images[:, 0, 0, 0] = torch.arange(n, dtype=torch.uint8)
    return ImageSet(images, torch.arange(n), tuple(str(i) for i in range(n)))


def random_batch(n: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(seed))


# --- augment -------------------------------------------------------------------------------------

def test_crop_matches_naive_reference():
    x = random_batch()
    offsets = torch.randint(0, 9, (len(x), 2), generator=torch.Generator().manual_seed(1))
    out = crop_u8(x, 4, offsets)
    padded = F.pad(x, (4, 4, 4, 4))
    for i, (top, left) in enumerate(offsets.tolist()):
        assert torch.equal(out[i], padded[i, :, top:top + 32, left:left + 32])
    assert out.dtype == torch.uint8 and out.shape == x.shape


def test_crop_centre_is_identity_and_corner_is_zero_padded():
    x = random_batch(2)
    assert torch.equal(crop_u8(x, 4, torch.tensor([[4, 4], [4, 4]])), x)
    corner = crop_u8(x, 4, torch.tensor([[0, 0], [8, 8]]))
    assert corner[0, :, :4].eq(0).all() and corner[0, :, :, :4].eq(0).all()
    assert torch.equal(corner[0, :, 4:, 4:], x[0, :, :28, :28])
    assert torch.equal(corner[1, :, :28, :28], x[1, :, 4:, 4:])


def test_random_crop_picks_some_crop_per_image():
    x = random_batch(8)
    out = random_crop_u8(x, 4, torch.Generator().manual_seed(0))
    padded = F.pad(x, (4, 4, 4, 4))
    found = []
    for i in range(len(x)):
        hits = [(t, l) for t in range(9) for l in range(9)
                if torch.equal(out[i], padded[i, :, t:t + 32, l:l + 32])]
        assert hits, f"image {i} is not a crop of its padded input"
        found.append(hits[0])
    assert len(set(found)) > 1  # offsets differ between images
    again = random_crop_u8(x, 4, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)


def test_random_flip():
    x = random_batch(64)
    out = random_flip_u8(x, torch.Generator().manual_seed(0))
    flipped = [torch.equal(o, xi.flip(-1)) for o, xi in zip(out, x)]
    kept = [torch.equal(o, xi) for o, xi in zip(out, x)]
    assert all(f != k for f, k in zip(flipped, kept))
    assert 16 < sum(flipped) < 48
    assert torch.equal(random_flip_u8(x, torch.Generator(), p=0.0), x)
    assert torch.equal(random_flip_u8(x, torch.Generator(), p=1.0), x.flip(-1))


# --- DeviceLoader --------------------------------------------------------------------------------

@pytest.mark.parametrize("drop_last, batches, last", [(False, 5, 2), (True, 4, 12)])
def test_shapes_and_len(drop_last, batches, last):
    loader = DeviceLoader(numbered(50), 12, drop_last=drop_last, augment=True)
    out = list(loader)
    assert len(loader) == batches == len(out)
    assert len(out[-1][1]) == last and len(out[0][1]) == 12
    for x, y in out:
        assert x.dtype == torch.uint8 and x.shape[1:] == (3, 32, 32) and y.dtype == torch.int64


def test_every_sample_once_per_epoch():
    loader = DeviceLoader(numbered(50), 8, shuffle=True)
    for _ in range(2):
        seen = torch.cat([y for _, y in loader])
        assert sorted(seen.tolist()) == list(range(50)) and seen.tolist() != list(range(50))
        first_pixels = torch.cat([x[:, 0, 0, 0] for x, _ in DeviceLoader(numbered(50), 8)])
        assert sorted(first_pixels.tolist()) == list(range(50))


def test_images_stay_with_labels():
    data = numbered(50)
    for x, y in DeviceLoader(data, 7):
        assert torch.equal(x, data.images[y])


def test_no_shuffle_keeps_order():
    loader = DeviceLoader(numbered(50), 16, shuffle=False)
    assert torch.cat([y for _, y in loader]).tolist() == list(range(50))


def test_epochs_are_reproducible_and_resumable():
    def epoch_batches(loader):
        return [(x.clone(), y.clone()) for x, y in loader]

    a = DeviceLoader(numbered(), 16, augment=True, seed=5)
    epochs = [epoch_batches(a) for _ in range(3)]
    assert a.epoch == 3
    assert not torch.equal(epochs[0][0][1], epochs[1][0][1])  # a new shuffle each epoch

    b = DeviceLoader(numbered(), 16, augment=True, seed=5)
    b.set_epoch(2)  # resume at epoch 2
    for (xa, ya), (xb, yb) in zip(epochs[2], epoch_batches(b)):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)

    c = DeviceLoader(numbered(), 16, augment=True, seed=6)
    assert not torch.equal(epochs[0][0][0], epoch_batches(c)[0][0])


def test_iter_advances_the_epoch_even_before_the_first_batch():
    loader = DeviceLoader(numbered(), 16)
    iter(loader)
    assert loader.epoch == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_gives_the_same_batches_as_cpu():
    data = numbered()
    cpu = DeviceLoader(data, 16, augment=True, seed=3)
    gpu = DeviceLoader(data, 16, augment=True, seed=3, device="cuda")
    assert gpu.images.is_cuda
    for (xc, yc), (xg, yg) in zip(cpu, gpu):
        assert xg.is_cuda and yg.is_cuda
        assert torch.equal(xc, xg.cpu()) and torch.equal(yc, yg.cpu())


def test_bad_batch_size():
    with pytest.raises(ValueError, match="batch_size"):
        DeviceLoader(numbered(), 0)
