"""Repeated pruning trials (the paper's Tables 1-2) and a head-to-head comparison of criteria.

- :func:`pruning_trials`: each trial trains a fresh, seeded baseline, then prunes a copy of it
  kernel by kernel with every criterion, recording train and test accuracy after each step.
- :func:`head_to_head`: one trained model, every criterion, test accuracy (with and without a
  short fine-tuning) at the same MACs reductions, with parameters, MACs and measured CPU latency.
"""

from __future__ import annotations

import copy
import dataclasses
import statistics
import time
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from .cost import count_macs_params, cpu_latency
from .models import get_model
from .progress import progress_bar
from .pruning import CRITERIA, prune
from .results import Result, make_meta
from .training import evaluate, fit

__all__ = ["TrialsResult", "HeadToHeadResult", "pruning_trials", "head_to_head", "cpu_latency", "reproduce_distinctiveness"]


def _mean_std(rows: list[list[float]]) -> tuple[list[float], list[float]]:
    cols = list(zip(*rows))
    means = [statistics.fmean(c) for c in cols]
    stds = [statistics.stdev(c) if len(c) > 1 else 0.0 for c in cols]
    return means, stds


@dataclasses.dataclass
class TrialsResult(Result):
    """Accuracy after each pruning step, per criterion and trial.

    Attributes:
        train_acc, test_acc: ``criterion -> [trial][step]`` accuracy in [0, 1] (step 0: the baseline).
        gap: ``criterion -> {"train", "test"}`` mean accuracy of the first criterion minus this one's,
            averaged over steps 1..N and trials (the paper's "average gap", in accuracy points / 100).
        removed: ``criterion -> [trial] -> [(layer, original kernel)]`` in removal order.
        seconds: wall-clock time of the whole run.
    """

    model: str = ""
    criteria: list[str] = dataclasses.field(default_factory=list)
    trials: int = 0
    steps: int = 0
    train_acc: dict[str, list[list[float]]] = dataclasses.field(default_factory=dict)
    test_acc: dict[str, list[list[float]]] = dataclasses.field(default_factory=dict)
    gap: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
    removed: dict[str, list[list[list[Any]]]] = dataclasses.field(default_factory=dict)
    seconds: float = 0.0
    kind = "pruning-trials"

    def table(self, criterion: str) -> list[list[Any]]:
        """The paper's table layout: rows (test mean, test std, train mean, train std) in %, columns steps 0..N."""
        te_m, te_s = _mean_std(self.test_acc[criterion])
        tr_m, tr_s = _mean_std(self.train_acc[criterion])
        return [[label, *[round(100 * v, 1) for v in vals]] for label, vals in
                (("Accuracy on test set", te_m), ("Deviation on test set", te_s),
                 ("Accuracy on training set", tr_m), ("Deviation on training set", tr_s))]

    def plot(self):
        """Mean accuracy (train and test) against kernels pruned, with +-1 std bands, per criterion."""
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
        for ax, split, acc in ((axes[0], "test", self.test_acc), (axes[1], "train", self.train_acc)):
            for crit in self.criteria:
                m, s = _mean_std(acc[crit])
                x = list(range(len(m)))
                ax.plot(x, [100 * v for v in m], "o-", label=crit)
                ax.fill_between(x, [100 * (a - b) for a, b in zip(m, s)], [100 * (a + b) for a, b in zip(m, s)], alpha=0.2)
            ax.set_xlabel("kernels pruned")
            ax.set_title(f"{split} accuracy, {self.trials} trials ({self.model})")
            ax.grid(alpha=0.3)
        axes[0].set_ylabel("accuracy (%)")
        axes[0].legend()
        fig.tight_layout()
        return fig


def pruning_trials(
    model_name: str,
    train: Dataset,
    test: Dataset,
    *,
    criteria: tuple[str, ...] | list[str] = ("distinctiveness", "random"),
    trials: int = 10,
    steps: int = 9,
    model_kw: dict[str, Any] | None = None,
    epochs: int = 3,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    batch_size: int = 64,
    layers=None,
    rule: str = "least-distinct",
    center: str | None = None,
    activation_data: Dataset | None = None,
    train_eval: Dataset | None = None,
    finetune_epochs: int = 0,
    finetune_lr: float = 1e-4,
    seed: int = 0,
    progress: bool | None = None,
) -> TrialsResult:
    """Train ``trials`` seeded baselines and prune each step by step with every criterion.

    Args:
        model_name: a model of :func:`cnn_redundancy.get_model` (``model_kw`` its arguments).
        train, test: data sets; accuracy on both is recorded after every step.
        criteria: criteria of :func:`cnn_redundancy.prune`; the first is the reference of ``gap``.
        steps: kernels removed per trial and criterion.
        epochs, lr, weight_decay, batch_size: baseline training (Adam).
        activation_data: data for the activation vectors (default ``train``, as in the paper).
        train_eval: data on which "train accuracy" is measured (default ``train``).
        finetune_epochs: optional fine-tuning after every step (``finetune_lr``).
        seed: trial ``t`` uses ``seed + t`` for initialization, training and the random criterion.

    Example:
        >>> from cnn_redundancy import load_dataset, subset
        >>> tr, te = subset(load_dataset("mnist5k", "train"), 128), subset(load_dataset("mnist5k", "test"), 64)
        >>> r = pruning_trials("lenet5", tr, te, trials=1, steps=1, epochs=1)
        >>> len(r.test_acc["random"][0])
        2
    """
    criteria = list(criteria)
    unknown = [c for c in criteria if c not in CRITERIA]
    if unknown or not criteria:
        raise ValueError(f"Unknown criteria {unknown}; choose from {', '.join(CRITERIA)}")
    if trials < 1:
        raise ValueError("trials must be >= 1")
    t0 = time.perf_counter()
    kw = dict(model_kw or {})
    res = TrialsResult(
        meta=make_meta("pruning-trials", {"model": model_name, "model_kw": kw, "criteria": criteria, "trials": trials,
                                          "steps": steps, "epochs": epochs, "lr": lr, "weight_decay": weight_decay,
                                          "batch_size": batch_size, "rule": rule, "center": center,
                                          "finetune_epochs": finetune_epochs, "finetune_lr": finetune_lr}, seed),
        model=model_name, criteria=criteria, trials=trials, steps=steps,
        train_acc={c: [] for c in criteria}, test_acc={c: [] for c in criteria}, removed={c: [] for c in criteria})
    act_data = activation_data if activation_data is not None else train
    tr_eval = train_eval if train_eval is not None else train
    bar = progress_bar(trials * len(criteria), f"trials {model_name}", enabled=progress, unit="run")
    try:
        for t in range(trials):
            s = seed + t
            torch.manual_seed(s)
            base = get_model(model_name, **kw)
            fit(base, train, epochs=epochs, lr=lr, weight_decay=weight_decay, batch_size=batch_size, seed=s, progress=False)
            acc0 = (evaluate(base, tr_eval, progress=False), evaluate(base, test, progress=False))
            for crit in criteria:
                tr_acc, te_acc = [acc0[0]], [acc0[1]]

                def after(entry: dict[str, Any], model: nn.Module, tr_acc=tr_acc, te_acc=te_acc, s=s) -> bool:
                    if finetune_epochs:
                        fit(model, train, epochs=finetune_epochs, lr=finetune_lr, batch_size=batch_size, seed=s, progress=False)
                    tr_acc.append(evaluate(model, tr_eval, progress=False))
                    te_acc.append(evaluate(model, test, progress=False))
                    return False

                pr = prune(base, act_data, criterion=crit, steps=steps, layers=layers, rule=rule, center=center,
                           seed=s, callback=after, progress=False)
                res.train_acc[crit].append(tr_acc)
                res.test_acc[crit].append(te_acc)
                res.removed[crit].append([[h["layer"], h["kernel"]] for h in pr.history])
                bar.update(1)
    finally:
        bar.close()
    ref = criteria[0]
    for crit in criteria[1:]:
        res.gap[crit] = {
            split: statistics.fmean(a - b for ra, rb in zip(acc[ref], acc[crit]) for a, b in zip(ra[1:], rb[1:]))
            if steps else 0.0
            for split, acc in (("train", res.train_acc), ("test", res.test_acc))
        }
    res.seconds = time.perf_counter() - t0
    return res


@dataclasses.dataclass
class HeadToHeadResult(Result):
    """Every criterion at the same MACs reductions.

    Attributes:
        baseline: ``{"test_acc", "macs", "params", "latency_ms"}`` of the unpruned model.
        rows: one dict per (criterion, target reduction): ``criterion``, ``target``, ``macs_reduction``
            (reached), ``kernels_removed``, ``test_acc``, ``test_acc_finetuned``, ``macs``, ``params``,
            ``latency_ms``.
    """

    model: str = ""
    baseline: dict[str, float] = dataclasses.field(default_factory=dict)
    rows: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    kind = "head-to-head"

    def plot(self):
        """Test accuracy against MACs reduction per criterion (solid: no fine-tuning; dashed: fine-tuned)."""
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        for crit in dict.fromkeys(r["criterion"] for r in self.rows):
            rows = [r for r in self.rows if r["criterion"] == crit]
            x = [100 * r["macs_reduction"] for r in rows]
            line = ax.plot(x, [100 * r["test_acc"] for r in rows], "o-", label=crit)[0]
            ax.plot(x, [100 * r["test_acc_finetuned"] for r in rows], "s--", color=line.get_color(), alpha=0.7)
        ax.axhline(100 * self.baseline["test_acc"], color="k", lw=0.8, ls=":", label="unpruned")
        ax.set_xlabel("MACs reduction (%)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{self.model}: criteria head to head (dashed: fine-tuned)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        return fig


def head_to_head(
    model: nn.Module,
    train: Dataset,
    test: Dataset,
    *,
    criteria: tuple[str, ...] | list[str] = CRITERIA,
    reductions: tuple[float, ...] = (0.1, 0.25, 0.5),
    finetune_epochs: int = 1,
    finetune_lr: float = 1e-4,
    activation_data: Dataset | None = None,
    latency_batch: int = 64,
    latency_runs: int = 20,
    seed: int = 0,
    name: str = "",
    progress: bool | None = None,
) -> HeadToHeadResult:
    """Prune ``model`` with every criterion until each MACs reduction is reached; measure the copies.

    The first step count at which the MACs reduction reaches a target gives that target's model;
    it is evaluated as is and after ``finetune_epochs`` of fine-tuning (on a copy).
    """
    if not reductions or not all(0 < r < 1 for r in reductions):
        raise ValueError(f"reductions must be fractions in (0, 1), not {reductions}")
    targets = sorted(reductions)
    x1 = train[0][0][None]
    xb = torch.stack([train[i][0] for i in range(min(latency_batch, len(train)))])
    macs0, params0 = count_macs_params(model, x1)
    res = HeadToHeadResult(
        meta=make_meta("head-to-head", {"criteria": list(criteria), "reductions": targets, "finetune_epochs": finetune_epochs,
                                        "finetune_lr": finetune_lr, "latency_batch": len(xb), "latency_runs": latency_runs}, seed),
        model=name or type(model).__name__,
        baseline={"test_acc": evaluate(model, test, progress=False), "macs": macs0, "params": params0,
                  "latency_ms": 1e3 * cpu_latency(model, xb, runs=latency_runs)})
    act_data = activation_data if activation_data is not None else train
    removable = sum(m.out_channels - 1 for m in model.modules() if isinstance(m, nn.Conv2d))
    bar = progress_bar(len(criteria), "head to head", enabled=progress, unit="criterion")
    try:
        for crit in criteria:
            pending = list(targets)

            def after(entry: dict[str, Any], pruned: nn.Module, crit=crit, pending=pending) -> bool:
                red = 1 - entry["macs"] / macs0
                while pending and red >= pending[0]:
                    target = pending.pop(0)
                    snap = copy.deepcopy(pruned)
                    row = {"criterion": crit, "target": target, "macs_reduction": red, "kernels_removed": entry["step"],
                           "test_acc": evaluate(snap, test, progress=False), "macs": entry["macs"], "params": entry["params"],
                           "latency_ms": 1e3 * cpu_latency(snap, xb, runs=latency_runs)}
                    if finetune_epochs:
                        fit(snap, train, epochs=finetune_epochs, lr=finetune_lr, seed=seed, progress=False)
                    row["test_acc_finetuned"] = evaluate(snap, test, progress=False)
                    res.rows.append(row)
                return not pending

            prune(model, act_data, criterion=crit, steps=removable, seed=seed, callback=after, example_inputs=x1,
                  track_macs=True, progress=False)
            bar.update(1)
    finally:
        bar.close()
    return res


def _h2h_table(h: HeadToHeadResult) -> list[list[Any]]:
    b = h.baseline
    rows = [["(unpruned)", "-", "0.0", f"{100 * b['test_acc']:.1f}", "-", b["params"], b["macs"], f"{b['latency_ms']:.2f}"]]
    for r in h.rows:
        rows.append([r["criterion"], f"{100 * r['target']:.0f}%", f"{100 * r['macs_reduction']:.1f}", f"{100 * r['test_acc']:.1f}",
                     f"{100 * r['test_acc_finetuned']:.1f}", r["params"], r["macs"], f"{r['latency_ms']:.2f}"])
    return rows


def reproduce_distinctiveness(
    out,
    *,
    quick: bool = False,
    model: str = "small_cnn_mnist",
    trials: int = 10,
    steps: int = 9,
    epochs: int = 3,
    head_to_head_models: tuple[str, ...] = ("lenet5", "small_cnn_mnist"),
    compare: bool = True,
    seed: int = 0,
):
    """The paper's experiment on mnist5k plus a criteria head-to-head; writes JSON, figures, a report section.

    Settings (documented in ``docs/distinctiveness.md``): ``small_cnn_mnist`` (the paper's two conv
    layers of nine 9x9 kernels, max pool 2 for 28x28 inputs), Adam lr 1e-3, batch 64, 3 epochs per
    trial on the 4,000 training images, 10 trials, 9 kernels pruned (half of the 18); activation
    vectors and train accuracy over a fixed 1,000-image subset of the training set. ``quick``: 2 trials, 2 steps, 1 epoch, 512/256
    images, head-to-head on lenet5 with 2 criteria at 25% fewer MACs. ``compare=False`` skips the head-to-head.

    Returns:
        The path of ``report.html``.
    """
    from pathlib import Path

    from .data import load_dataset, subset
    from .distinctiveness import distinctiveness
    from .report import Figure, Section, Table, save_figure, write_report

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
                         activation_data=sub, train_eval=sub)
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
    fit(base, train, epochs=epochs, seed=seed, progress=False)
    dres = distinctiveness(base, train, center=None)
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
            fit(m, train, epochs=epochs, seed=seed, progress=False)
            h = head_to_head(m, train, test, criteria=crits, seed=seed, name=mname, reductions=reductions,
                             latency_runs=latency_runs,
                             activation_data=sub)
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
