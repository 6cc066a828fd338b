"""The distinctiveness-pruning paper's experiment on mnist5k (its Tables 1-2) and a criteria head-to-head.

Settings and every choice made where the paper is ambiguous: ``docs/distinctiveness.md``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from ..analyses.distinctiveness import distinctiveness
from ..compression.pruning import CRITERIA
from ..compression.pruning.trials import HeadToHeadResult, head_to_head, pruning_trials
from ..core.registry import experiment, option
from ..data import load_dataset, subset
from ..models import get_model
from ..report import Figure, Section, Table, save_figure, write_report
from ..training import fit

__all__ = ["run"]


def _ms(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}"


def _h2h_table(h: HeadToHeadResult) -> list[list[Any]]:
    b = h.baseline
    unpruned, latency = h.latency()
    rows = [["(unpruned)", "-", "0.0", f"{100 * b['test_acc']:.1f}", "-", b["params"], b["macs"], _ms(unpruned)]]
    for r, ms in zip(h.rows, latency):
        rows.append([r["criterion"], f"{100 * r['target']:.0f}%", f"{100 * r['macs_reduction']:.1f}", f"{100 * r['test_acc']:.1f}",
                     f"{100 * r['test_acc_finetuned']:.1f}", r["params"], r["macs"], _ms(ms)])
    return rows


@experiment("distinctiveness", paper="distinctiveness", options=[
    option("model", "model of the trials"),
    option("trials", "trials (each trains a fresh baseline)"),
    option("steps", "kernels pruned per trial"),
    option("epochs", "baseline training epochs per trial"),
    option("compare", "run the criteria head-to-head too"),
])  # fmt: skip
def run(
    out: str | Path = "runs/reproduce-distinctiveness",
    *,
    quick: bool = False,
    seed: int = 0,
    device: str | torch.device | None = None,
    model: str = "small_cnn_mnist",
    trials: int = 10,
    steps: int = 9,
    epochs: int = 3,
    head_to_head_models: tuple[str, ...] = ("lenet5", "small_cnn_mnist"),
    compare: bool = True,
) -> Path:
    """Distinctiveness vs random pruning over 10 trials (Tables 1-2) and a criteria head-to-head.

    Settings (documented in ``docs/distinctiveness.md``): ``small_cnn_mnist`` (the paper's two conv
    layers of nine 9x9 kernels, max pool 2 for 28x28 inputs), Adam lr 1e-3, batch 64, 3 epochs per
    trial on the 4,000 training images, 10 trials, 9 kernels pruned (half of the 18); activation
    vectors and train accuracy over a fixed 1,000-image subset of the training set. ``quick``: 2 trials, 2 steps, 1 epoch, 512/256
    images, head-to-head on lenet5 with 2 criteria at 25% fewer MACs. ``compare=False`` skips the head-to-head.

    Returns:
        The path of ``report.html``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    train, test = load_dataset("mnist5k", "train"), load_dataset("mnist5k", "test")
    crits: tuple[str, ...] = CRITERIA
    reductions, latency_runs = (0.1, 0.25, 0.5), 20
    if quick:
        train, test = subset(train, 256, seed=seed), subset(test, 128, seed=seed)
        trials, steps, epochs = 2, 2, 1
        head_to_head_models, crits, reductions, latency_runs = ("lenet5",), ("distinctiveness", "random"), (0.25,), 3
    sub = subset(train, 1000, seed=seed)  # activation vectors and train accuracy: a fixed 1,000-image subset
    res = pruning_trials(model, train, test, trials=trials, steps=steps, epochs=epochs, seed=seed,
                         activation_data=sub, train_eval=sub, device=device, partial=out / "distinctiveness_trials.json")
    res.save(out / "distinctiveness_trials.json")
    save_figure(res.plot(), out / "distinctiveness_trials.png")
    cols = ["", *[str(i) for i in range(steps + 1)]]
    tables = [Table(f"Table {i + 1}: {crit} pruning, accuracy (%) after k kernels pruned, {trials} trials (mean, std)",
                    cols, res.table(crit)) for i, crit in enumerate(("random", "distinctiveness"))]
    gap = res.gap["random"]
    tables.append(Table("Average gap, distinctiveness minus random (accuracy points, steps 1..N, all trials)",
                        ["split", "gap"], [["test", f"{100 * gap['test']:+.1f}"], ["train", f"{100 * gap['train']:+.1f}"]]))
    figures = [Figure("distinctiveness_trials.png", f"Mean accuracy +-1 std over {trials} trials as kernels are pruned.")]
    # angles of one trained baseline
    torch.manual_seed(seed)
    base = get_model(model)
    fit(base, train, epochs=epochs, seed=seed, device=device, progress=False)
    dres = distinctiveness(base, train, center=None, device=device)
    dres.save(out / "distinctiveness_angles.json")
    save_figure(dres.plot(), out / "distinctiveness_angles.png")
    figures.append(Figure("distinctiveness_angles.png", f"Angles between kernels of a trained {model} (conv2) and their histogram."))
    least = dres.pairs(1)[0]
    findings = [
        f"Over {trials} trials, distinctiveness pruning kept on average {100 * gap['test']:+.1f} test and "
        f"{100 * gap['train']:+.1f} train accuracy points relative to random pruning while {steps} kernels were removed "
        "(the paper reports about +10 points on SFEW).",
        f"Final test accuracy after {steps} kernels: distinctiveness {res.table('distinctiveness')[0][-1]}%, "
        f"random {res.table('random')[0][-1]}% (baseline {res.table('random')[0][1]}%).",
        f"The least distinct pair of a trained baseline: {least['layer']} kernels {least['i']} and {least['j']} at "
        f"{least['angle']:.1f} degrees; plain angles lie within 0-90 degrees since activation norms are non-negative.",
    ]
    if compare:
        for mname in head_to_head_models:
            torch.manual_seed(seed)
            m = get_model(mname)
            fit(m, train, epochs=epochs, seed=seed, device=device, progress=False)
            h = head_to_head(m, train, test, criteria=crits, seed=seed, name=mname, reductions=reductions,
                             latency_runs=latency_runs, activation_data=sub, device=device)
            h.save(out / f"head_to_head_{mname}.json")
            save_figure(h.plot(), out / f"head_to_head_{mname}.png")
            tables.append(Table(f"{mname}: criteria at the same MACs reduction (test accuracy %, without / with 1 epoch "
                                "fine-tuning; CPU latency for a batch of 64, median of 20 runs)",
                                ["criterion", "target", "MACs reduction %", "test acc", "fine-tuned", "params", "MACs", "latency ms"],
                                _h2h_table(h)))
            figures.append(Figure(f"head_to_head_{mname}.png", f"{mname}: test accuracy against MACs reduction per criterion."))
            at = {r["criterion"]: r for r in h.rows if r["target"] == max(r2["target"] for r2 in h.rows)}
            if at:
                best = max(at.values(), key=lambda r: r["test_acc"])
                findings.append(f"{mname} at {100 * best['target']:.0f}% fewer MACs: best without fine-tuning is "
                                f"{best['criterion']} ({100 * best['test_acc']:.1f}%); distinctiveness "
                                f"{100 * at['distinctiveness']['test_acc']:.1f}%, random {100 * at['random']['test_acc']:.1f}%."
                                if "distinctiveness" in at and "random" in at else "")
    seconds = time.perf_counter() - t0
    findings.append(f"Run time {seconds:.0f} s ({'quick' if quick else 'full'} settings).")
    section = Section(
        key="distinctiveness",
        title="Distinctiveness pruning of conv kernels",
        intro=(f"Each trial trains a fresh, seeded {model} on mnist5k ({epochs} epochs, Adam 1e-3), then removes "
               f"{steps} kernels one at a time, either one kernel of the least distinct pair in the network "
               "(angle between activation vectors of Frobenius norms, recomputed after each removal) or a random "
               "kernel; removal is structural (Torch-Pruning dependency graph)."),
        findings=[f for f in findings if f],
        tables=tables,
        figures=figures,
        order=20,
    )
    return write_report(out, [section])
