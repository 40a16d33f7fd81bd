import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kpfast.data import folders
from kpfast.data.folders import load_image_folder

# CIFAR-10 as a zip of JPEGs (train/<class>/*.jpg, test/<class>/*.jpg), where one is at hand:
# $KPFAST_CIFAR10_ZIP, else the repository's ignored .data/ folder.
REAL_ZIP = Path(os.environ.get("KPFAST_CIFAR10_ZIP", Path(__file__).parents[1] / ".data" / "cifar10-jpeg.zip"))
CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                 "truck")


def make_tree(root: Path, counts: dict[str, dict[str, int]], size: tuple[int, int] = (5, 4),
              seed: int = 0) -> dict[str, list[tuple[str, np.ndarray]]]:
    """Random RGB PNGs at root/<split>/<class>/<i>.png; returns {split: [(class, HWC)]} in
    the loader's order (classes sorted, then file names)."""
    rng = np.random.default_rng(seed)
    expected: dict[str, list[tuple[str, np.ndarray]]] = {}
    for split, classes in counts.items():
        expected[split] = []
        for cls in sorted(classes):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(classes[cls]):
                pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:03d}.png")
                expected[split].append((cls, pixels))
    return expected


def zip_tree(root: Path, dest: Path) -> Path:
    with zipfile.ZipFile(dest, "w") as z:
        for p in sorted(root.rglob("*")):
            z.write(p, p.relative_to(root).as_posix())  # folders too, as "name/" entries
    return dest


COUNTS = {"train": {"cat": 3, "ant": 2, "bee": 4}, "test": {"ant": 1, "bee": 2, "cat": 1}}


@pytest.fixture
def tree(tmp_path):
    return tmp_path / "data", make_tree(tmp_path / "data", COUNTS)


@pytest.mark.parametrize("as_zip", [False, True])
def test_exact_round_trip(tree, tmp_path, as_zip):
    root, expected = tree
    source = zip_tree(root, tmp_path / "data.zip") if as_zip else root
    train, test = load_image_folder(source, cache_root=tmp_path / "cache", progress=False)
    assert train.classes == ("ant", "bee", "cat") == test.classes
    for imageset, split in ((train, "train"), (test, "test")):
        assert imageset.images.shape == (len(expected[split]), 3, 4, 5)
        for i, (cls, pixels) in enumerate(expected[split]):
            assert imageset.classes[imageset.labels[i]] == cls
            assert np.array_equal(imageset.images[i].permute(1, 2, 0).numpy(), pixels)


def test_grey(tree, tmp_path):
    root, expected = tree
    train, _ = load_image_folder(root, mode="L", cache=False, progress=False)
    assert train.images.shape == (9, 1, 4, 5)
    grey = np.asarray(Image.fromarray(expected["train"][0][1]).convert("L"))
    assert np.array_equal(train.images[0, 0].numpy(), grey)


def test_cache_is_used_and_invalidated(tree, tmp_path, monkeypatch):
    root, _ = tree
    cache = tmp_path / "cache"
    first, _ = load_image_folder(root, cache_root=cache, progress=False)
    assert len(list((cache / "folders").glob("*.npz"))) == 1

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again despite the cache")

    with monkeypatch.context() as m:
        m.setattr(folders, "_decode_all", no_decoding)
        again, _ = load_image_folder(root, cache_root=cache, progress=False)
    assert np.array_equal(first.images.numpy(), again.images.numpy())

    # A changed file changes the key, so it is decoded afresh.
    Image.fromarray(np.zeros((4, 5, 3), np.uint8)).save(root / "train" / "ant" / "000.png")
    changed, _ = load_image_folder(root, cache_root=cache, progress=False)
    assert changed.images[0].sum() == 0


def test_process_pool_gives_the_same_result(tree, tmp_path, monkeypatch):
    root, _ = tree
    serial, _ = load_image_folder(root, cache=False, workers=1, progress=False)
    monkeypatch.setattr(folders, "_MIN_POOL", 0)
    monkeypatch.setattr(folders, "_CHUNK", 2)
    pooled, _ = load_image_folder(root, cache=False, workers=2, progress=False)
    assert np.array_equal(serial.images.numpy(), pooled.images.numpy())


def test_hidden_files_are_ignored(tree, tmp_path):
    root, _ = tree
    (root / "train" / "ant" / ".DS_Store").write_bytes(b"junk")
    (root / "train" / "README.txt").write_text("not a class")
    train, _ = load_image_folder(root, cache=False, progress=False)
    assert len(train) == 9 and train.classes == ("ant", "bee", "cat")


def test_missing_split(tmp_path):
    make_tree(tmp_path / "d", {"train": {"a": 1}})
    with pytest.raises(ValueError, match="test/ is missing"):
        load_image_folder(tmp_path / "d", cache=False, progress=False)


def test_class_missing_in_test(tmp_path):
    make_tree(tmp_path / "d", {"train": {"a": 1, "b": 1}, "test": {"a": 1}})
    with pytest.raises(ValueError, match=r"test/ lacks class folder\(s\) \['b'\]"):
        load_image_folder(tmp_path / "d", cache=False, progress=False)


@pytest.mark.parametrize("as_zip", [False, True])
def test_empty_class(tmp_path, as_zip):
    make_tree(tmp_path / "d", {"train": {"a": 1}, "test": {"a": 1}})
    (tmp_path / "d" / "test" / "b").mkdir()
    (tmp_path / "d" / "train" / "b").mkdir()
    source = zip_tree(tmp_path / "d", tmp_path / "d.zip") if as_zip else tmp_path / "d"
    with pytest.raises(ValueError, match="class folder train/b/ holds no images"):
        load_image_folder(source, cache=False, progress=False)


@pytest.mark.parametrize("as_zip, workers", [(False, 1), (True, 1), (True, 2)])
def test_corrupt_image_is_named(tmp_path, monkeypatch, as_zip, workers):
    monkeypatch.setattr(folders, "_MIN_POOL", 0)  # with workers=2: fails inside a worker
    make_tree(tmp_path / "d", {"train": {"a": 2}, "test": {"a": 1}})
    png = tmp_path / "d" / "train" / "a" / "001.png"
    png.write_bytes(png.read_bytes()[:30])
    source = zip_tree(tmp_path / "d", tmp_path / "d.zip") if as_zip else tmp_path / "d"
    with pytest.raises(ValueError, match="cannot read image train/a/001.png"):
        load_image_folder(source, cache=False, workers=workers, progress=False)


def test_size_mismatch_is_named(tmp_path):
    make_tree(tmp_path / "d", {"train": {"a": 2}, "test": {"a": 1}})
    Image.new("RGB", (6, 6)).save(tmp_path / "d" / "test" / "a" / "000.png")
    with pytest.raises(ValueError, match="test/a/000.png is 6x6, but the first image is 5x4"):
        load_image_folder(tmp_path / "d", cache=False, progress=False)


def test_not_a_folder_or_zip(tmp_path):
    (tmp_path / "x.zip").write_bytes(b"nope")
    with pytest.raises(ValueError, match="neither a folder nor a readable zip"):
        load_image_folder(tmp_path / "x.zip", cache=False)
    with pytest.raises(FileNotFoundError):
        load_image_folder(tmp_path / "missing.zip", cache=False)


@pytest.mark.skipif(not REAL_ZIP.exists(), reason=f"no CIFAR-10 JPEG zip at {REAL_ZIP} (set KPFAST_CIFAR10_ZIP)")
def test_real_cifar10_jpeg_members(tmp_path):
    # Decoding all 60,000 images takes seconds; copy two per class and split to a small zip.
    with zipfile.ZipFile(REAL_ZIP) as z:
        names = [n for n in z.namelist() if not n.endswith("/")]
        assert len(names) == 60_000
        picked = [next(n for n in names if n.startswith(f"{split}/{cls}/"))
                  for split in ("train", "test") for cls in CIFAR_CLASSES]
        with zipfile.ZipFile(tmp_path / "small.zip", "w") as small:
            for n in picked:
                small.writestr(n, z.read(n))
    train, test = load_image_folder(tmp_path / "small.zip", cache=False, progress=False)
    assert train.classes == CIFAR_CLASSES == test.classes
    assert train.images.shape == (10, 3, 32, 32) and train.labels.tolist() == list(range(10))
    assert train.images.float().std() > 20  # real photos, not blank
