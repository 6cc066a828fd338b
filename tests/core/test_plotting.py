"""Per-layer box plots: one labelled row per layer, and the threshold's legend clear of the values."""

from __future__ import annotations

import math

from cnn_redundancy.core.plotting import per_layer_boxes


def _legend_box(fig):
    fig.canvas.draw()
    ax = fig.axes[0]
    return ax.get_legend().get_window_extent(), ax


def _covers_no_value(fig) -> bool:
    box, ax = _legend_box(fig)
    drawn = [ln for ln in ax.lines if ln.get_label().startswith("_")]  # boxes, whiskers, medians, outliers
    return bool(drawn) and not any(box.overlaps(ln.get_window_extent()) for ln in drawn)


def test_the_legend_sits_on_the_side_away_from_the_threshold():
    import matplotlib.pyplot as plt

    layers = [f"layer{i}" for i in range(9)]
    near_one = [[0.85, 0.9, 0.95, 0.99] for _ in layers]  # values crowd at the right, around a 0.9 threshold
    fig = per_layer_boxes(layers, near_one, xlabel="NCC", title="t", line=0.9, line_label="0.9", xlim=(-1, 1))
    box, ax = _legend_box(fig)
    right_of_line = ax.transData.transform((0.9, 0))[0]
    assert box.x1 < ax.transData.transform((0.0, 0))[0] < right_of_line  # in the empty left half
    assert [t.get_text() for t in ax.get_yticklabels()] == layers and _covers_no_value(fig)
    plt.close(fig)
    small = [[2.0, 5.0, 9.0, math.nan] for _ in layers]  # angles crowd at the left, around 15 of 0-90
    fig = per_layer_boxes(layers, small, xlabel="deg", title="t", line=15.0, line_label="15", xlim=(0, 90))
    box, ax = _legend_box(fig)
    assert box.x0 > ax.transData.transform((45.0, 0))[0] and _covers_no_value(fig)  # in the empty right half
    plt.close(fig)


def test_the_legend_covers_no_value_at_50_layers():
    import matplotlib.pyplot as plt

    layers = [str(3 * i + 2) for i in range(50)]
    # values on the left of a threshold near the middle, in every row, the first rows reaching past it
    values = [[9.0, 14.0, 23.0, 27.5] if i < 3 else [2.0, 3.5, 5.0, 7.0] for i in range(50)]
    fig = per_layer_boxes(layers, values, xlabel="deg", title="t", line=15.0, line_label="15 degrees")
    assert _covers_no_value(fig)
    plt.close(fig)
