"""Thin aliases for names that moved in the 0.2 reshaping: they keep working for one release and
say where the name lives now (a DeprecationWarning)."""
from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any


def moved(module: str, names: Mapping[str, str] | Sequence[str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that forwards old names with a DeprecationWarning.

    `names` maps each old name to its new home ``"package.module:name"`` (or ``:name.attribute``),
    or lists new modules (``"package.module"``) that hold every name under the same name.
    """
    def __getattr__(name: str) -> Any:
        target = _find(names, name)
        if target is None:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        home, _, new = target.partition(":")
        warnings.warn(f"{module}.{name} moved to {home}.{new or name}; the old name goes away in the next "
                      "release", DeprecationWarning, stacklevel=2)
        value: Any = importlib.import_module(home)
        for attribute in (new or name).split("."):  # "stats:IMAGENET.mean": an attribute of a new name
            value = getattr(value, attribute)
        return value

    return __getattr__


def _find(names: Mapping[str, str] | Sequence[str], name: str) -> str | None:
    if isinstance(names, Mapping):
        return names.get(name)
    for home in names:
        if hasattr(importlib.import_module(home), name):
            return home
    return None
