"""Result plots (matplotlib, Agg backend: no display, no pyplot global state). Needs the
``kpfast[experiments]`` extra.

Every plot is written atomically as a PNG: a reader never sees half an image.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch

from ..atomic import atomic_write
from ..extras import require
from .tables import TRANSFORM_LABELS

require("matplotlib")
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402  (after the extra check)
from matplotlib.figure import Figure  # noqa: E402

Curves = Mapping[str, Mapping[int, float]]  # transform name -> {block size: accuracy in %}

COLOURS = {"shuffle": "tab:blue", "negpos": "tab:orange", "ffx": "tab:green"}


def save_png(figure: Figure, path: str | os.PathLike[str], dpi: int = 120) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(figure)  # attaches itself: rendering without pyplot or a display
    atomic_write(path, lambda f: figure.savefig(f, format="png", dpi=dpi))
    return path


def accuracy_vs_block_size(path: str | os.PathLike[str], *, correct: Curves, published: Curves,
                           wrong_mean: Curves, wrong_max: Curves, plain: float | None = None,
                           published_plain: float | None = None, chance: float | None = None,
                           title: str = "") -> Path:
    """Two panels, accuracy (%) against block size M per transform:

    left: our correct-key accuracy (solid) beside the published one (dashed), with the plain
    models as horizontal lines; right: correct key (solid) against wrong keys, mean (dotted) and
    max (dash-dot), with chance level.
    """
    figure = Figure(figsize=(12, 4.8), layout="constrained")
    left, right = figure.subplots(1, 2)
    sizes = sorted({m for curves in (correct, published) for c in curves.values() for m in c})

    def draw(ax, curves: Curves, style: str, label: str, **kwargs) -> None:
        for op, points in curves.items():
            if points:
                ms = sorted(points)
                ax.plot(ms, [points[m] for m in ms], style, color=COLOURS.get(op), label=f"{TRANSFORM_LABELS.get(op, op)}, {label}",
                        **kwargs)

    draw(left, correct, "o-", "ours")
    draw(left, published, "s--", "published", alpha=0.7)
    if plain is not None:
        left.axhline(plain, color="grey", linestyle="-", label="plain model, ours")
    if published_plain is not None:
        left.axhline(published_plain, color="grey", linestyle="--", label="plain model, published")
    left.set_title("correct key: ours vs published")

    draw(right, correct, "o-", "correct key")
    draw(right, wrong_mean, "v:", "wrong keys, mean")
    draw(right, wrong_max, "^-.", "wrong keys, max", alpha=0.7)
    if chance is not None:
        right.axhline(chance, color="black", linewidth=0.8, label="chance")
    right.set_title("correct key vs wrong keys (ours)")
    right.set_ylim(0, 100)

    for ax in (left, right):
        ax.set_xscale("log", base=2)
        if sizes:
            ax.set_xticks(sizes, [str(m) for m in sizes])
        ax.minorticks_off()
        ax.set_xlabel("block size M")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    if title:
        figure.suptitle(title)
    return save_png(figure, path)


def box_plot(path: str | os.PathLike[str], values: Mapping[str, torch.Tensor], ylabel: str, title: str = "") -> Path:
    """A box plot PNG, one box per named set of per-image values."""
    figure = Figure(figsize=(1.6 * len(values) + 2, 4), layout="tight")
    ax = figure.subplots()
    data = [torch.nan_to_num(v.double(), posinf=100.0).numpy() for v in values.values()]  # PSNR of identical = inf
    ax.boxplot(data, showfliers=False)
    ax.set_xticks(range(1, len(values) + 1), list(values), rotation=15)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    return save_png(figure, path)
