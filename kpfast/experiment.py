"""Moved to :mod:`kpfast.protection.experiment` (devices: :mod:`kpfast.engine.device`; defaults:
:mod:`kpfast.engine.classifier`); this alias warns and goes away in the next release."""
from ._moved import moved

__getattr__ = moved(__name__, ["kpfast.protection.experiment", "kpfast.engine.device", "kpfast.engine.classifier"])
