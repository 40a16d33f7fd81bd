"""kpfast encrypt / decrypt: bit-exact round trips for every chain and image mode, codes equal to
the numpy reference, nothing overwritten or mixed unasked, no silent conversion, interrupted runs
that leave complete files only, and one-line errors that name the file.

Every image is fresh random data written by Pillow or pypng."""
import itertools
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import png
import pytest
import reference
from PIL import Image

from kpfast.cli import crypt, main
from kpfast.keys import KeySet
from kpfast.report.imageio import read_png

MODES = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}
CHAINS = [c for r in (1, 2, 3) for c in itertools.permutations(("shuffle", "negpos", "ffx"), r)]  # all 15
MANIFEST = "kpfast-manifest.json"


def key(tmp_path: Path, channels: int = 3, block_size: int = 4, name: str = "k.key") -> Path:
    path = tmp_path / name
    KeySet.generate(block_size, channels).save(path)
    return path


def random_image(mode: str, h: int = 8, w: int = 12, rng=None) -> Image.Image:
    rng = rng or np.random.default_rng()
    shape = (h, w) if len(mode) == 1 else (h, w, len(mode))
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode)


def plain_folder(root: Path, mode: str = "RGB", files=("a/0.png", "a/1.png", "b/0.png")) -> Path:
    for name in files:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        random_image(mode).save(root / name)
    return root


def write_png16(path: Path, values: np.ndarray) -> None:
    """values uint16 [H, W] (grey) or [H, W, 3] (RGB) as a 16-bit PNG."""
    h, w = values.shape[:2]
    planes = 1 if values.ndim == 2 else values.shape[2]
    with open(path, "wb") as f:
        png.Writer(w, h, greyscale=planes == 1, bitdepth=16).write(f, values.reshape(h, w * planes))


def run(capsys, *argv) -> tuple[int, str]:
    """Exit status and the command's last line on stderr (progress bars come before it)."""
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    return code, err.splitlines()[-1] if err else ""


def pixels(path: Path, mode: str) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert(mode))


def protected_samples(path: Path, keys: KeySet, ops, mode: str) -> np.ndarray:
    """What encrypt must store for the image at `path`: the numpy reference's codes, spread."""
    x = pixels(path, mode).reshape(*pixels(path, mode).shape[:2], len(mode)).transpose(2, 0, 1)
    scale = keys.ffx_max if "ffx" in ops else 255
    y = reference.transform(x[None], keys, ops, rounding="nearest")[0].astype(np.float64)
    return np.round(y * scale).astype(np.int64) * (65535 // scale if "ffx" in ops else 1)


def files_and_bytes(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --- exact round trips --------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
@pytest.mark.parametrize("ops", CHAINS, ids=",".join)
def test_round_trip_is_bit_exact_and_codes_match_the_reference(tmp_path, capsys, ops, channels):
    mode, k = MODES[channels], key(tmp_path, channels)
    plain = plain_folder(tmp_path / "plain", mode)
    random_image(mode, 16, 8).save(plain / "b" / "tall.png")  # another size in the same folder
    assert run(capsys, "encrypt", plain, tmp_path / "enc", "--key", k, "--ops", ",".join(ops))[0] == 0
    assert run(capsys, "decrypt", tmp_path / "enc", tmp_path / "dec", "--key", k)[0] == 0

    keys, ffx = KeySet.load(k), "ffx" in ops
    manifest = json.loads((tmp_path / "enc" / MANIFEST).read_text())
    scale = keys.ffx_max if ffx else 255
    assert manifest["files"] == ["a/0.png", "a/1.png", "b/0.png", "b/tall.png"]
    assert (manifest["code_scale"], manifest["bitdepth"], manifest["code_step"]) == \
        ((scale, 16, 65535 // scale) if ffx else (255, 8, 1))
    for name in manifest["files"]:
        samples, bitdepth = read_png(tmp_path / "enc" / name)
        assert bitdepth == manifest["bitdepth"]
        assert np.array_equal(samples, protected_samples(plain / name, keys, ops, mode))
        assert np.array_equal(pixels(tmp_path / "dec" / name, mode), pixels(plain / name, mode))
        with Image.open(tmp_path / "dec" / name) as im:
            assert im.mode == mode


@pytest.mark.parametrize("channels, mode, exact", [(3, "P", "RGB"), (4, "P+transparency", "RGBA"), (1, "1", "L")])
def test_palette_and_bilevel_images_are_their_exact_8_bit_pixels(tmp_path, capsys, channels, mode, exact):
    k, plain = key(tmp_path, channels), tmp_path / "plain"
    plain.mkdir()
    im = random_image("L").convert("1") if mode == "1" else random_image("RGB").convert("P")
    if mode == "P+transparency":
        im.info["transparency"] = 0
    im.save(plain / "x.png")
    assert run(capsys, "encrypt", plain, tmp_path / "enc", "--key", k)[0] == 0
    assert run(capsys, "decrypt", tmp_path / "enc", tmp_path / "dec", "--key", k)[0] == 0
    assert np.array_equal(pixels(tmp_path / "dec" / "x.png", exact), pixels(plain / "x.png", exact))


def test_jpeg_input_round_trips_its_decoded_pixels(tmp_path, capsys):
    k, plain = key(tmp_path), tmp_path / "plain"
    plain.mkdir()
    random_image("RGB").save(plain / "x.jpg", quality=90)
    assert run(capsys, "encrypt", plain, tmp_path / "enc", "--key", k)[0] == 0
    assert run(capsys, "decrypt", tmp_path / "enc", tmp_path / "dec", "--key", k)[0] == 0
    assert np.array_equal(pixels(tmp_path / "dec" / "x.png", "RGB"), pixels(plain / "x.jpg", "RGB"))


@pytest.mark.parametrize("channels", [1, 3])
def test_ffx_codes_are_spread_over_16_bits_so_viewers_show_the_image(tmp_path, capsys, channels):
    k = key(tmp_path, channels)
    plain = plain_folder(tmp_path / "plain", MODES[channels])
    assert run(capsys, "encrypt", plain, tmp_path / "enc", "--key", k, "--ops", "ffx")[0] == 0
    samples, bitdepth = read_png(tmp_path / "enc" / "a" / "0.png")
    assert bitdepth == 16 and samples.max() > 0.9 * 65535  # codes up to ~999 alone would stay below 1000
    with Image.open(tmp_path / "enc" / "a" / "0.png") as im:  # what an 8-bit viewer shows: not black
        shown = np.asarray(im).astype(np.float64) / (257 if im.mode.startswith("I;16") else 1)
    assert shown.mean() > 40


# --- names and folders: nothing overwritten, nothing mixed ------------------------------------


@pytest.mark.parametrize("names", [("photo.png", "photo.bmp"), ("Photo.png", "photo.jpg")])  # case: macOS, Windows
def test_two_inputs_with_one_output_name_are_refused(tmp_path, capsys, names):
    k, plain = key(tmp_path), tmp_path / "plain"
    plain.mkdir()
    for name in names:
        random_image("RGB").save(plain / name)
    code, err = run(capsys, "encrypt", plain, tmp_path / "enc", "--key", k)
    assert code == 2 and all(name in err for name in names) and "rename" in err
    assert not (tmp_path / "enc").exists()


def test_a_non_empty_output_needs_force_and_keeps_other_files(tmp_path, capsys):
    k, plain = key(tmp_path), plain_folder(tmp_path / "plain")
    (tmp_path / "enc").mkdir()
    (tmp_path / "enc" / "notes.txt").write_text("mine")
    code, err = run(capsys, "encrypt", plain, tmp_path / "enc", "--key", k)
    assert code == 2 and "not empty" in err and "notes.txt" in err and "--force" in err
    assert files_and_bytes(tmp_path / "enc") == {"notes.txt": b"mine"}
    assert run(capsys, "encrypt", plain, tmp_path / "enc", "--key", k, "--force")[0] == 0
    assert (tmp_path / "enc" / "notes.txt").read_text() == "mine" and (tmp_path / "enc" / MANIFEST).exists()


@pytest.mark.parametrize("where", ["same", "inside", "around"])
def test_an_output_overlapping_the_input_needs_force(tmp_path, capsys, where):
    k = key(tmp_path)
    if where == "around":  # the input lies inside the output
        plain, out = plain_folder(tmp_path / "out" / "plain", files=("a/0.jpg", "b/1.jpg")), tmp_path / "out"
    else:
        plain = plain_folder(tmp_path / "plain", files=("a/0.jpg", "b/1.jpg"))
        out = plain if where == "same" else plain / "enc"
    before = files_and_bytes(plain)
    code, err = run(capsys, "encrypt", plain, out, "--key", k)
    assert code == 2 and "--force" in err and str(out) in err
    assert files_and_bytes(plain) == before
    # With --force it writes beside the inputs (their .png names are free), and leaves them as they were.
    assert run(capsys, "encrypt", plain, out, "--key", k, "--force")[0] == 0
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["files"] == ["a/0.png", "b/1.png"]
    assert all(files_and_bytes(plain)[name] == data for name, data in before.items())


def test_force_never_replaces_an_input(tmp_path, capsys):
    k, plain = key(tmp_path), plain_folder(tmp_path / "plain")
    before = files_and_bytes(plain)
    code, err = run(capsys, "encrypt", plain, plain, "--key", k, "--force")
    assert code == 2 and "would replace the input" in err and "0.png" in err
    assert files_and_bytes(plain) == before


def test_decrypting_in_place_is_refused_every_time_and_garbles_nothing(tmp_path, capsys):
    k, plain = key(tmp_path), plain_folder(tmp_path / "plain")
    enc = tmp_path / "enc"
    assert run(capsys, "encrypt", plain, enc, "--key", k, "--ops", "shuffle,negpos")[0] == 0
    before = files_and_bytes(enc)
    for _ in range(2):
        code, err = run(capsys, "decrypt", enc, enc, "--key", k, "--force")
        assert code == 2 and "encrypted set" in err
        assert files_and_bytes(enc) == before
    code, err = run(capsys, "decrypt", enc, enc / "plain", "--key", k, "--force")
    assert code == 2 and "lies inside" in err and not (enc / "plain").exists()
    assert run(capsys, "decrypt", enc, tmp_path / "dec", "--key", k)[0] == 0
    for name in ("a/0.png", "a/1.png", "b/0.png"):
        assert np.array_equal(pixels(tmp_path / "dec" / name, "RGB"), pixels(plain / name, "RGB"))


@pytest.mark.parametrize("other", ["key", "chain"])
def test_an_output_holding_another_encrypted_set_is_refused_even_with_force(tmp_path, capsys, other):
    k = key(tmp_path)
    k2 = key(tmp_path, name="other.key") if other == "key" else k
    ops2 = "shuffle" if other == "chain" else "shuffle,negpos,ffx"
    first, second = plain_folder(tmp_path / "first"), plain_folder(tmp_path / "second", files=("a/9.png",))
    enc = tmp_path / "enc"
    assert run(capsys, "encrypt", first, enc, "--key", k)[0] == 0
    before = files_and_bytes(enc)
    for target in (enc, enc / "more", tmp_path):  # the set itself, a folder inside it, one around it
        code, err = run(capsys, "encrypt", second, target, "--key", k2, "--ops", ops2, "--force")
        assert code == 2 and "encrypted set" in err and "not even with --force" in err
    assert files_and_bytes(enc) == before
    assert run(capsys, "decrypt", enc, tmp_path / "dec", "--key", k)[0] == 0
    for name in ("a/0.png", "a/1.png", "b/0.png"):
        assert np.array_equal(pixels(tmp_path / "dec" / name, "RGB"), pixels(first / name, "RGB"))


def test_an_encrypted_set_is_not_encrypted_again(tmp_path, capsys):
    k, plain = key(tmp_path), plain_folder(tmp_path / "plain")
    assert run(capsys, "encrypt", plain, tmp_path / "enc", "--key", k)[0] == 0
    for source in (tmp_path / "enc", tmp_path / "enc" / "a", tmp_path):
        code, err = run(capsys, "encrypt", source, tmp_path / "again", "--key", k)
        assert code == 2 and "protected already" in err
    assert not (tmp_path / "again").exists()


def test_hidden_files_and_os_litter_are_skipped(tmp_path, capsys):
    k, plain = key(tmp_path), plain_folder(tmp_path / "plain", files=("a/0.png",))
    (plain / "._0.png").write_bytes(b"AppleDouble, not an image")
    (plain / "__MACOSX").mkdir()
    (plain / "__MACOSX" / "1.png").write_bytes(b"junk")
    assert run(capsys, "encrypt", plain, tmp_path / "enc", "--key", k)[0] == 0
    assert json.loads((tmp_path / "enc" / MANIFEST).read_text())["files"] == ["a/0.png"]


# --- no silent conversion -------------------------------------------------------------------


def _rgba(path):
    random_image("RGBA").save(path)


def _grey(path):
    random_image("L").save(path)


def _rgb(path):
    random_image("RGB").save(path)


def _grey16(path):
    write_png16(path, np.random.default_rng().integers(0, 65536, (8, 12), dtype=np.uint16))


def _rgb16(path):
    write_png16(path, np.random.default_rng().integers(0, 65536, (8, 12, 3), dtype=np.uint16))


def _high_byte(path):  # what --convert keeps of a 16-bit PNG
    samples, _ = read_png(path)
    return (samples >> 8).astype(np.uint8).transpose(1, 2, 0).squeeze(-1 if samples.shape[0] == 1 else ())


@pytest.mark.parametrize("make, channels, found, converted", [
    (_rgba, 3, "RGBA", lambda p: pixels(p, "RGB")),  # alpha would be lost
    (_grey, 3, "L", lambda p: pixels(p, "RGB")),  # grey would become RGB
    (_rgb, 1, "RGB", lambda p: pixels(p, "L")),  # colour would become grey
    (_grey16, 1, "16-bit", _high_byte),  # 16 bits would be cut to 8
    (_rgb16, 3, "16-bit", _high_byte),
])
def test_inexact_images_are_refused_by_name_unless_converted(tmp_path, capsys, make, channels, found, converted):
    k, plain = key(tmp_path, channels), tmp_path / "plain"
    plain.mkdir()
    random_image(MODES[channels]).save(plain / "fine.png")
    make(plain / "odd.png")
    code, err = run(capsys, "encrypt", plain, tmp_path / "enc", "--key", k)
    assert code == 2 and "odd.png" in err and found in err and "--convert" in err
    assert not (tmp_path / "enc").exists()  # refused before anything was written
    assert main(["encrypt", str(plain), str(tmp_path / "enc"), "--key", str(k), "--convert"]) == 0
    out = capsys.readouterr().out
    assert "converted 1 image(s)" in out and "odd.png" in out
    assert run(capsys, "decrypt", tmp_path / "enc", tmp_path / "dec", "--key", k)[0] == 0
    assert np.array_equal(pixels(tmp_path / "dec" / "odd.png", MODES[channels]), converted(plain / "odd.png"))
    assert np.array_equal(pixels(tmp_path / "dec" / "fine.png", MODES[channels]),
                          pixels(plain / "fine.png", MODES[channels]))


def test_rgba_with_a_4_channel_key_keeps_alpha_and_the_hint_says_so(tmp_path, capsys):
    plain = tmp_path / "plain"
    plain.mkdir()
    _rgba(plain / "x.png")
    code, err = run(capsys, "encrypt", plain, tmp_path / "enc", "--key", key(tmp_path, 3))
    assert code == 2 and "--channels 4" in err
    k4 = key(tmp_path, 4, name="k4.key")
    assert run(capsys, "encrypt", plain, tmp_path / "enc", "--key", k4)[0] == 0
    assert run(capsys, "decrypt", tmp_path / "enc", tmp_path / "dec", "--key", k4)[0] == 0
    assert np.array_equal(pixels(tmp_path / "dec" / "x.png", "RGBA"), pixels(plain / "x.png", "RGBA"))


# --- interrupted runs ---------------------------------------------------------------------


@pytest.mark.parametrize("failure", [OSError("disk on fire"), KeyboardInterrupt()], ids=["error", "ctrl-c"])
def test_an_interrupted_run_leaves_complete_files_and_no_manifest(tmp_path, capsys, monkeypatch, failure):
    k = key(tmp_path)
    plain = plain_folder(tmp_path / "plain", files=[f"a/{i}.png" for i in range(5)])
    real, written = crypt.write_png, []

    def fail_on_the_third(path, samples, bitdepth):
        if len(written) == 2:
            raise failure
        real(path, samples, bitdepth)
        written.append(path)

    monkeypatch.setattr(crypt, "write_png", fail_on_the_third)
    enc = tmp_path / "enc"
    if isinstance(failure, KeyboardInterrupt):
        code, err = run(capsys, "encrypt", plain, enc, "--key", k)
        assert code == 130 and "no manifest" in err and "--force" in err
    else:
        with pytest.raises(OSError, match="disk on fire"):
            main(["encrypt", str(plain), str(enc), "--key", str(k)])
    assert sorted(p.name for p in enc.rglob("*")) == ["0.png", "1.png", "a"]  # no manifest, no temporary file
    keys = KeySet.load(k)
    for name in ("a/0.png", "a/1.png"):  # both complete: they hold the reference codes
        assert np.array_equal(read_png(enc / name)[0],
                              protected_samples(plain / name, keys, ("shuffle", "negpos", "ffx"), "RGB"))
    code, err = run(capsys, "decrypt", enc, tmp_path / "dec", "--key", k)
    assert code == 2 and MANIFEST in err
    monkeypatch.setattr(crypt, "write_png", real)
    assert run(capsys, "encrypt", plain, enc, "--key", k)[0] == 2  # not empty: the rerun needs --force
    assert run(capsys, "encrypt", plain, enc, "--key", k, "--force")[0] == 0
    assert run(capsys, "decrypt", enc, tmp_path / "dec", "--key", k)[0] == 0
    assert len(list((tmp_path / "dec").rglob("*.png"))) == 5


# --- bad inputs: one line naming the file ----------------------------------------------------


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(width: int = 20000, height: int = 20000) -> bytes:
    """A PNG header claiming width x height grey pixels (the data is not there: it is never read)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(b"\0" * 64)) + \
        _chunk(b"IEND", b"")


def one_line_error(capsys, argv, *needles) -> None:
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert code == 2 and "Traceback" not in err and last.startswith(f"kpfast {argv[0]}: error: "), err
    for needle in needles:
        assert str(needle) in last, last


@pytest.mark.parametrize("content, needle", [(b"\x89PNG\r\n\x1a\n broken", "cannot read image"),
                                             (bomb_png(), "exceeds limit"),
                                             (bomb_png(10000, 10000), "exceeds limit")])
def test_unreadable_images_and_decompression_bombs(tmp_path, capsys, content, needle):
    plain = plain_folder(tmp_path / "plain", files=("a/0.png",))
    (plain / "a" / "bad.png").write_bytes(content)
    one_line_error(capsys, ["encrypt", plain, tmp_path / "enc", "--key", key(tmp_path)], plain / "a" / "bad.png",
                   needle)
    assert not (tmp_path / "enc").exists()


def test_truncated_image_data_fails_with_its_name(tmp_path, capsys):
    plain = plain_folder(tmp_path / "plain", files=("a/0.png",))
    random_image("RGB", 64, 64).save(plain / "a" / "cut.png")
    data = (plain / "a" / "cut.png").read_bytes()
    (plain / "a" / "cut.png").write_bytes(data[:len(data) // 2])  # a sound header, half the pixels
    one_line_error(capsys, ["encrypt", plain, tmp_path / "enc", "--key", key(tmp_path)], "cut.png")
    assert not (tmp_path / "enc" / MANIFEST).exists()


def test_empty_or_missing_input(tmp_path, capsys):
    k = key(tmp_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    one_line_error(capsys, ["encrypt", tmp_path / "empty", tmp_path / "enc", "--key", k], "no images", "empty")
    one_line_error(capsys, ["encrypt", tmp_path / "nowhere", tmp_path / "enc", "--key", k], "nowhere")
    one_line_error(capsys, ["decrypt", tmp_path / "nowhere", tmp_path / "dec", "--key", k], "nowhere")
    one_line_error(capsys, ["decrypt", tmp_path / "empty", tmp_path / "dec", "--key", k], MANIFEST)


def test_bad_options_and_key_files(tmp_path, capsys):
    plain = plain_folder(tmp_path / "plain", files=("a/0.png",))
    one_line_error(capsys, ["encrypt", plain, tmp_path / "enc", "--key", key(tmp_path), "--ops", "ffx,rot13"],
                   "--ops", "rot13")
    (tmp_path / "bad.key").write_text("{}")
    (tmp_path / "bad.key").chmod(0o600)
    one_line_error(capsys, ["encrypt", plain, tmp_path / "enc", "--key", tmp_path / "bad.key"], "bad.key")
    one_line_error(capsys, ["encrypt", plain, tmp_path / "enc", "--key", tmp_path / "none.key"], "none.key")
    assert not (tmp_path / "enc").exists()


def test_block_size_that_does_not_tile_an_image(tmp_path, capsys):
    plain = plain_folder(tmp_path / "plain", files=("a/0.png",))
    random_image("RGB", 10, 16).save(plain / "a" / "odd.png")
    one_line_error(capsys, ["encrypt", plain, tmp_path / "enc", "--key", key(tmp_path)], "odd.png", "16x10")


@pytest.fixture
def encrypted(tmp_path, capsys):
    k, plain = key(tmp_path), plain_folder(tmp_path / "plain")
    assert run(capsys, "encrypt", plain, tmp_path / "enc", "--key", k)[0] == 0
    return tmp_path / "enc", k


def test_wrong_key(tmp_path, capsys, encrypted):
    enc, k = encrypted
    other = key(tmp_path, name="other.key")
    one_line_error(capsys, ["decrypt", enc, tmp_path / "dec", "--key", other], "wrong key",
                   KeySet.load(k).fingerprint(), other)
    assert not (tmp_path / "dec").exists()


def edit_manifest(enc: Path, **changes) -> None:
    manifest = json.loads((enc / MANIFEST).read_text())
    manifest.update(changes)
    (enc / MANIFEST).write_text(json.dumps(manifest))


@pytest.mark.parametrize("changes, needle", [
    ({"version": 3}, "version 3"),
    ({"version": "2"}, "version '2'"),
    ({"format": "something-else"}, "not a kpfast manifest"),
    ({"files": ["../../outside.png"]}, "outside.png"),
    ({"files": ["/etc/x.png"]}, "/etc/x.png"),
    ({"ops": ["rot13"]}, "rot13"),
    ({"code_step": 1000}, "do not fit"),
])
def test_a_manifest_of_another_version_or_edited_is_refused(tmp_path, capsys, encrypted, changes, needle):
    enc, k = encrypted
    edit_manifest(enc, **changes)
    one_line_error(capsys, ["decrypt", enc, tmp_path / "dec", "--key", k], enc / MANIFEST, needle)
    assert not (tmp_path / "dec").exists()


@pytest.mark.parametrize("content", [b"{not json", b"[" * 100000 + b"]" * 100000, b"\xff\xfe"])
def test_a_damaged_manifest_is_one_line(tmp_path, capsys, encrypted, content):
    enc, k = encrypted
    (enc / MANIFEST).write_bytes(content)
    one_line_error(capsys, ["decrypt", enc, tmp_path / "dec", "--key", k], enc / MANIFEST)


def test_a_replaced_or_missing_protected_file_is_named(tmp_path, capsys, encrypted):
    enc, k = encrypted
    random_image("RGB").save(enc / "a" / "0.png")  # an 8-bit plain image where a 16-bit one was
    one_line_error(capsys, ["decrypt", enc, tmp_path / "dec", "--key", k], enc / "a" / "0.png", "not an image of")
    (enc / "a" / "0.png").unlink()
    one_line_error(capsys, ["decrypt", enc, tmp_path / "dec2", "--key", k], "a/0.png", "missing")
    (enc / "a" / "0.png").write_bytes(bomb_png())
    one_line_error(capsys, ["decrypt", enc, tmp_path / "dec3", "--key", k], "a/0.png", "exceed the limit")


def test_decrypt_leaves_out_unlisted_images_and_says_so(tmp_path, capsys, encrypted):
    enc, k = encrypted
    random_image("RGB").save(enc / "a" / "stray.png")
    assert main(["decrypt", str(enc), str(tmp_path / "dec"), "--key", str(k)]) == 0
    assert "left out 1 image(s)" in capsys.readouterr().out
    assert not (tmp_path / "dec" / "a" / "stray.png").exists() and (tmp_path / "dec" / "a" / "0.png").exists()


def test_a_version_1_folder_still_decrypts(tmp_path, capsys):
    # What kpfast wrote before manifest version 2: raw 16-bit codes, no file list, no step.
    k = key(tmp_path)
    keys, ops = KeySet.load(k), ("shuffle", "ffx")
    plain = plain_folder(tmp_path / "plain", files=("a/0.png",))
    enc = tmp_path / "enc"
    (enc / "a").mkdir(parents=True)
    x = pixels(plain / "a" / "0.png", "RGB").transpose(2, 0, 1)
    codes = np.round(reference.transform(x[None], keys, ops, rounding="nearest")[0].astype(np.float64) * keys.ffx_max)
    write_png16(enc / "a" / "0.png", codes.astype(np.uint16).transpose(1, 2, 0))
    (enc / MANIFEST).write_text(json.dumps({"format": "kpfast-encrypted-images", "version": 1, "ops": list(ops),
                                            "block_size": 4, "channels": 3, "key_fingerprint": keys.fingerprint(),
                                            "code_scale": keys.ffx_max, "bitdepth": 16}))
    assert run(capsys, "decrypt", enc, tmp_path / "dec", "--key", k)[0] == 0
    assert np.array_equal(pixels(tmp_path / "dec" / "a" / "0.png", "RGB"), pixels(plain / "a" / "0.png", "RGB"))
