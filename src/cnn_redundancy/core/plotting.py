"""Figures that scale with the number of layers: layers run down the y axis and the figure grows with
them, so a 50-layer model reads as well as a 2-layer one (no label is cut, no legend is dropped)."""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["per_layer_boxes", "height_for"]


def height_for(n: int, *, per: float = 0.26, base: float = 1.6, least: float = 3.0) -> float:
    """Figure height (inches) for ``n`` rows."""
    return max(least, base + per * n)


def per_layer_boxes(layers: Sequence[str], values: Sequence[Sequence[float]], *, xlabel: str, title: str,
                    line: float | None = None, line_label: str = "", xlim: tuple[float, float] | None = None, ax=None):  # fmt: skip
    """One horizontal box per layer (each point one kernel or channel), layers top to bottom in forward order.

    ``line``: a vertical reference (a threshold). NaN values are left out; a layer with none is marked
    "not measured". Draws into ``ax`` when given, else into a new figure; returns the figure.
    """
    import matplotlib.pyplot as plt

    n = len(layers)
    if ax is None:
        _, ax = plt.subplots(figsize=(7.5, height_for(n)))
    clean = [[v for v in vs if v is not None and not math.isnan(v)] for vs in values]
    shown = [i for i, vs in enumerate(clean) if vs]
    if shown:
        ax.boxplot([clean[i] for i in shown], positions=shown, vert=False, widths=0.6, showfliers=True,
                   flierprops={"markersize": 3})  # fmt: skip
    for i, vs in enumerate(clean):
        if not vs:
            ax.text(0.01, i, "not measured", transform=ax.get_yaxis_transform(), va="center", fontsize=7, color="gray")
    ax.set_yticks(range(n), list(layers), fontsize=7 if n > 30 else 8)
    ax.set_ylim(n - 0.5, -0.5)
    if xlim is not None:
        ax.set_xlim(*xlim)
    if line is not None:
        ax.axvline(line, color="tab:red", ls=":", lw=1, label=line_label or f"{line:g}")
        # where it covers the fewest boxes, whiskers and outliers (matplotlib weighs every drawn line): the
        # values may crowd on either side of the threshold, and in any rows
        ax.legend(fontsize=7, loc="best")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("layer (forward order)")
    ax.set_title(title, fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    ax.figure.tight_layout()
    return ax.figure
