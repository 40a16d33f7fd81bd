"""The torch a kpfast build is made against, written into the wheel's metadata.

kpfast's native library is compiled against one torch and works with that torch alone, so the
metadata says which, as the torch-extension ecosystem does (xformers pins torch; torch-scatter
and friends add a local version):

- version: ``kpfast/__init__.py``'s ``__version__`` plus a local version naming torch's
  major.minor and its CUDA variant, e.g. ``0.2.0+pt213cpu`` or ``0.2.0+pt213cu130`` (not for a
  wheel built from an sdist, whose version must stay the sdist's);
- dependencies: the ``requires`` setting (numpy) plus ``torch==2.13.*``.

A dynamic-metadata provider for scikit-build-core (``[[tool.dynamic-metadata]]`` in
pyproject.toml). It imports the torch of the Python that builds kpfast, which is why kpfast
builds without build isolation. An sdist is not built against any torch: its version has no
local part and its torch requirement is left open (and marked dynamic).

Run alone, it prints what a build here would record: ``python scripts/torch_pin.py``.
"""
from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

NO_TORCH = """\
kpfast: the Python that builds kpfast ({python}) cannot import torch.
{why}
kpfast is compiled against the torch it will run with, so torch is deliberately not a build
requirement. Build against your installed torch, in the environment that has it, with:
    pip install --no-build-isolation .
(the build tools must be installed there too: pip install scikit-build-core pybind11 ninja)."""

ISOLATED = ("pip built kpfast in an isolated environment (its default): a temporary environment that holds\n"
            "only the build requirements, so it cannot see the torch installed beside it.")
MAYBE_ISOLATED = ("Either torch is not installed (install it first, e.g. pip install torch==2.13.0), or the build ran in\n"
                  "an isolated environment (pip's default), which cannot see the torch installed beside it.")


def base_version() -> str:
    """``__version__`` of kpfast/__init__.py: the one place the version is written."""
    text = (ROOT / "kpfast" / "__init__.py").read_text(encoding="utf-8")
    found = re.search(r'^__version__ = "([^"]+)"', text, re.MULTILINE)
    if found is None:
        raise RuntimeError("kpfast/__init__.py has no __version__ = \"...\" line")
    return found.group(1)


def torch_tag(torch_version: str, cuda_version: str | None) -> str:
    """The local version naming a torch build: ("2.13.0+cpu", None) -> "pt213cpu",
    ("2.13.0", "13.0") -> "pt213cu130"."""
    major, minor = _major_minor(torch_version)
    variant = "cu" + cuda_version.replace(".", "") if cuda_version else "cpu"
    return f"pt{major}{minor}{variant}"


def torch_requirement(torch_version: str) -> str:
    """The torch releases with the same C++ ABI as the one built against: the same major.minor."""
    major, minor = _major_minor(torch_version)
    return f"torch=={major}.{minor}.*"


def _major_minor(torch_version: str) -> tuple[str, str]:
    found = re.match(r"(\d+)\.(\d+)", torch_version)
    if found is None:
        raise RuntimeError(f"kpfast: cannot read torch's version {torch_version!r}")
    return found.group(1), found.group(2)


def installed_torch() -> tuple[str, str | None]:
    """(torch.__version__, torch.version.cuda) of the building Python, or a clear error."""
    try:
        import torch
    except ImportError:
        isolated = any("pip-build-env-" in entry for entry in sys.path)
        raise RuntimeError(NO_TORCH.format(python=sys.executable, why=ISOLATED if isolated else MAYBE_ISOLATED)) \
            from None
    return str(torch.__version__), torch.version.cuda


def metadata(requires: list[str], *, sdist: bool = False, from_sdist: bool | None = None) -> dict[str, Any]:
    """The version and dependencies of a build: of an sdist, no torch named; of a wheel, the
    torch pin, and the local version unless the wheel is built from an sdist (pip refuses a wheel
    whose version differs from the sdist's name: its torch is then named by the pin alone)."""
    if sdist:
        return {"version": base_version(), "dependencies": [*requires, "torch"]}
    torch_version, cuda_version = installed_torch()
    from_sdist = (ROOT / "PKG-INFO").is_file() if from_sdist is None else from_sdist
    local = "" if from_sdist else "+" + torch_tag(torch_version, cuda_version)
    return {"version": base_version() + local, "dependencies": [*requires, torch_requirement(torch_version)]}


class TorchPin:
    """The scikit-build-core provider: settings ``requires`` (the dependencies besides torch)."""

    def __init__(self) -> None:
        self.state = "wheel"

    def build_state(self, state: str) -> None:
        self.state = state

    def dynamic_metadata(self, settings: Mapping[str, Any], project: Mapping[str, Any]) -> dict[str, Any]:
        unknown = set(settings) - {"requires"}
        if unknown:
            raise RuntimeError(f"kpfast's torch_pin provider takes only 'requires', not {sorted(unknown)}")
        try:
            return metadata(list(settings.get("requires", [])), sdist=self.state == "sdist")
        except RuntimeError as e:  # the message alone: a traceback through the build backend hides it
            raise SystemExit(f"\n{e}\n") from None

    def dynamic_wheel(self, settings: Mapping[str, Any]) -> dict[str, bool]:
        return {"dependencies": True}  # an sdist's wheels each pin the torch they are built with


if __name__ == "__main__":
    result = metadata(["..."])
    print(f"version: {result['version']}\nrequires: {', '.join(result['dependencies'])}")
