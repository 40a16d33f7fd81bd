"""The package's shape: a core that imports with torch and numpy alone, extras that say what to
install, a lazy command line, one error path, aliases for moved names, and a product that speaks
of itself alone."""
import importlib
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import kpfast

ROOT = Path(__file__).parents[1]
EXTRAS = ("matplotlib", "torchmetrics", "tqdm", "PIL", "png")


def python(code: str, *, block: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter in which the modules `block` cannot be imported."""
    prelude = "import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in block)
    return subprocess.run([sys.executable, "-c", prelude + code], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)


def test_import_kpfast_needs_and_imports_no_extra():
    # Without any extra installed, the core imports ...
    done = python("import kpfast; print('ok')", block=EXTRAS)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
    # ... and with all of them installed it imports none of them (torch itself may import tqdm).
    code = ("import sys, torch\nbefore = set(sys.modules)\nimport kpfast\n"
            f"print(sorted(m for m in set(sys.modules) - before if m.split('.')[0] in {EXTRAS!r}))")
    done = python(code)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr


@pytest.mark.parametrize("module, extra", [("kpfast.report.plots", "experiments"), ("kpfast.i2p.metrics", "i2p"),
                                           ("kpfast.report.imageio", "cli"), ("kpfast.data.folders", "cli")])
def test_a_missing_extra_names_what_to_install(module, extra):
    done = python(f"import {module}", block=EXTRAS)
    assert done.returncode != 0
    assert "MissingExtraError" in done.stderr and f"pip install 'kpfast[{extra}]'" in done.stderr


def test_keygen_and_help_import_no_plotting_or_metrics(tmp_path):
    code = (f"from kpfast.cli import main\nassert main(['keygen', {str(tmp_path / 'k.key')!r}]) == 0\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('matplotlib', 'torchmetrics') if sys.modules.get(m) is not None))")
    done = python(code, block=("matplotlib", "torchmetrics"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("[]")
    for name in ("demo", "keygen", "encrypt", "decrypt", "train", "eval", "reproduce", "i2p", "bench"):
        assert f"    {name}" in done.stdout  # every command is listed, none was imported
    assert (tmp_path / "k.key").exists()


def test_errors_are_one_line_and_debug_shows_the_traceback(tmp_path, capsys):
    from kpfast.cli import main
    from kpfast.errors import KpfastError

    (tmp_path / "k").write_text("{}")
    assert main(["train", "--out", str(tmp_path / "run"), "--ops", "ffx,rot13", "--key", "k"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kpfast train: error: ops must be") and err.count("\n") == 1
    with pytest.raises(KpfastError):
        main(["--debug", "train", "--out", str(tmp_path / "run"), "--ops", "ffx,rot13", "--key", "k"])
    with pytest.raises(KpfastError):
        main(["train", "--out", str(tmp_path / "run"), "--ops", "ffx,rot13", "--key", "k", "--debug"])


def test_a_bug_keeps_its_traceback(monkeypatch):
    from kpfast.cli import keygen, main

    def bug(args):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(keygen, "run", bug)
    with pytest.raises(ZeroDivisionError):
        main(["keygen", "x.key"])


MOVED = [  # old name, new home
    ("kpfast.train", "train", "kpfast.engine", "train"),
    ("kpfast.train", "lr_at", "kpfast.engine", "lr_at"),
    ("kpfast.evaluate", "evaluate_protection", "kpfast.protection", "evaluate_protection"),
    ("kpfast.protected", "ProtectedModel", "kpfast.protection", "ProtectedModel"),
    ("kpfast.protected", "KeyMismatchError", "kpfast.errors", "KeyMismatchError"),
    ("kpfast.experiment", "RunConfig", "kpfast.protection.experiment", "RunConfig"),
    ("kpfast.experiment", "default_device", "kpfast.engine", "default_device"),
    ("kpfast.reproduce", "run_grid", "kpfast.protection.grid", "run_grid"),
    ("kpfast.imageio", "read_png_codes", "kpfast.report.imageio", "read_png_codes"),
    ("kpfast.grid", "image_grid", "kpfast.report.grid", "image_grid"),
    ("kpfast.plots", "accuracy_vs_block_size", "kpfast.report.plots", "accuracy_vs_block_size"),
    ("kpfast.bench", "CASES", "kpfast.report.bench", "CASES"),
    ("kpfast.i2p", "fit", "kpfast.i2p", "train_net"),
]


@pytest.mark.parametrize("old, name, new, new_name", MOVED)
def test_moved_names_still_work_with_a_deprecation_warning(old, name, new, new_name):
    with pytest.warns(DeprecationWarning, match=f"{old}.{name} moved to"):
        value = getattr(importlib.import_module(old), name)
    assert value is getattr(importlib.import_module(new), new_name)


def test_moved_constants_and_old_argument_orders(tmp_path):
    import json

    from kpfast.data.stats import CIFAR10, IMAGENET

    with pytest.warns(DeprecationWarning):
        from kpfast.normalize import CIFAR10_MEAN
    with pytest.warns(DeprecationWarning):
        from kpfast.bench import IMAGENET_STD
    assert CIFAR10_MEAN == CIFAR10.mean and IMAGENET_STD == IMAGENET.std
    from kpfast.evaluate import write_json

    with pytest.warns(DeprecationWarning, match="moved to kpfast.atomic.write_json"):
        write_json({"a": 1}, tmp_path / "r.json")  # the old (results, path) order
    assert json.loads((tmp_path / "r.json").read_text()) == {"a": 1}


def test_the_readme_names_need_no_alias():
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        from kpfast.engine import evaluate, train  # noqa: F401
        from kpfast.models import create_model  # noqa: F401
        from kpfast.protection import ProtectedModel, evaluate_protection  # noqa: F401

        assert kpfast.ProtectedModel is ProtectedModel
        for name in ("BlockTransform", "KeySet", "Shuffle", "NegPos", "FFX", "KeyFileError", "KeyMismatchError",
                     "KpfastError", "build_info"):
            assert getattr(kpfast, name) is not None
        for name in ("block_transform", "shuffle", "negpos", "ffx"):
            assert callable(getattr(kpfast.functional, name))


def test_the_product_speaks_of_itself_alone():
    """No path outside the repository, no spec that is not shipped: the spec is docs/semantics.md."""
    outside, unshipped = "../" + "shared", "design/" + "semantics.md"  # split: this file must not match itself
    files = [*sorted((ROOT / "kpfast").rglob("*.py")), ROOT / "README.md", *sorted((ROOT / "tests").glob("*.py")),
             *sorted((ROOT / "benchmarks").glob("*.py"))]
    found = [f"{f.relative_to(ROOT)}:{i}" for f in files for i, line in enumerate(f.read_text().splitlines(), 1)
             if outside in line or unshipped in line]
    assert found == []
    assert (ROOT / "docs" / "semantics.md").is_file()
