"""Every script in examples/ runs, at a tiny budget, and what it prints holds; so does every
example in the docstrings of the core's public names."""
import doctest
import importlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import kpfast

ROOT = Path(__file__).parents[1]

# example -> (tiny-budget arguments, lines its output must contain)
EXAMPLES = {
    "protect_data_pipeline.py": (
        ["--images", "300", "--batch-size", "64", "--workers", "1", "--device", "cpu"],
        ["per image == per batch: True", "inverse round trip exact: True",
         "16 keys in one launch: image 3 as with its own key alone: True"]),
    "train_protected_model.py": (
        ["--train-size", "300", "--test-size", "100", "--epochs", "1", "--wrong-keys", "2", "--device", "cpu"],
        ["| correct key |", "| wrong keys (2): mean [min, max] |", "| plain images (no key) |",
         "saved and loaded with its key: same predictions: True", "loaded with another key: refused (KeyMismatchError)"]),
    "encrypt_folder.py": (
        ["--train-size", "200", "--test-size", "50", "--epochs", "1", "--device", "cpu"],
        ["manifest: ops ['shuffle', 'negpos', 'ffx'], M=4, key fingerprint ", "250 files; holds the key: False",
         "the owner, plain test images with the key: accuracy ",
         "same predictions as the trainer's on the encrypted test set: True",
         "plain test images without the key: accuracy "]),
    "train_and_audit.py": (
        ["--train-size", "200", "--test-size", "50", "--epochs", "1", "--block-size", "2", "--attacker-images", "16",
         "--search-keys", "32", "--finetune-steps", "2", "--device", "cpu"],
        ["key space of shuffle+negpos+ffx at M=2: 2^", "random key search, 32 keys: best key", "key estimation, 1 pass(es):",
         "known plaintext, 4 pairs:", "fine-tuning on 16 plain images:", "the owner, with the key:"]),
}


def test_every_example_has_a_tiny_run():
    assert sorted(p.name for p in (ROOT / "examples").glob("*.py")) == sorted(EXAMPLES)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_runs_at_a_tiny_budget(name, tmp_path):
    args, expected = EXAMPLES[name]
    done = subprocess.run([sys.executable, str(ROOT / "examples" / name), *args], capture_output=True, text=True,
                          cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr
    missing = [line for line in expected if line not in done.stdout]
    assert missing == [], done.stdout
    assert list(tmp_path.iterdir()) == []  # an example leaves nothing behind in the folder it runs in


@pytest.mark.parametrize("module", ["kpfast", "kpfast.functional", "kpfast.transforms"])
def test_docstring_examples_run_and_print_what_they_say(module):
    result = doctest.testmod(importlib.import_module(module), extraglobs={"torch": torch, "kpfast": kpfast},
                             optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0
