"""Moved to :mod:`kpfast.protection.evaluate`; this alias warns and goes away in the next release."""
import warnings

from ._moved import moved

__getattr__ = moved(__name__, ["kpfast.protection.evaluate"])


def write_json(results, path) -> None:
    """Old argument order of :func:`kpfast.atomic.write_json` (path first)."""
    from .atomic import write_json as write

    warnings.warn("kpfast.evaluate.write_json(results, path) moved to kpfast.atomic.write_json(path, results); "
                  "the old name goes away in the next release", DeprecationWarning, stacklevel=2)
    write(path, results)
