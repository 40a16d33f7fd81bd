"""Data on the CPU: the image-folder stream (any image size, torchvision-style geometry), the
DataLoader helper that transforms in the workers straight into a shared ring of batch buffers,
and its epoch, shard and error semantics (against DeviceLoader's epoch plan and plain torch)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kpfast import BlockTransform, KeySet
from kpfast.data import DeviceLoader, ImageSet
from kpfast.data.image_stream import (ImageFolderStream, center_crop_box, random_resized_crop_box,
                                      shorter_side_size)
from kpfast.data.pipeline import StreamLoader, TransformCollate
from kpfast.engine import Ranks
from kpfast.errors import ConfigError, DataError, DataNotFoundError
from kpfast.normalize import Normalize
import reference as ref

Image = pytest.importorskip("PIL.Image")
pytestmark = pytest.mark.usefixtures("one_thread")

SIZES = [(40, 30), (64, 48), (20, 80), (33, 33), (120, 45), (50, 50)]  # any size, any aspect


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """train/ and val/ with 2 classes of JPEG, PNG and grey images of many sizes."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c, name in enumerate(("cat", "dog")):
            d = root / split / name
            d.mkdir(parents=True)
            for i, (w, h) in enumerate(SIZES):
                pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                if i == 3:
                    Image.fromarray(pixels[..., 0]).save(d / f"{i}.png")  # grey
                else:
                    Image.fromarray(pixels).save(d / f"{i}.{'png' if i % 2 else 'jpg'}")
    return root


def keyed():
    return BlockTransform(KeySet.generate(4), ("shuffle", "negpos", "ffx"), mean=(0.5,) * 3, std=(0.25,) * 3)


# --- geometry --------------------------------------------------------------------------------


def test_resize_and_center_crop_follow_torchvision():
    # Resize(256) of a 500x375 photo is 341x256 (the longer side truncated); CenterCrop rounds.
    assert shorter_side_size(500, 375, 256) == (341, 256) and shorter_side_size(375, 500, 256) == (256, 341)
    assert center_crop_box(341, 256, 224) == (58, 16, 224, 224)  # round(58.5) = 58, as torchvision's int(round())
    assert center_crop_box(256, 256, 224) == (16, 16, 224, 224)


def test_random_resized_crop_boxes_lie_inside_and_keep_scale_and_ratio():
    rng = np.random.default_rng(1)
    for width, height in [(500, 375), (64, 48), (33, 97), (7, 5)]:
        for _ in range(200):
            left, top, w, h = random_resized_crop_box(width, height, rng)
            assert 0 <= left and left + w <= width and 0 <= top and top + h <= height and w > 0 and h > 0
    for _ in range(200):  # a large image: the first try succeeds, within scale and ratio up to rounding
        _, _, w, h = random_resized_crop_box(2000, 1500, rng)
        assert 0.08 - 0.002 <= w * h / (2000 * 1500) <= 1 and 3 / 4 - 0.01 <= w / h <= 4 / 3 + 0.01
    # Ten misses (a strip far outside the ratio range): the largest central box of ratio 4/3 or 3/4.
    assert random_resized_crop_box(1000, 10, np.random.default_rng(0)) == (493, 0, 13, 10)
    assert random_resized_crop_box(10, 1000, np.random.default_rng(0)) == (0, 493, 10, 13)


# --- the folder stream -----------------------------------------------------------------------


def test_stream_gives_square_uint8_images_of_any_input_size(folder):
    train = ImageFolderStream(folder, "train", size=16)
    val = ImageFolderStream(folder, "val", size=16, classes=train.classes)
    assert (len(train), train.classes, val.train, train.train) == (12, ("cat", "dog"), False, True)
    for ds in (train, val):
        for i in range(len(ds)):
            x, y = ds[i]
            assert x.shape == (3, 16, 16) and x.dtype == torch.uint8 and y == ds.labels[i]
    grey, _ = train[3]  # a grey image becomes three equal channels
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])


def test_evaluation_geometry_is_a_center_crop_of_the_resized_image(tmp_path):
    """An image already at the resize size (256) is only cropped: the exact center pixels."""
    pixels = np.random.default_rng(2).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    (tmp_path / "val" / "a").mkdir(parents=True)
    Image.fromarray(pixels).save(tmp_path / "val" / "a" / "0.png")
    x, _ = ImageFolderStream(tmp_path, "val", size=224)[0]
    assert torch.equal(x, torch.from_numpy(pixels[16:240, 16:240]).permute(2, 0, 1))


def test_training_crops_depend_on_seed_epoch_and_index_alone(folder):
    a, b = ImageFolderStream(folder, size=16, seed=3), ImageFolderStream(folder, size=16, seed=3)
    assert all(torch.equal(a[i][0], b[i][0]) for i in range(len(a)))
    b.set_epoch(1)
    assert not all(torch.equal(a[i][0], b[i][0]) for i in range(len(a)))
    a.set_epoch(1)
    assert torch.equal(a[5][0], b[5][0])


def test_stream_errors_name_the_problem(folder, tmp_path):
    with pytest.raises(DataNotFoundError, match="does not exist: expected .*/test/<class>/<image>"):
        ImageFolderStream(folder, "test")
    with pytest.raises(DataError, match="class folders that the given classes lack: dog"):
        ImageFolderStream(folder, "val", classes=("cat",))
    (tmp_path / "train" / "a").mkdir(parents=True)
    (tmp_path / "train" / "a" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    with pytest.raises(DataError, match="cannot read image .*broken.jpg"):
        ImageFolderStream(tmp_path)[0]
    archive = tmp_path / "data.zip"
    archive.write_bytes(b"PK")
    with pytest.raises(DataError, match="is a file: images are streamed from a folder"):
        ImageFolderStream(archive)


# --- the loader --------------------------------------------------------------------------------


class Indexed(torch.utils.data.Dataset):
    """Random uint8 images whose label is their index, so a batch says which images it holds."""

    def __init__(self, n=37, shape=(3, 8, 8), seed=0):
        g = torch.Generator().manual_seed(seed)
        self.images = torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=g)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], i


@pytest.mark.parametrize("workers", [0, 2])
def test_batches_are_the_transform_of_their_images_in_the_engines_epoch_order(workers):
    data, t = Indexed(), keyed()
    loader = StreamLoader(data, 8, transform=t, num_workers=workers, seed=11)
    raw = StreamLoader(data, 8, num_workers=workers, seed=11)  # uint8, no transform
    reference = DeviceLoader(ImageSet(data.images, torch.arange(len(data)) % 2, ("a", "b")), 8, seed=11)
    for epoch in (0, 1, 0):
        for each in (loader, raw, reference):
            each.set_epoch(epoch)
        got = [(x.clone(), y) for x, y in loader]
        assert sorted(torch.cat([y for _, y in got]).tolist()) == list(range(len(data)))  # each image once
        for x, y in got:
            assert x.dtype == torch.float32 and torch.equal(x, t(data.images[y]))  # as in this process
        # the order and batches of DeviceLoader (one epoch plan for every loader)
        for (x, _), (want, _) in zip(raw, reference, strict=True):
            assert torch.equal(x, want)
    assert len(loader) == 5


def fresh_seed():
    return int(torch.randint(1 << 30, ()))


@pytest.mark.parametrize("workers", [0, 2])
def test_stream_loader_matches_the_plain_path_on_fresh_random_images(workers):
    """Batches transformed in the workers into the ring are, bit for bit, the plain path (the
    transform applied in this process to the stacked images) and the numpy reference."""
    seed = fresh_seed()
    data, keys = Indexed(n=45, shape=(3, 16, 24), seed=seed), KeySet.generate(4)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    t = BlockTransform(keys, ("shuffle", "negpos", "ffx"), mean=mean, std=std)
    loader = StreamLoader(data, 12, transform=t, num_workers=workers, seed=seed)
    seen = []
    for x, y in loader:
        plain = t(torch.stack([data[i][0] for i in y.tolist()]))
        want = torch.from_numpy(ref.transform(data.images[y].numpy(), keys, ("shuffle", "negpos", "ffx"),
                                              mean=mean, std=std))
        assert torch.equal(x, plain) and torch.equal(x, want), seed
        seen += y.tolist()
    assert sorted(seen) == list(range(len(data)))  # 45 = 3 * 12 + 9: the short last batch too


def test_collate_keeps_its_stacking_buffer_and_stays_exact():
    """With out=, the uint8 batch is stacked into one kept buffer (no fresh batch per call): new
    images, a smaller last batch and another image size all give the transform of the images."""
    t = keyed()
    collate = TransformCollate(t)
    out = torch.empty(6, 3, 8, 8)
    kept = None
    for n in (6, 6, 4, 6):
        data = Indexed(n=n, seed=fresh_seed())
        x, _ = collate([data[i] for i in range(n)], out=out[:n])
        assert torch.equal(x, t(data.images))
        if kept is None:
            kept = collate._stacked.data_ptr()
        assert collate._stacked.data_ptr() == kept  # the same buffer every time
    larger = Indexed(n=2, shape=(3, 16, 16), seed=fresh_seed())
    x, _ = collate([larger[0], larger[1]], out=torch.empty(2, 3, 16, 16))
    assert torch.equal(x, t(larger.images))
    # Without out=, the result is a fresh tensor even for a transform that returns its input.
    identity = TransformCollate(torch.nn.Identity())
    a, _ = identity([larger[0], larger[1]])
    b, _ = identity([larger[1], larger[0]])
    assert torch.equal(a, larger.images) and torch.equal(b, larger.images.flip(0))


def test_exported_from_kpfast_data():
    import kpfast.data as data
    from kpfast.data import pipeline

    assert (data.StreamLoader, data.TransformCollate, data.ImageFolderStream) == (
        pipeline.StreamLoader, pipeline.TransformCollate, ImageFolderStream)


def test_cpu_batches_are_views_of_the_shared_ring():
    loader = StreamLoader(Indexed(), 8, num_workers=2)
    x, y = next(iter(loader))
    assert x.dtype == torch.uint8 and loader.ring.is_shared()
    assert x.untyped_storage().data_ptr() == loader.ring.untyped_storage().data_ptr()  # no copy on the way
    assert len(loader.ring) == 2 * 2 + 2  # prefetch_factor * workers in flight, plus two


def test_each_rank_streams_its_share_of_the_global_batch():
    data = Indexed(n=30)
    one = [y for _, y in StreamLoader(data, 8, num_workers=0, seed=2)]
    shards = [[y for _, y in StreamLoader(data, 8, num_workers=0, seed=2, ranks=Ranks(r, 2))] for r in range(2)]
    for y, y0, y1 in zip(one[:-1], *shards):
        assert torch.equal(torch.cat([y0, y1]), y)
    assert torch.equal(torch.cat([shards[0][-1], shards[1][-1]]), one[-1])  # 30 = 3 * 8 + 6: 3 each


class WritesInto(torch.nn.Module):
    """A transform with forward(x, out=...): the collate must hand it the ring slot."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, x, out=None):
        self.calls.append(out is not None)
        result = x.float() / 255
        return result if out is None else out.copy_(result)


def test_collate_writes_into_a_given_buffer():
    data, t = Indexed(n=4), keyed()
    samples = [data[i] for i in range(4)]
    buffer = torch.empty(4, 3, 8, 8)
    x, y = TransformCollate(t)(samples, out=buffer)
    assert x is buffer and torch.equal(x, t(data.images)) and y.tolist() == [0, 1, 2, 3]
    direct = WritesInto()
    x, _ = TransformCollate(direct)(samples, out=buffer)
    assert direct.calls == [True] and torch.equal(x, data.images.float() / 255)
    # as the collate_fn of a DataLoader of one's own, with workers
    plain = torch.utils.data.DataLoader(data, batch_size=2, num_workers=2, collate_fn=TransformCollate(t))
    assert torch.equal(torch.cat([x for x, _ in plain]), t(data.images))


def test_loader_errors_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="must live on the CPU .* on meta"):
        TransformCollate(Normalize((0.5,) * 3, (0.25,) * 3).to("meta"))
    with pytest.raises(ConfigError, match="cannot run on the CPU images of the DataLoader workers"):
        next(iter(StreamLoader(Indexed(), 8, transform=keyed().to("meta"), num_workers=0)))
    with pytest.raises(ConfigError, match="global batch of all 2 ranks"):
        StreamLoader(Indexed(), 9, ranks=Ranks(0, 2))
    (tmp_path / "train" / "a").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "train" / "a" / "0.png")
    (tmp_path / "train" / "a" / "1.png").write_bytes(b"\x89PNG broken")
    loader = StreamLoader(ImageFolderStream(tmp_path, size=8), 2, num_workers=1)
    with pytest.raises(DataError, match=r"cannot read image .*1\.png") as e:
        list(loader)
    assert "Traceback" not in str(e.value)  # the worker's error itself, not a wrapped traceback


def test_kpfast_train_streams_an_image_folder_of_any_image_size(folder, tmp_path):
    import json

    from kpfast.cli import main

    out = tmp_path / "run"
    assert main(["train", "--data", str(folder), "--image-size", "16", "--workers", "2", "--epochs", "2",
                 "--batch-size", "4", "--lr", "0.01", "--device", "cpu", "--key", str(tmp_path / "k.key"),
                 "--out", str(out)]) == 0
    summary = json.loads((out / "train.json").read_text())
    assert summary["config"]["image_size"] == 16 and (summary["train_images"], summary["test_images"]) == (12, 12)
    assert summary["normalization"]["mean"] == [0.485, 0.456, 0.406]  # ImageNet's, for a streamed folder
    assert len(summary["history"]["loss"]) == 2 and all(math.isfinite(v) for v in summary["history"]["loss"])
