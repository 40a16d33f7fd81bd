"""Markdown tables and the number formats of every report kpfast writes."""
from __future__ import annotations

from collections.abc import Iterable, Sequence

TRANSFORM_LABELS = {"shuffle": "Shuffle", "negpos": "NP", "ffx": "FFX"}  # as the papers write them


def percent(x: float | None, suffix: str = " %", missing: str = "n/a") -> str:
    """A fraction as a percentage with two decimals: 0.9123 -> '91.23 %' (`suffix` '' where the
    column header already says %); None -> `missing`."""
    return missing if x is None else f"{100 * x:.2f}{suffix}"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> list[str]:
    """The lines of a Markdown table: the header, the separator, one line per row."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines


def duration(seconds: float) -> str:
    """'3 min 07 s', or '42 s' below a minute."""
    m, s = divmod(round(seconds), 60)
    return f"{m} min {s:02d} s" if m else f"{s} s"


def plural(n: int, word: str) -> str:
    """'1 epoch', '3 epochs'."""
    return f"{n} {word}{'' if n == 1 else 's'}"
