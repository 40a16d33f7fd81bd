"""The command line: keygen and bench (encrypt and decrypt: tests/test_crypt.py)."""
import os
import stat

import pytest

from kpfast.cli import main


@pytest.fixture
def key_file(tmp_path):
    path = tmp_path / "k.key"
    assert main(["keygen", str(path), "--block-size", "4"]) == 0
    return path


def test_keygen_writes_owner_only_and_refuses_to_overwrite(key_file, capsys):
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    assert main(["keygen", str(key_file)]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err


def test_bench_quick_prints_a_table(capsys):
    assert main(["bench", "--quick", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "| CIFAR-10 512x3x32x32 | 4 |" in out and "| kpfast / copy |" in out
    row = next(line for line in out.splitlines() if line.startswith("| CIFAR-10"))
    assert float(row.split("|")[6].strip().removesuffix("x")) > 0  # the measured ratio to the copy
