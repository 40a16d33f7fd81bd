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


# --- the parsers: every option explained, --device auto everywhere --------------------------------

def command_parsers():
    """(path, parser) for every command and sub-step, e.g. ('i2p run', <parser>)."""
    import argparse

    from kpfast.cli import COMMANDS, build_parser

    def walk(path, parser):
        yield path, parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from walk(f"{path} {name}", sub)

    for name in COMMANDS:
        top = build_parser(name)
        (commands,) = [a for a in top._actions if isinstance(a, argparse._SubParsersAction)]
        yield from walk(name, commands.choices[name])


def test_every_option_of_every_command_has_help():
    import argparse

    missing = [f"{path}: {'/'.join(a.option_strings) or a.dest}" for path, parser in command_parsers()
               for a in parser._actions
               if not isinstance(a, argparse._HelpAction) and not (a.help or "").strip()]
    assert missing == []


def test_device_defaults_to_auto_everywhere_and_auto_picks_cuda_when_available():
    from kpfast.cli.options import device

    defaults = {path: a.default for path, parser in command_parsers() for a in parser._actions if a.dest == "device"}
    assert {"demo", "train", "eval", "reproduce", "bench", "i2p run", "i2p export"} <= set(defaults)
    assert {path: d for path, d in defaults.items() if d != "auto"} == {}
    import torch
    assert device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert device("cuda:1") == "cuda:1"  # any other name is left for the run to check


def test_version_names_the_torch_of_the_build(capsys):
    from importlib import metadata

    import torch

    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == (f"kpfast {metadata.version('kpfast')} (built against torch "
                                               f"{torch.__version__}, CUDA {torch.version.cuda or 'none'})")


def test_help_imports_no_extra_and_no_command():
    import subprocess
    import sys

    code = ("import sys\nfrom kpfast.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = ('matplotlib', 'torchmetrics', 'PIL', 'kpfast.cli.demo', 'kpfast.cli.train', "
            "'kpfast.engine', 'kpfast.protection', 'kpfast.i2p')\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy or m in heavy))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"  # (torch itself imports tqdm)


# --- keygen: errors name the target, an unusual block size asks first ----------------------------

def test_keygen_into_a_missing_folder_names_the_target(tmp_path, capsys):
    target = tmp_path / "no" / "such" / "k.key"
    assert main(["keygen", str(target)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"kpfast keygen: error: cannot write the key to {target}: the folder {target.parent} does not exist"
    assert ".tmp" not in err and not (tmp_path / "no").exists()


def test_keygen_onto_a_folder_says_it_is_a_folder(tmp_path, capsys):
    assert main(["keygen", str(tmp_path), "--force"]) == 2
    assert f"{tmp_path} is a folder: give the key file's name" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_keygen_a_large_block_asks_for_force(tmp_path, capsys):
    target = tmp_path / "k.key"
    assert main(["keygen", str(target), "-M", "128"]) == 2
    err = capsys.readouterr().err
    assert "-M 128 makes 128x128 blocks: a key of 49,152 entries (about 0.5 MB)" in err and "--force" in err
    assert not target.exists()
    assert main(["keygen", str(target), "-M", "128", "--force"]) == 0
    assert 0.4e6 < target.stat().st_size < 0.6e6  # the size the message announced


def test_keygen_beyond_the_key_limit_is_refused_even_with_force(tmp_path, capsys):
    assert main(["keygen", str(tmp_path / "k.key"), "-M", "1000", "--force"]) == 2
    assert "exceeds the limit" in capsys.readouterr().err and not (tmp_path / "k.key").exists()


# --- demo: never replaces an earlier demo ---------------------------------------------------------

def test_demo_refuses_a_folder_that_holds_files_before_any_work(tmp_path, capsys):
    out = tmp_path / "demo"
    out.mkdir()
    (out / "demo.key").write_text("an earlier key")
    assert main(["demo", "--quick", "--out", str(out), "--device", "cpu"]) == 2
    assert f"--out {out} is not empty (it holds demo.key)" in capsys.readouterr().err
    assert (out / "demo.key").read_text() == "an earlier key" and sorted(p.name for p in out.iterdir()) == ["demo.key"]


def test_demo_without_out_writes_to_a_fresh_folder(tmp_path, monkeypatch):
    from kpfast.cli.demo import output_folder

    monkeypatch.chdir(tmp_path)
    assert output_folder(None).name == "kpfast-demo"
    (tmp_path / "kpfast-demo").mkdir()
    assert output_folder(None).name == "kpfast-demo"  # an empty folder is as good as a new one
    (tmp_path / "kpfast-demo" / "demo.key").write_text("k")
    (tmp_path / "kpfast-demo-2").mkdir()
    (tmp_path / "kpfast-demo-2" / "model.pt").write_text("m")
    assert output_folder(None).name == "kpfast-demo-3"
