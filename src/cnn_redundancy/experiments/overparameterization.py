"""Does redundancy grow with over-parameterization? The four papers' shared explanation, tested with their tools.

All four papers explain the redundancy they find by over-parameterization. :func:`run` trains LeNet-5
at widths 1, 2, 4 and 10 and ResNet-20 at widths 1, 2 and 4 (multiples of its 16 base channels) on
mnist5k with the same seed and the same epochs, runs :func:`cnn_redundancy.analyze` on each with the
papers' lenses, and plots each lens's redundancy against the width beside the test accuracy.
"""

from __future__ import annotations

import math
import statistics
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..core.registry import experiment, option
from ..core.results import atomic_write, to_json, to_plain
from ..data import load_dataset, subset
from ..report import Figure, Section, Table, save_figure, write_report
from ..survey import AnalysisResult, analyze
from ..training import evaluate
from .settings import cached_fit, holds, settings_table, write_markdown

__all__ = ["run", "redundancy", "MEASURES", "trend"]

#: the lenses of the four papers (and the dead-kernel lens that the near-duplicate counts need)
LENSES = ("dead", "distinctiveness", "impulse", "shuffle", "ablation", "blocks")
#: measure -> (label, higher is more redundant)
MEASURES = {
    "dead": "dead kernels (fraction)",
    "near_duplicate_activations": "near-duplicate kernels by activations, angle < 15 deg (fraction of live kernels)",
    "near_duplicate_impulse": "kernels with an impulse-response partner of NCC >= 0.9 (fraction of live kernels)",
    "shuffle_cosine": "mean cosine after a channel shuffle (consumer's activation)",
    "trivial_layers": "trivial layers: zeroed, accuracy drops <= 1 point (fraction)",
    "trivial_blocks": "trivial residual blocks: branch removed, drop <= 1 point (fraction)",
    "removable_macs": "MACs removable within 1 point on held-out data (fraction, no fine-tuning)",
}


def _fraction(res: AnalysisResult, field: str, test) -> float:
    """Among live kernels with a defined value of ``field``: the fraction for which ``test`` holds."""
    hits = total = 0
    for values in res.per_kernel.values():
        dead = values.get("dead", [False] * len(values.get(field, [])))
        for v, d in zip(values.get(field, []), dead):
            if d or v is None or math.isnan(v):
                continue
            total += 1
            hits += bool(test(v))
    return hits / total if total else math.nan


def redundancy(res: AnalysisResult) -> dict[str, float]:
    """Each lens's redundancy in one number per model (NaN where the lens did not run or does not apply)."""
    a = res.answer
    shuffle = [v for values in res.per_kernel.values() for v in values.get("shuffle_cosine", []) if v is not None and not math.isnan(v)]
    return {
        "dead": a["dead"] / a["kernels"] if a.get("dead") is not None else math.nan,
        "near_duplicate_activations": _fraction(res, "angle", lambda x: x < a["thresholds"]["near_angle"]),
        "near_duplicate_impulse": _fraction(res, "ncc", lambda x: x >= a["thresholds"]["high_ncc"]),
        "shuffle_cosine": statistics.fmean(shuffle) if shuffle else math.nan,
        "trivial_layers": len(a["trivial_layers"]) / a["layers_ablated"] if a.get("trivial_layers") is not None and a["layers_ablated"] else math.nan,
        "trivial_blocks": len(a["trivial_blocks"]) / a["blocks"] if a.get("trivial_blocks") is not None and a["blocks"] else math.nan,
        "removable_macs": a["removable"]["fraction"] if a.get("removable") else math.nan,
    }  # fmt: skip


def trend(values: Sequence[float]) -> str:
    """``rises`` / ``falls`` (monotone, first to last), ``rises overall`` / ``falls overall`` (not monotone),
    ``flat`` or ``n/a`` (fewer than two defined values)."""
    v = [x for x in values if not math.isnan(x)]
    if len(v) < 2:
        return "n/a"
    steps = [b - a for a, b in zip(v, v[1:])]
    if abs(v[-1] - v[0]) < 1e-9 and all(abs(s) < 1e-9 for s in steps):
        return "flat"
    up = v[-1] > v[0]
    monotone = all(s >= -1e-9 for s in steps) if up else all(s <= 1e-9 for s in steps)
    return ("rises" if up else "falls") + ("" if monotone else " overall")


def _verdict(t: str) -> str:
    return "n/a" if t == "n/a" else holds(t == "rises", partly=t == "rises overall")


def _plot(rows: list[dict[str, Any]]):
    import matplotlib.pyplot as plt

    keys = [*MEASURES, "test_accuracy"]
    fig, axes = plt.subplots(2, 4, figsize=(17, 7.6))
    for ax, key in zip(axes.flat, keys):
        for family, marker, color in (("lenet5", "o-", "C0"), ("resnet20", "s-", "C1")):  # one colour per family
            pts = [(r["width"], r[key]) for r in rows if r["family"] == family and not math.isnan(r[key])]
            if pts:
                ax.plot(*zip(*pts), marker, color=color, label=family)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("width (multiple of the standard network)")
        ax.set_ylabel("test accuracy" if key == "test_accuracy" else "redundancy")
        ax.set_title(textwrap.fill("test accuracy" if key == "test_accuracy" else MEASURES[key], 50), fontsize=8)
        ax.grid(alpha=0.3)
        if ax.get_lines():
            ax.legend(fontsize=7)
    fig.suptitle("Redundancy by each paper's lens against the width, LeNet-5 and ResNet-20 on mnist5k")
    fig.tight_layout()
    return fig


@experiment("overparameterization", paper="overparameterization", options=[
    option("epochs", "training epochs of every network"),
    option("lenet_widths", "LeNet-5 width multiples", type=int, nargs="+"),
    option("resnet_widths", "ResNet-20 width multiples (of resnet_base channels)", type=int, nargs="+"),
    option("resnet_base", "ResNet-20 channels of the first stage at width 1"),
    option("limit", "use only this many training and test images", type=int),
    option("budget_minutes", "analyze's time budget per network (samples shrink for wide models)", type=float),
])  # fmt: skip
def run(
    out: str | Path = "runs/reproduce-overparameterization",
    *,
    quick: bool = False,
    seed: int = 0,
    device: str | torch.device | None = None,
    epochs: int = 5,
    lenet_widths: Sequence[int] = (1, 2, 4, 10),
    resnet_widths: Sequence[int] = (1, 2, 4),
    resnet_base: int = 16,
    limit: int | None = None,
    budget_minutes: float | None = None,
) -> Path:
    """Redundancy against over-parameterization: each paper's lens on LeNet-5 and ResNet-20 at growing widths.

    Every network trains on the mnist5k training split with the same seed and epochs (Adam lr 1e-3,
    batch 64; checkpoints in ``out/checkpoints`` are reused for the same settings); ``analyze`` then runs
    the dead-kernel, distinctiveness, impulse, shuffle, ablation and block lenses on the test split (a
    fifth held out for the removable-MACs estimate). ``budget_minutes`` fits each analysis into that time
    by sampling less of the wider models (which then differ in sample size; default: the same samples for
    all). ``quick``: LeNet-5 widths 1 and 2, ResNet-20 width 1 of base 4, 1 epoch, 256 / 160 images.
    """
    if quick:
        lenet_widths, resnet_widths, resnet_base, epochs, limit = (1, 2), (1,), 4, 1, limit or 256
    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    train = subset(load_dataset("mnist5k", "train"), limit, seed=seed)
    test = subset(load_dataset("mnist5k", "test"), min(limit, 160) if quick else limit, seed=seed)
    nets = [("lenet5", w, {"width": w}) for w in lenet_widths]
    nets += [("resnet20", w, {"in_channels": 1, "input_size": 28, "width": resnet_base * w}) for w in resnet_widths]
    rows: list[dict[str, Any]] = []
    for family, w, kw in nets:
        tag = f"{family}_w{w}"
        t1 = time.perf_counter()
        model = cached_fit(family, kw, out / "checkpoints" / f"{tag}.pt", train, epochs=epochs, seed=seed, device=device,
                           progress=False, log=lambda msg, tag=tag: print(f"{tag}: {msg}", flush=True))  # fmt: skip
        t2 = time.perf_counter()
        res = analyze(model, test, lenses=list(LENSES), seed=seed, device=device, budget_minutes=budget_minutes, progress=False)
        res.save(out / f"analysis_{tag}.json")
        row = {"family": family, "width": w, "params": sum(p.numel() for p in model.parameters()),
               "train_accuracy": evaluate(model, train, device=device, progress=False),
               "test_accuracy": evaluate(model, test, device=device, progress=False), **redundancy(res),
               "train_seconds": t2 - t1, "analyze_seconds": time.perf_counter() - t2}  # fmt: skip
        rows.append(row)
        print(f"{tag}: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()), flush=True)
        atomic_write(out / "overparameterization.json", to_json(to_plain(rows)))
    save_figure(_plot(rows), out / "overparameterization.png")
    seconds = time.perf_counter() - t0
    section = _section(rows, epochs=epochs, seed=seed, n_train=len(train), n_test=len(test), resnet_base=resnet_base,
                       budget=budget_minutes, seconds=seconds, quick=quick)  # fmt: skip
    write_markdown(out / "overparameterization.md", section.tables)
    return write_report(out, [section])


def _section(rows, *, epochs, seed, n_train, n_test, resnet_base, budget, seconds, quick) -> Section:
    families = list(dict.fromkeys(r["family"] for r in rows))
    verdicts = []
    for key, label in MEASURES.items():
        cells = [label]
        for f in families:
            v = [r[key] for r in rows if r["family"] == f]
            t = trend(v)
            cells += [" -> ".join("n/a" if math.isnan(x) else f"{x:.3f}" for x in v), f"{t} ({_verdict(t)})"]
        verdicts.append(cells)
    acc = [[r["family"], r["width"], f"{r['params']:,}", f"{100 * r['train_accuracy']:.1f}", f"{100 * r['test_accuracy']:.1f}",
            *[("n/a" if math.isnan(r[k]) else f"{r[k]:.3f}") for k in MEASURES],
            f"{r['train_seconds']:.0f} / {r['analyze_seconds']:.0f}"] for r in rows]  # fmt: skip
    yes = sum(c.endswith("(yes)") for row in verdicts for c in row[2::2])
    judged = sum(not c.endswith("(n/a)") for row in verdicts for c in row[2::2])
    settings = {"quick": quick, "seed": seed, "training": f"adam, lr 0.001, batch 64, {epochs} epochs, {n_train} mnist5k images",
                "analysis": f"analyze on {n_test} test images (a fifth held out for the estimate), lenses {', '.join(LENSES)}",
                "ResNet-20 width 1": f"{resnet_base} / {2 * resnet_base} / {4 * resnet_base} channels",
                "budget per analysis": "none (the same samples for every network)" if budget is None else f"{budget:g} min",
                "run time (s)": round(seconds)}  # fmt: skip
    return Section(
        key="overparameterization",
        title="Does redundancy grow with over-parameterization?",
        intro=("All four papers explain the redundancy they find by over-parameterization. LeNet-5 and ResNet-20 at "
               "growing widths, trained alike, each analysed with the papers' own lenses: does each lens find more "
               "redundancy in the wider network?"),
        findings=[f"The hypothesis (redundancy rises monotonically with the width) holds for {yes} of {judged} "
                  "lens-network pairs; the table says which and by how much.", f"Run time {seconds:.0f} s."],
        tables=[Table("Each lens's redundancy against the width", ["measure", *[x for f in families for x in (f"{f} (widths "
                      f"{', '.join(str(r['width']) for r in rows if r['family'] == f)})", "trend (hypothesis holds?)")]],
                      verdicts, note="rises: higher at every wider network; rises overall: higher at the widest than at "
                      "the narrowest but not at every step."),
                Table("Every network", ["family", "width", "params", "train acc %", "test acc %", *MEASURES,
                                        "train / analyze s"], acc),
                settings_table(settings)],  # fmt: skip
        figures=[Figure("overparameterization.png", "Each lens's redundancy and the test accuracy against the width.")],
        order=60,
    )
