"""The report of ``analyze``: the answer first, then a layer x lens map, one figure per lens, each lens's section.

Every figure scales with the number of layers (layers run down the y axis, the figure grows with
them, labels are never cut), so a 50-layer model reads as well as a 2-layer one.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..core.metrics import no_better_than_chance
from ..report import Figure, Section, Table, save_figure, write_report
from ..training import InputShift

__all__ = ["answer_lines", "lens_map", "write_analysis_report", "COLUMNS"]

#: the layer x lens map: per-layer measure, column title, and whether it is a fraction of kernels
COLUMNS = [
    ("dead", "dead kernels", True),
    ("near_duplicate", "live, near-duplicate activations", True),
    ("high_ncc", "live, impulse NCC >= 0.9", True),
    ("shuffle_cosine", "shuffle cosine (mean)", False),
    ("low_taylor", "Taylor < 1% of max", True),
    ("ablation_drop", "metric drop, layer zeroed", False),
    ("cka_next", "CKA with next layer", False),
]


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _listed(names: list[str], shown: int = 12) -> str:
    """The first ``shown`` names, and how many more the JSON holds."""
    more = len(names) - shown
    return ", ".join(names[:shown]) + (f" and {more} more (analysis.json lists them all)" if more > 0 else "")


def answer_lines(res) -> list[str]:
    """The headline: what is redundant and how much could go."""
    a, out = res.answer, []
    if not a:
        return out
    if (getattr(res, "meta", None) or {}).get("complete") is False:  # stopped: the answer of the lenses that finished
        not_run = [k for k, v in res.lenses.items() if v.get("status") == "not run"]
        missed = ([f"{_listed(not_run)} did not run"] if not_run else []) + ([] if a.get("removable") else
                                                                            ["no removable-MACs estimate was made"])
        out.append(f"Interrupted: {', and '.join(missed) or 'after every lens and the estimate'}; below is what the "
                   "lenses that finished found.")
    data = getattr(res, "data", None) or {}
    shift = data.get("input_shift") or {}
    if shift.get("far"):
        described = InputShift(**{k: v for k, v in shift.items() if k != "far"}).describe()
        out.append(f"Warning: {described[0].upper()}{described[1:]}: the model computes something else here than it "
                   "learned, so every metric and data-driven lens below may mean little. Were its training images "
                   "scaled otherwise (--normalize), or are its running statistics stale (recompute_bn_stats)?")
    est = a.get("removable")
    chance = est and no_better_than_chance("accuracy", est["baseline"], est.get("chance"),  # set for accuracy only
                                           "the trivial layers and the removable MACs below say nothing about it")
    if chance:
        out.append(f"Warning: {chance}.")
    gone = data.get("not_called")
    if gone:
        out.append(f"Not analysed: {len(gone)} conv layer(s) a forward pass in eval mode never calls (heads used in "
                   f"training only): {_listed(gone)}.")
    if a.get("dead") is not None:
        out.append(f"Dead kernels: {a['dead']} of {a['kernels']} ({_pct(a['dead'] / a['kernels'])}) are zero on every "
                   f"analysed image" + (f"; {a['constant']} more are constant" if a.get("constant") else "") + ".")
    dup = [f"{a[k]} by activations (centered distinctiveness angle < {a['thresholds']['near_angle']:g} degrees)"
           for k in ("near_duplicate_activations",) if a.get(k) is not None]
    dup += [f"{a[k]} by impulse responses (NCC >= {a['thresholds']['high_ncc']:g})"
            for k in ("near_duplicate_impulse",) if a.get(k) is not None]  # fmt: skip
    if dup:
        out.append("Live kernels with a near-duplicate in their layer: " + "; ".join(dup) + ".")
    drop = a["thresholds"]["max_drop"]
    if a.get("trivial_layers") is not None:
        out.append(f"Trivial layers (zeroing one drops the metric by <= {drop:g}): {len(a['trivial_layers'])} of "
                   f"{a['layers_ablated']}" + (f": {_listed(a['trivial_layers'])}" if a["trivial_layers"] else "") + ".")
    if a.get("trivial_blocks") is not None:
        out.append(f"Trivial residual blocks (branch removed, drop <= {drop:g}): {len(a['trivial_blocks'])} of "
                   f"{a['blocks']}" + (f": {_listed(a['trivial_blocks'])}" if a["trivial_blocks"] else "") + ".")
    est = a.get("removable")
    if est:
        out.append(f"Estimated removable: {_pct(est['fraction'])} of the MACs ({est['kernels']} of {est['of']} kernels) "
                   f"with the metric {est['baseline']:.4f} -> {est['metric_after']:.4f} on validation data "
                   f"(drop <= {drop:g}); how: {est['how']}." + (f" Note: {est['caveat']}." if est.get("caveat") else ""))
    return out


def _level(column: str, value) -> float:
    """A layer's redundancy by one lens on a 0-1 scale (NaN when not measured): fractions as they are,
    cosine and CKA from 0.8 (0) to 1 (1), an ablation drop from 0.05 or more (0) to none (1)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return math.nan
    if column == "ablation_drop":
        return 1.0 - min(1.0, max(0.0, value) / 0.05)
    if column in ("shuffle_cosine", "cka_next"):
        return min(1.0, max(0.0, (value - 0.8) / 0.2))
    return min(1.0, max(0.0, value))


def _cell_color(column: str, value) -> str | None:
    level = _level(column, value)
    if math.isnan(level):
        return None
    other = int(255 - 150 * level)
    return f"rgb(255,{other},{other})"


def layer_table(res) -> Table:
    cols = [c for c in COLUMNS if any(c[0] in v for v in res.per_layer.values())]
    rows, colors = [], []
    for layer in res.layers:
        v = res.per_layer.get(layer, {})
        row: list[Any] = [layer, res.kernels[layer]]
        color: list[str | None] = [None, None]
        for key, _, frac in cols:
            x = v.get(key)
            row.append("n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else _pct(x) if frac else round(x, 4))
            color.append(_cell_color(key, x))
        rows.append(row)
        colors.append(color)
    return Table("Redundancy by layer and lens (the redder, the more redundant by that lens)",
                 ["layer", "kernels", *[c[1] for c in cols]], rows,
                 note="Fractions are of the layer's kernels; 'n/a': the lens does not measure that layer.",
                 colors=colors)  # fmt: skip


def lens_map(res):
    """Heat map: layers down, lenses across, each cell the lens's redundancy of that layer (0-1)."""
    import matplotlib.pyplot as plt
    import numpy as np

    cols = [c for c in COLUMNS if any(c[0] in v for v in res.per_layer.values())]
    n = len(res.layers)
    grid = np.full((n, len(cols)), np.nan)
    for i, layer in enumerate(res.layers):
        for j, (key, _, _) in enumerate(cols):
            grid[i, j] = _level(key, res.per_layer.get(layer, {}).get(key))
    fig, ax = plt.subplots(figsize=(3.0 + 1.25 * max(1, len(cols)), max(3.4, 1.9 + 0.28 * n)))
    cmap = plt.get_cmap("Reds").with_extremes(bad="#dddddd")
    im = ax.imshow(np.ma.masked_invalid(grid), vmin=0, vmax=1, cmap=cmap, aspect="auto", interpolation="nearest")
    if n <= 60:
        for i in range(n):
            for j in range(len(cols)):
                if not np.isnan(grid[i, j]):
                    ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=6 if n > 30 else 7,
                            color="white" if grid[i, j] > 0.6 else "black")
    ax.set_xticks(range(len(cols)), [c[1] for c in cols], rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(n), res.layers, fontsize=7 if n > 30 else 8)
    ax.set_xlabel("lens")
    ax.set_ylabel("conv layer (forward order)")
    ax.set_title(f"{res.model}: redundancy by layer and lens\n(1: most redundant by that lens; grey: not measured)",
                 fontsize=9)
    fig.colorbar(im, ax=ax, label="redundancy score (0-1)", fraction=0.04, pad=0.02)
    fig.tight_layout()
    return fig


#: the per-kernel scores as the agreement figure names them
SCORE_NAMES = {"max_activation": "dead (low activation)", "angle": "distinctiveness (small angle)",
               "ncc": "impulse (high NCC)", "shuffle_cosine": "shuffle (high cosine)", "l1": "small L1",
               "taylor": "small Taylor"}  # fmt: skip


def _agreement_figure(res):
    import matplotlib.pyplot as plt
    import numpy as np

    ag = res.agreement
    names = [SCORE_NAMES.get(x, x) for x in ag["lenses"]]
    m = np.array(ag["matrix"], dtype=float)
    fig, ax = plt.subplots(figsize=(1.6 + 0.9 * len(names), 1.2 + 0.8 * len(names)))
    im = ax.imshow(m, vmin=-1, vmax=1, cmap="RdBu_r")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    for i in range(len(names)):
        for j in range(len(names)):
            if not np.isnan(m[i, j]):
                ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=7)
    ax.set_title("Do the lenses agree? Spearman rank correlation of per-kernel\nredundancy scores, mean over layers", fontsize=9)
    fig.colorbar(im, ax=ax, label="rank correlation", fraction=0.05)
    fig.tight_layout()
    return fig


def _blocks_figure(res):
    import matplotlib.pyplot as plt

    names = list(res.blocks)
    drops = [res.blocks[b]["drop"] for b in names]
    fig, ax = plt.subplots(figsize=(6.5, 1.2 + 0.26 * len(names)))
    ax.barh(range(len(names)), drops, color=["tab:green" if res.blocks[b]["trivial"] else "tab:blue" for b in names])
    for i, d in enumerate(drops):
        ax.text(d, i, f" {d:+.4f}", va="center", fontsize=7)
    ax.axvline(res.answer["thresholds"]["max_drop"], color="tab:red", ls=":", label="max drop")
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("metric drop with the block's branch removed")
    ax.set_ylabel("residual block")
    ax.set_title("Residual blocks (green: trivial)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _estimate_figure(res):
    import matplotlib.pyplot as plt

    est = res.answer["removable"]
    ks = sorted(int(k) for k in est["evaluations"])
    fig, ax = plt.subplots(figsize=(6.0, 3.4))
    ax.plot(ks, [est["evaluations"][k] if k in est["evaluations"] else est["evaluations"][str(k)] for k in ks], "o-")
    ax.axhline(est["baseline"] - est["max_drop"], color="tab:red", ls=":", label=f"baseline - {est['max_drop']:g}")
    ax.axvline(est["kernels"], color="gray", ls="--", label=f"{est['kernels']} kernels ({100 * est['fraction']:.1f}% MACs)")
    ax.set_xlabel("most redundant kernels removed (consensus rank)")
    ax.set_ylabel("metric on validation data")
    ax.set_title("How much can go: binary search on held-out data")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _lens_sections(res, out: Path) -> list[Section]:
    sections = []
    for i, (lens, r) in enumerate(res.results.items()):
        r.save(out / "lenses" / f"{lens}.json")
        try:
            fig = r.plot()
        except Exception as e:  # a lens whose figure cannot be drawn still gets its section
            fig, note = None, f"(no figure: {type(e).__name__}: {e})"
        else:
            note = ""
        figures = []
        if fig is not None:
            save_figure(fig, out / "lenses" / f"{lens}.png")
            figures.append(Figure(f"lenses/{lens}.png", f"{lens}: {type(r).__name__}." + note))
        info = res.lenses.get(lens.split("_")[0], {})
        sections.append(Section(key=f"analysis-{lens}", title=f"Lens: {lens}", order=2 + i,
                                intro=(info.get("sampled") or "") + (" " + info["note"] if info.get("note") else ""),
                                findings=r.headline()[:12], figures=figures))  # fmt: skip
    return sections


def write_analysis_report(res, out: Path) -> Path:
    """``analysis.json``, the figures, each lens's JSON and section, and ``report.html``."""
    out.mkdir(parents=True, exist_ok=True)
    res.save(out / "analysis.json")
    figures = [("lens_map.png", lens_map(res), "Redundancy by layer and lens.")]
    if res.agreement.get("lenses"):
        figures.append(("agreement.png", _agreement_figure(res), "Rank agreement between the lenses."))
    if res.blocks:
        figures.append(("blocks.png", _blocks_figure(res), "Metric drop per residual block with its branch removed."))
    if res.answer.get("removable"):
        figures.append(("removable.png", _estimate_figure(res), "The removable-MACs estimate."))
    for name, fig, _ in figures:
        save_figure(fig, out / name)
    ran = [f"{k} ({v['note'] or 'ran'})" if v.get("note") else k for k, v in res.lenses.items() if v["status"] == "ran"]
    skipped = [f"{k}: {v['note']}" for k, v in res.lenses.items() if v["status"] != "ran"]
    intro = (f"{res.model}: {len(res.layers)} conv layers, {sum(res.kernels.values())} kernels, "
             f"{sum(res.macs.values()) / 1e6:.2f} M MACs per image. Data: {res.data['how']}. Lenses run: "
             f"{', '.join(ran)}." + (f"\n\nNot run: {'; '.join(skipped)}." if skipped else ""))  # fmt: skip
    summary = Section(key="analysis", title=f"What is redundant in {res.model}", intro=intro, order=0,
                      findings=answer_lines(res), tables=[layer_table(res)],
                      figures=[Figure(name, caption) for name, _, caption in figures])  # fmt: skip
    return write_report(out, [summary, *_lens_sections(res, out)], title=f"cnn-redundancy: {res.model}")
