"""The wheel names the torch it was built against, `import kpfast` refuses another torch with a
message that says how to rebuild, and the package ships its licence, type marker and citation."""
import importlib.util
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import tomllib
import torch

import kpfast

ROOT = Path(__file__).parents[1]
REBUILD = "pip install --no-build-isolation --force-reinstall --no-deps kpfast"


def load_torch_pin():
    spec = importlib.util.spec_from_file_location("torch_pin", ROOT / "scripts" / "torch_pin.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


torch_pin = load_torch_pin()


def python(code: str) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter in tests/, where `import kpfast` finds the installed package."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT / "tests",
                          timeout=300)


# --- what the build writes into the metadata ---------------------------------------------------

@pytest.mark.parametrize("version, cuda, tag, requirement", [
    ("2.13.0+cpu", None, "pt213cpu", "torch==2.13.*"),
    ("2.13.0", "13.0", "pt213cu130", "torch==2.13.*"),
    ("2.14.1+cu128", "12.8", "pt214cu128", "torch==2.14.*"),
    ("2.10.0a0+git1234abc", None, "pt210cpu", "torch==2.10.*"),
])
def test_the_local_version_and_requirement_name_torch_and_its_cuda(version, cuda, tag, requirement):
    assert torch_pin.torch_tag(version, cuda) == tag
    assert torch_pin.torch_requirement(version) == requirement


def test_a_build_pins_the_running_torch_and_an_sdist_none():
    major, minor = torch.__version__.split(".")[:2]
    variant = "cu" + torch.version.cuda.replace(".", "") if torch.version.cuda else "cpu"
    built = torch_pin.metadata(["numpy"])
    assert built == {"version": f"{kpfast.__version__}+pt{major}{minor}{variant}",
                     "dependencies": ["numpy", f"torch=={major}.{minor}.*"]}
    assert torch_pin.metadata(["numpy"], sdist=True) == {"version": kpfast.__version__,
                                                         "dependencies": ["numpy", "torch"]}
    # a wheel built from an sdist keeps the sdist's version (pip checks it) and still pins torch
    assert torch_pin.metadata(["numpy"], from_sdist=True) == {"version": kpfast.__version__,
                                                              "dependencies": built["dependencies"]}


def test_pyproject_takes_version_and_dependencies_from_the_provider():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project = pyproject["project"]
    assert set(project["dynamic"]) == {"version", "dependencies"}
    assert "version" not in project and "dependencies" not in project
    (entry,) = pyproject["tool"]["dynamic-metadata"]
    assert entry["provider"] == {"path": "scripts", "module": "torch_pin:TorchPin"}
    assert not any(r.startswith("torch") for r in entry["requires"])  # the provider adds the torch pin
    assert "torch" not in " ".join(pyproject["build-system"]["requires"])  # built against the installed torch
    assert project["license"] == "MIT" and project["urls"]


@pytest.mark.parametrize("isolated", [True, False])
def test_a_build_that_cannot_import_torch_says_why_and_what_works(isolated):
    prelude = "import sys\nsys.modules['torch'] = None\n"
    if isolated:  # what pip's default isolated build puts on sys.path
        prelude += "sys.path.append('/tmp/pip-build-env-abc123/overlay/lib/python3/site-packages')\n"
    code = prelude + (f"sys.path.insert(0, {str(ROOT / 'scripts')!r})\nimport torch_pin\n"
                      "try:\n    torch_pin.metadata(['numpy'])\nexcept RuntimeError as e:\n    print(e)\n")
    done = python(code)
    assert done.returncode == 0, done.stderr
    assert "cannot import torch" in done.stdout and "pip install --no-build-isolation ." in done.stdout
    assert ("pip built kpfast in an isolated environment" in done.stdout) == isolated


def test_the_build_backend_hook_says_it_without_a_traceback():
    """What pip shows for `pip install .` (isolated): the message alone, not buried under a traceback."""
    code = ("import sys\nsys.modules['torch'] = None\n"
            "sys.path.append('/tmp/pip-build-env-abc123/overlay/lib/python3/site-packages')\n"
            f"sys.path.insert(0, {str(ROOT / 'scripts')!r})\nimport torch_pin\n"
            "torch_pin.TorchPin().dynamic_metadata({'requires': ['numpy']}, {})\n")
    done = python(code)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "pip built kpfast in an isolated environment" in done.stderr
    assert "pip install --no-build-isolation ." in done.stderr


@pytest.mark.skipif("+" not in metadata.version("kpfast"),
                    reason="this kpfast was installed before its metadata named the torch (rebuild to check)")
def test_the_installed_metadata_names_the_running_torch():
    local = metadata.version("kpfast").split("+", 1)[1]
    assert local == torch_pin.torch_tag(torch.__version__, torch.version.cuda)
    assert torch_pin.torch_requirement(torch.__version__) in metadata.requires("kpfast")


# --- import refuses another torch ----------------------------------------------------------------

def fake_native_library(torch_version: str, cuda_version: str) -> str:
    """Code that makes kpfast._C a stand-in reporting another build (it registers no ops)."""
    info = {"cuda": bool(cuda_version), "cuda_archs": "", "cuda_version": cuda_version, "torch_version": torch_version}
    return ("import sys, types\nfake = types.ModuleType('kpfast._C')\n"
            f"fake.build_info = lambda: {info!r}\nsys.modules['kpfast._C'] = fake\n")


def import_error(code: str) -> str:
    done = python(code + "try:\n    import kpfast\nexcept ImportError as e:\n    print(e)\nelse:\n    print('imported')\n")
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_a_library_built_for_another_torch_is_refused_naming_both_and_the_rebuild():
    other = "2.12.0+cpu" if not torch.__version__.startswith("2.12.") else "2.11.0+cpu"
    message = import_error(fake_native_library(other, torch.version.cuda or ""))
    assert message.startswith(f"kpfast was built against torch {other}")
    assert f"but torch {torch.__version__}" in message and REBUILD in message
    assert "wheel built for torch " + ".".join(torch.__version__.split(".")[:2]) in message


def test_a_library_built_for_another_cuda_variant_is_refused():
    other_cuda = "" if torch.version.cuda else "13.0"
    message = import_error(fake_native_library(torch.__version__, other_cuda))
    assert f"(CUDA {other_cuda or 'none'})" in message and f"(CUDA {torch.version.cuda or 'none'}) is running" in message
    assert REBUILD in message


def test_another_patch_release_of_the_same_torch_imports_and_another_minor_does_not():
    major, minor = (int(v) for v in torch.__version__.split(".")[:2])
    patch = f"import torch\ntorch.__version__ = '{major}.{minor}.97'\n"
    assert import_error(patch + "import kpfast\nkpfast.KeySet.generate(2)\n") == "imported"
    message = import_error(f"import torch\ntorch.__version__ = '{major}.{minor + 1}.0'\n")
    assert f"but torch {major}.{minor + 1}.0" in message and REBUILD in message


def test_a_native_library_that_does_not_load_gets_a_clear_message():
    finder = ("import sys, importlib.abc\nclass Broken(importlib.abc.MetaPathFinder):\n"
              "    def find_spec(self, name, path=None, target=None):\n"
              "        if name == 'kpfast._C':\n"
              "            raise ImportError('_C.so: undefined symbol: _ZN3c104impl3fooEv')\n"
              "sys.meta_path.insert(0, Broken())\n")
    message = import_error(finder)
    assert message.startswith(f"kpfast's native library does not load with torch {torch.__version__}")
    assert "undefined symbol" in message and REBUILD in message
    assert f"kpfast {metadata.version('kpfast')} was probably built against another torch" in message


def test_a_missing_native_library_says_how_to_build_it():
    finder = ("import sys, importlib.abc\nclass Missing(importlib.abc.MetaPathFinder):\n"
              "    def find_spec(self, name, path=None, target=None):\n"
              "        if name == 'kpfast._C':\n"
              "            raise ModuleNotFoundError(\"No module named 'kpfast._C'\", name=name)\n"
              "sys.meta_path.insert(0, Missing())\n")
    assert import_error(finder) == ("kpfast's native library is not built: in the source checkout, with torch "
                                    "installed, run pip install --no-build-isolation -e .")


# --- what ships beside the code ------------------------------------------------------------------

def test_license_and_type_marker():
    assert (ROOT / "LICENSE").read_text().startswith("MIT License\n")
    assert (Path(kpfast.__file__).parent / "py.typed").is_file()


def test_the_citation_credits_the_two_papers_as_the_specifications_cite_them():
    yaml = pytest.importorskip("yaml")  # comes with the docs extra (myst-parser), which CI installs
    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert citation["cff-version"] == "1.2.0" and citation["version"] == kpfast.__version__
    assert citation["license"] == "MIT"
    specs = " ".join((ROOT / "docs" / name).read_text() for name in ("semantics.md", "i2p.md"))
    specs = re.sub(r"\s+", " ", specs)
    papers = {ref["journal"]: ref for ref in citation["references"]}
    assert set(papers) == {"APSIPA Transactions on Signal and Information Processing", "IEEE Access"}
    for ref in papers.values():  # the titles and venues the specifications cite
        assert f'"{ref["title"]}", *{ref["journal"]}*' in specs
    assert f"doi:{papers['APSIPA Transactions on Signal and Information Processing']['doi']}" in specs
