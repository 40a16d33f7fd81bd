"""The command line: keygen, exact encrypt/decrypt round trips through PNG files, clear errors."""
import json
import os
import stat

import numpy as np
import pytest
from PIL import Image

from kpfast.cli import main
from kpfast.report.imageio import read_png_codes


@pytest.fixture
def key_file(tmp_path):
    path = tmp_path / "k.key"
    assert main(["keygen", str(path), "--block-size", "4"]) == 0
    return path


@pytest.fixture
def image_folder(tmp_path):
    folder = tmp_path / "plain"
    (folder / "cats").mkdir(parents=True)
    rng = np.random.default_rng()
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (16, 24, 3), dtype=np.uint8)).save(folder / "cats" / f"{i}.png")
    return folder


def test_keygen_writes_owner_only_and_refuses_to_overwrite(key_file, capsys):
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    assert main(["keygen", str(key_file)]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err


@pytest.mark.parametrize("ops, bitdepth", [("shuffle,negpos", 8), ("shuffle,negpos,ffx", 16), ("ffx,negpos", 16)])
def test_encrypt_decrypt_round_trip_is_exact(tmp_path, key_file, image_folder, ops, bitdepth):
    enc, dec = tmp_path / "enc", tmp_path / "dec"
    assert main(["encrypt", str(image_folder), str(enc), "--key", str(key_file), "--ops", ops]) == 0
    files = sorted(enc.rglob("*.png"))
    assert len(files) == 3
    manifest = json.loads((enc / "kpfast-manifest.json").read_text())
    assert manifest["bitdepth"] == bitdepth and "perm" not in manifest
    codes = read_png_codes(files[0])
    plain = np.asarray(Image.open(image_folder / "cats" / "0.png")).transpose(2, 0, 1)
    assert codes.shape == plain.shape and not np.array_equal(codes, plain)
    assert main(["decrypt", str(enc), str(dec), "--key", str(key_file)]) == 0
    for i in range(3):
        a = np.asarray(Image.open(image_folder / "cats" / f"{i}.png"))
        b = np.asarray(Image.open(dec / "cats" / f"{i}.png"))
        assert np.array_equal(a, b)


def test_decrypt_with_the_wrong_key_is_refused(tmp_path, key_file, image_folder, capsys):
    other = tmp_path / "other.key"
    main(["keygen", str(other)])
    main(["encrypt", str(image_folder), str(tmp_path / "enc"), "--key", str(key_file)])
    assert main(["decrypt", str(tmp_path / "enc"), str(tmp_path / "dec"), "--key", str(other)]) == 2
    assert "wrong key" in capsys.readouterr().err


def test_clear_errors(tmp_path, key_file, image_folder, capsys):
    Image.fromarray(np.zeros((10, 16, 3), np.uint8)).save(image_folder / "odd.png")
    assert main(["encrypt", str(image_folder), str(tmp_path / "e"), "--key", str(key_file)]) == 2
    assert "odd.png" in capsys.readouterr().err
    assert main(["encrypt", str(image_folder), str(tmp_path / "e"), "--key", str(key_file), "--ops", "rot"]) == 2
    assert main(["decrypt", str(image_folder), str(tmp_path / "d"), "--key", str(key_file)]) == 2
    assert "manifest" in capsys.readouterr().err
    (tmp_path / "bad.key").write_text("{}")
    assert main(["encrypt", str(image_folder), str(tmp_path / "e"), "--key", str(tmp_path / "bad.key")]) == 2


def test_bench_quick_prints_a_table(capsys):
    assert main(["bench", "--quick", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "| CIFAR-10 512x3x32x32 | 4 |" in out and "| kpfast / copy |" in out
    row = next(line for line in out.splitlines() if line.startswith("| CIFAR-10"))
    assert float(row.split("|")[6].strip().removesuffix("x")) > 0  # the measured ratio to the copy
