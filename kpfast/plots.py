"""Moved to :mod:`kpfast.report.plots`; this alias warns and goes away in the next release."""
from ._moved import moved

__getattr__ = moved(__name__, ["kpfast.report.plots"])
