"""Option types shared by the subcommands: values are checked where they are parsed, so a bad one
gets argparse's usage error instead of failing deep inside a run."""
from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    """An int >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def floats(text: str) -> tuple[float, ...]:
    """'0.01,0.1' -> (0.01, 0.1)."""
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def names(text: str) -> tuple[str, ...]:
    """'a, b' -> ('a', 'b')."""
    return tuple(v.strip() for v in text.split(",") if v.strip())
