"""The distinctiveness-pruning paper's experiment on mnist5k (its Tables 1-2) and a criteria head-to-head.

Settings and every choice made where the paper is ambiguous: ``docs/distinctiveness.md``.
"""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from ..analyses.distinctiveness import distinctiveness
from ..compression.pruning import CRITERIA
from ..compression.pruning.trials import HeadToHeadResult, TrialsResult, _gaps, head_to_head, pruning_trials
from ..core.registry import experiment, option
from ..data import load_dataset, subset
from ..models import get_model
from ..report import Figure, Section, Table, save_figure, write_report
from ..training import fit
from .settings import PAPER_OPTION, comparison_table, holds, preset, settings_table, write_markdown

__all__ = ["run", "paired_tests", "unpaired_tests", "paper_rows", "trained_rows"]


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
    option("lr", "Adam learning rate of the baselines"),
    option("weight_decay", "weight decay of the baselines"),
    option("batch_size", "training mini-batch of the baselines"),
    option("n_train", "training images per trial, drawn afresh (seeded) per trial (default: all 4,000)", type=int),
    option("n_test", "test images per trial, drawn afresh (seeded) per trial (default: all 1,000)", type=int),
    PAPER_OPTION,
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
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    batch_size: int = 64,
    n_train: int | None = None,
    n_test: int | None = None,
    paper_settings: bool = False,
) -> Path:
    """Distinctiveness vs random pruning over 10 trials (Tables 1-2) and a criteria head-to-head.

    Settings (documented in ``docs/distinctiveness.md``): ``small_cnn_mnist`` (the paper's two conv
    layers of nine 9x9 kernels, max pool 2 for 28x28 inputs), Adam lr 1e-3, batch 64, 3 epochs per
    trial on the 4,000 training images, 10 trials, 9 kernels pruned (half of the 18); activation
    vectors and train accuracy over a fixed 1,000-image subset of the training set. ``quick``: 2 trials, 2 steps, 1 epoch, 512/256
    images, head-to-head on lenet5 with 2 criteria at 25% fewer MACs. ``compare=False`` skips the head-to-head.

    ``paper_settings``: the paper's Adam lr 1e-2, weight decay 1e-4, batch 32, 20 epochs, 10 trials, 9
    kernels, on 501 training / 175 test images drawn afresh (seeded) for every trial; each trial trains
    two networks, so that the paper's comparison (each criterion on its own network) and the paired one
    (both criteria on the same network) are both reported with significance tests over the trials. No
    head-to-head. Options given beside it still apply; with ``quick``: 2 trials, 2 steps, 1 epoch, 64/32 images.

    Returns:
        The path of ``report.html``.
    """
    if paper_settings:
        return _paper_run(Path(out), quick=quick, seed=seed, device=device, **preset(run, locals(), PAPER))
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
    if n_train is not None or n_test is not None:
        raise ValueError("n_train and n_test draw data per trial: they go with --paper-settings")
    res = pruning_trials(model, train, test, trials=trials, steps=steps, epochs=epochs, lr=lr, weight_decay=weight_decay,
                         batch_size=batch_size, seed=seed, activation_data=sub, train_eval=sub, device=device,
                         partial=out / "distinctiveness_trials.json")
    res.save(out / "distinctiveness_trials.json")
    save_figure(res.plot(), out / "distinctiveness_trials.png")
    cols = ["", *[str(i) for i in range(steps + 1)]]
    tables = [Table(f"Table {i + 1}: {crit} pruning, accuracy (%) after k kernels pruned, {trials} trials (mean, std)",
                    cols, res.table(crit)) for i, crit in enumerate(("random", "distinctiveness"))]
    gap = res.gap["random"]
    tables.append(Table("Average gap, distinctiveness minus random (accuracy points, steps 1..N, all trials)",
                        ["split", "gap"], [["test", f"{100 * gap['test']:+.1f}"], ["train", f"{100 * gap['train']:+.1f}"]]))
    tables.append(significance_table(paired_tests(res), "Paired over trials (both criteria on each trial's network)"))
    figures = [Figure("distinctiveness_trials.png", f"Mean accuracy +-1 std over {trials} trials as kernels are pruned.")]
    # angles of one trained baseline
    torch.manual_seed(seed)
    base = get_model(model)
    fit(base, train, epochs=epochs, lr=lr, weight_decay=weight_decay, batch_size=batch_size, seed=seed, device=device,
        progress=False)
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
            fit(m, train, epochs=epochs, lr=lr, weight_decay=weight_decay, batch_size=batch_size, seed=seed, device=device,
                progress=False)
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
        intro=(f"Each trial trains a fresh, seeded {model} on mnist5k ({epochs} epochs, Adam {lr:g}), then removes "
               f"{steps} kernels one at a time, either one kernel of the least distinct pair in the network "
               "(angle between activation vectors of Frobenius norms, recomputed after each removal) or a random "
               "kernel; removal is structural (Torch-Pruning dependency graph)."),
        findings=[f for f in findings if f],
        tables=tables,
        figures=figures,
        order=20,
    )
    return write_report(out, [section])


#: the paper's setting (its section 2.2 and 2): SFEW's 501 / 175 images become draws from mnist5k
PAPER = {"model": "small_cnn_mnist", "trials": 10, "steps": 9, "epochs": 20, "lr": 1e-2, "weight_decay": 1e-4,
         "batch_size": 32, "n_train": 501, "n_test": 175}  # fmt: skip
#: the second network of trial t (random pruning in the paper's comparison) is seeded seed + t + OTHER
OTHER = 1000
#: the paper's Tables 1 (random) and 2 (distinctiveness): mean accuracy (%) after 0..9 kernels pruned
PAPER_TABLES = {
    "random": {"test": [28, 28, 26, 26, 24, 20, 20, 17, 21, 20], "train": [88, 86, 72, 71, 67, 54, 46, 38, 36, 29],
               "test_std": [5, 5, 4, 3, 4, 2, 4, 4, 3, 1], "train_std": [10, 10, 24, 23, 18, 14, 13, 18, 13, 15]},
    "distinctiveness": {"test": [37, 34, 34, 29, 22, 23, 22, 21, 19, 20], "train": [91, 81, 84, 73, 77, 56, 52, 54, 41, 41],
                        "test_std": [4, 5, 7, 9, 5, 4, 5, 7, 10, 8], "train_std": [6, 15, 11, 26, 13, 25, 24, 24, 29, 29]},
}  # fmt: skip


def _per_trial(acc: list[list[float]]) -> list[float]:
    """Each trial's mean accuracy over steps 1..N (the terms of the paper's average gap)."""
    return [statistics.fmean(row[1:]) for row in acc]


def paired_tests(res: TrialsResult, a: str = "distinctiveness", b: str = "random") -> dict[str, dict[str, float]]:
    """Per split: the mean per-trial gap ``a - b`` (steps 1..N, accuracy points / 100), a paired t-test and
    the Wilcoxon signed-rank test over trials (two-sided p-values; NaN where undefined)."""
    from scipy.stats import ttest_rel, wilcoxon

    out = {}
    for split, acc in (("test", res.test_acc), ("train", res.train_acc)):
        x, y = _per_trial(acc[a]), _per_trial(acc[b])
        d = [u - v for u, v in zip(x, y)]
        defined = len(d) > 1 and any(abs(v) > 0 for v in d)
        out[split] = {"gap": statistics.fmean(d) if d else math.nan, "trials": len(d),
                      "t_p": float(ttest_rel(x, y).pvalue) if defined else math.nan,
                      "wilcoxon_p": float(wilcoxon(d).pvalue) if defined else math.nan}  # fmt: skip
    return out


def unpaired_tests(res: TrialsResult, a: str = "distinctiveness", b: str = "random") -> dict[str, dict[str, float]]:
    """Per split, for criteria pruning independent networks: the gap of the means ``a - b`` (steps 1..N) and
    Welch's t-test over trials (two-sided p; NaN where undefined)."""
    from scipy.stats import ttest_ind

    out = {}
    for split, acc in (("test", res.test_acc), ("train", res.train_acc)):
        x, y = _per_trial(acc[a]), _per_trial(acc[b])
        defined = len(x) > 1 and len(y) > 1 and (statistics.pstdev(x) > 0 or statistics.pstdev(y) > 0)
        out[split] = {"gap": statistics.fmean(x) - statistics.fmean(y), "trials": len(x),
                      "welch_p": float(ttest_ind(x, y, equal_var=False).pvalue) if defined else math.nan}  # fmt: skip
    return out


def _p(v: float) -> str:
    return "n/a" if math.isnan(v) else f"{v:.3g}"


def significance_table(tests: dict[str, dict[str, float]], title: str) -> Table:
    """The gap and its p-values, one row per split."""
    cols = ["split", "gap (points, steps 1..N)", "trials"] + [k for k in ("t_p", "wilcoxon_p", "welch_p") if k in tests["test"]]
    names = {"t_p": "paired t-test p", "wilcoxon_p": "Wilcoxon signed-rank p", "welch_p": "Welch's t-test p"}
    rows = [[split, f"{100 * t['gap']:+.1f}", t["trials"], *[_p(t[k]) for k in cols[3:]]] for split, t in tests.items()]
    return Table(title, [names.get(c, c) for c in cols], rows, note="Two-sided p-values over trials; each trial contributes "
                 "its mean accuracy over steps 1..N.")


def _verdict(gap: float, p: float, paper_gap: float) -> str:
    """Same sign as the paper and significant (p < 0.05): yes; same sign only: partly; otherwise no."""
    same = (gap > 0) == (paper_gap > 0) and gap != 0
    return holds(same and not math.isnan(p) and p < 0.05, partly=same)


def _paper_gap(split: str) -> float:
    d, r = PAPER_TABLES["distinctiveness"][split], PAPER_TABLES["random"][split]
    return statistics.fmean(x - y for x, y in zip(d[1:], r[1:]))


def paper_rows(paired: TrialsResult, alone: TrialsResult, steps: int) -> list[list[Any]]:
    """The paper's Tables 1-2 and its "about 10% more" beside ours (accuracy in %); ``alone``: each criterion
    on its own networks (the paper's comparison), ``paired``: both on the same networks."""
    pt, ut = paired_tests(paired), unpaired_tests(alone)
    acc = {c: {"test": alone.test_acc[c], "train": alone.train_acc[c]} for c in ("distinctiveness", "random")}
    m = {c: {s: [statistics.fmean(col) * 100 for col in zip(*acc[c][s])] for s in ("test", "train")} for c in acc}
    sd = {c: {s: statistics.stdev(r[-1] for r in acc[c][s]) * 100 if len(acc[c][s]) > 1 else math.nan
              for s in ("test", "train")} for c in acc}  # fmt: skip
    P = PAPER_TABLES
    rows = [
        ["unpruned networks, train / test accuracy % (Tables 1-2, step 0: over-fitted)",
         f"random's {P['random']['train'][0]} / {P['random']['test'][0]}; distinctiveness's "
         f"{P['distinctiveness']['train'][0]} / {P['distinctiveness']['test'][0]}",
         f"random's {m['random']['train'][0]:.1f} / {m['random']['test'][0]:.1f}; distinctiveness's "
         f"{m['distinctiveness']['train'][0]:.1f} / {m['distinctiveness']['test'][0]:.1f}", "n/a (MNIST digits, not SFEW faces)"],
    ]
    for split in ("test", "train"):
        pg = _paper_gap(split)
        rows.append([f"average gap, {split}, each criterion on its own networks (Tables 1-2, steps 1-9)",
                     f"{pg:+.1f} points (from its tables; abstract: 'about 10% more')",
                     f"{100 * ut[split]['gap']:+.1f} points, Welch p = {_p(ut[split]['welch_p'])}",
                     _verdict(ut[split]["gap"], ut[split]["welch_p"], pg)])
    for split in ("test", "train"):
        pg = _paper_gap(split)
        rows.append([f"average gap, {split}, both criteria on the same network (not in the paper)", "not run (duplicate "
                     "baseline network, text of sec. 2)", f"{100 * pt[split]['gap']:+.1f} points, paired t p = "
                     f"{_p(pt[split]['t_p'])}, Wilcoxon p = {_p(pt[split]['wilcoxon_p'])}",
                     _verdict(pt[split]["gap"], min(pt[split]["t_p"], pt[split]["wilcoxon_p"]), pg)])
    for split in ("test", "train"):
        d9, r9 = P["distinctiveness"][split][-1], P["random"][split][-1]
        od, orr = m["distinctiveness"][split][-1], m["random"][split][-1]
        rows.append([f"{split} accuracy % after {steps} kernels, distinctiveness vs random (Tables 1-2)",
                     f"{d9} vs {r9}", f"{od:.1f} vs {orr:.1f}", holds((od >= orr) == (d9 >= r9))])
        ds, rs = P["distinctiveness"][f"{split}_std"][-1], P["random"][f"{split}_std"][-1]
        rows.append([f"{split} spread over trials after {steps} kernels larger for distinctiveness (sec. 4.1)",
                     f"std {ds} vs {rs}", f"std {sd['distinctiveness'][split]:.1f} vs {sd['random'][split]:.1f}",
                     holds(None if math.isnan(sd["random"][split]) else sd["distinctiveness"][split] > sd["random"][split])])
    return rows


#: a network "trained" when its unpruned train accuracy reaches this (chance is 0.1): at the paper's lr 1e-2
#: some networks never leave chance, and a pruning criterion cannot tell kernels of those apart
TRAINED = 0.5


def trained_rows(parts_a: list[TrialsResult], parts_b: list[TrialsResult], model: str, steps: int) -> list[list[Any]]:
    """The test gaps of :func:`paper_rows` over the trials whose network trained (both comparisons)."""
    a_ok = [p for p in parts_a if p.train_acc["distinctiveness"][0][0] >= TRAINED]
    b_ok = [p for p in parts_b if p.train_acc["random"][0][0] >= TRAINED]
    count = (f"{len(a_ok)} of {len(parts_a)} networks A and {len(b_ok)} of {len(parts_b)} networks B trained "
             f"(unpruned train accuracy >= {100 * TRAINED:.0f}%)")
    pg, rows = _paper_gap("test"), []
    for label, a, b, paired in (("each criterion on its own networks", a_ok, b_ok, False),
                                ("both criteria on the same network", a_ok, a_ok, True)):  # fmt: skip
        claim = f"average gap, test, {label}, trained networks only (not in the paper)"
        if len(a) < 2 or len(b) < 2:
            rows.append([claim, "n/a", f"too few trained networks: {count}", "n/a"])
            continue
        res = _merge({"distinctiveness": a, "random": b}, model, steps)
        t = (paired_tests if paired else unpaired_tests)(res)["test"]
        p = min(t["t_p"], t["wilcoxon_p"]) if paired else t["welch_p"]
        tests = (f"paired t p = {_p(t['t_p'])}, Wilcoxon p = {_p(t['wilcoxon_p'])}" if paired
                 else f"Welch p = {_p(t['welch_p'])}")  # fmt: skip
        rows.append([claim, f"{pg:+.1f} points", f"{100 * t['gap']:+.1f} points, {tests}; {count}", _verdict(t["gap"], p, pg)])
    return rows


def _paper_run(out: Path, *, quick: bool, seed: int, device, model: str, trials: int, steps: int, epochs: int, lr: float,
               weight_decay: float, batch_size: int, n_train: int, n_test: int) -> Path:  # fmt: skip
    """Every trial: fresh draws of the data, network A pruned by both criteria (paired), network B by random."""
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if quick:
        trials, steps, epochs, n_train, n_test = 2, 2, 1, 64, 32
    train_all, test_all = load_dataset("mnist5k", "train"), load_dataset("mnist5k", "test")
    kw = {"steps": steps, "epochs": epochs, "lr": lr, "weight_decay": weight_decay, "batch_size": batch_size,
          "device": device, "progress": False}  # fmt: skip
    parts_a, parts_b = [], []
    for t in range(trials):
        s = seed + t
        tr, te = subset(train_all, n_train, seed=s), subset(test_all, n_test, seed=s)
        parts_a.append(pruning_trials(model, tr, te, criteria=("distinctiveness", "random"), trials=1, seed=s, **kw))
        parts_b.append(pruning_trials(model, tr, te, criteria=("random",), trials=1, seed=s + OTHER, **kw))
        done = _merge({"distinctiveness": parts_a, "random": parts_b}, model, steps)
        done.meta["complete"] = False  # the finished trials so far
        done.save(out / "paper_trials.json")
    paired = _merge({"distinctiveness": parts_a, "random": parts_a}, model, steps)
    alone = _merge({"distinctiveness": parts_a, "random": parts_b}, model, steps)
    for res, name in ((paired, "paired_trials"), (alone, "paper_trials")):
        res.meta.update(seconds=time.perf_counter() - t0, complete=True)
        res.save(out / f"{name}.json")
    save_figure(alone.plot(), out / "paper_trials.png")
    save_figure(paired.plot(), out / "paired_trials.png")
    seconds = time.perf_counter() - t0
    settings = {"settings": "paper", "quick": quick, "model": model, "trials": trials, "kernels pruned": steps,
                "optimizer": f"adam, lr {lr:g}, weight decay {weight_decay:g}, batch {batch_size}", "epochs": epochs,
                "data per trial": f"{n_train} training / {n_test} test images of mnist5k, drawn with seed {seed} + t",
                "network seeds": f"A: {seed} + t (both criteria), B: {seed} + t + {OTHER} (random)",
                "activation vectors and train accuracy": f"all {n_train} training images", "run time (s)": round(seconds)}  # fmt: skip
    cols = ["", *[str(i) for i in range(steps + 1)]]
    rows = paper_rows(paired, alone, steps) + trained_rows(parts_a, parts_b, model, steps)
    findings = [f"{r[0][0].upper()}{r[0][1:]}: {r[2]} (paper: {r[1]}; holds? {r[3]})." for r in rows if "gap, test" in r[0]]
    tables = [comparison_table(rows),
              settings_table(settings),
              significance_table(unpaired_tests(alone), "The paper's comparison: distinctiveness on networks A, random on networks B"),
              significance_table(paired_tests(paired), "Paired: both criteria on networks A"),
              Table(f"Table 1 (paper's comparison): random pruning of networks B, accuracy (%), {trials} trials", cols, alone.table("random")),
              Table(f"Table 2: distinctiveness pruning of networks A, accuracy (%), {trials} trials", cols, paired.table("distinctiveness")),
              Table(f"Paired: random pruning of networks A, accuracy (%), {trials} trials", cols, paired.table("random"))]  # fmt: skip
    write_markdown(out / "paper_comparison.md", tables[:4])
    section = Section(
        key="distinctiveness", title="Distinctiveness pruning of conv kernels, at the paper's settings",
        intro=(f"The paper's training (Adam lr {lr:g}, weight decay {weight_decay:g}, batch {batch_size}, {epochs} epochs) "
               f"and data sizes ({n_train} training / {n_test} test images, drawn afresh for each of {trials} trials from "
               f"mnist5k instead of SFEW), {steps} kernels pruned one at a time. The paper's Tables 1 and 2 start from "
               "different unpruned accuracies (28% and 37%), so each criterion pruned its own network; we report that "
               "comparison (networks A and B) and the paired one (both criteria on network A)."),
        findings=[*findings, f"Run time {seconds:.0f} s ({'quick' if quick else 'full'} paper settings)."],
        tables=tables,
        figures=[Figure("paper_trials.png", "The paper's comparison: distinctiveness on networks A, random on networks B."),
                 Figure("paired_trials.png", "Paired: both criteria on networks A.")],
        order=20,
    )
    return write_report(out, [section])


def _merge(sources: dict[str, list[TrialsResult]], model: str, steps: int) -> TrialsResult:
    """One TrialsResult whose criterion ``c`` comes from the single-trial results ``sources[c]`` (trial order kept)."""
    first = next(iter(sources.values()))
    res = TrialsResult(meta={**first[0].meta, "trial_seeds": {c: [p.meta["seed"] for p in ps] for c, ps in sources.items()}},
                       model=model, criteria=list(sources), trials=len(first), steps=steps,
                       train_acc={c: [p.train_acc[c][0] for p in ps] for c, ps in sources.items()},
                       test_acc={c: [p.test_acc[c][0] for p in ps] for c, ps in sources.items()},
                       removed={c: [p.removed[c][0] for p in ps] for c, ps in sources.items()})  # fmt: skip
    _gaps(res, res.criteria, steps)
    return res
