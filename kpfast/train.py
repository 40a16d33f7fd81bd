"""Moved to :mod:`kpfast.engine` (``kpfast.engine.train``, ``evaluate``, ``TrainResult``, ``lr_at``);
this alias warns and goes away in the next release."""
from ._moved import moved

__getattr__ = moved(__name__, ["kpfast.engine.classifier", "kpfast.engine.schedule"])
