"""Moved to :mod:`kpfast.protection.model` (errors: :mod:`kpfast.errors`); this alias warns and
goes away in the next release."""
from ._moved import moved

__getattr__ = moved(__name__, ["kpfast.protection.model", "kpfast.errors"])
