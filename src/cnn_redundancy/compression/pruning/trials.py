"""Repeated pruning trials (the paper's Tables 1-2) and a head-to-head comparison of criteria.

- :func:`pruning_trials`: each trial trains a fresh, seeded baseline, then prunes a copy of it
  kernel by kernel with every criterion, recording train and test accuracy after each step.
- :func:`head_to_head`: one trained model, every criterion, test accuracy (with and without a
  short fine-tuning) at the same MACs reductions, with parameters, MACs and measured CPU latency.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from ...core.cost import count_macs_params, cpu_latency
from ...core.progress import progress_bar
from ...core.results import Partials, Result, make_meta
from ...models import get_model
from ...training import evaluate, fit
from . import CRITERIA, prune

__all__ = ["TrialsResult", "HeadToHeadResult", "pruning_trials", "head_to_head"]


def _mean_std(rows: list[list[float]]) -> tuple[list[float], list[float]]:
    cols = list(zip(*rows))
    means = [statistics.fmean(c) for c in cols]
    stds = [statistics.stdev(c) if len(c) > 1 else 0.0 for c in cols]
    return means, stds


@dataclasses.dataclass(eq=False)
class TrialsResult(Result):
    """Accuracy after each pruning step, per criterion and trial.

    Attributes:
        train_acc, test_acc: ``criterion -> [trial][step]`` accuracy in [0, 1] (step 0: the baseline).
        gap: ``criterion -> {"train", "test"}`` mean accuracy of the first criterion minus this one's,
            averaged over steps 1..N and trials (the paper's "average gap", in accuracy points / 100).
        removed: ``criterion -> [trial] -> [(layer, original kernel)]`` in removal order.
        The wall-clock time of the whole run is ``meta["seconds"]``.
    """

    model: str = ""
    criteria: list[str] = dataclasses.field(default_factory=list)
    trials: int = 0
    steps: int = 0
    train_acc: dict[str, list[list[float]]] = dataclasses.field(default_factory=dict)
    test_acc: dict[str, list[list[float]]] = dataclasses.field(default_factory=dict)
    gap: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
    removed: dict[str, list[list[list[Any]]]] = dataclasses.field(default_factory=dict)
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
    model: str | Callable[[], nn.Module],
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
    device: str | torch.device | None = None,
    progress: bool | None = None,
    partial: str | os.PathLike | None = None,
) -> TrialsResult:
    """Train ``trials`` seeded baselines and prune each step by step with every criterion.

    Args:
        model: a model name of :func:`cnn_redundancy.get_model` (``model_kw`` its arguments), or a
            function returning a fresh, untrained model (each trial trains its own baseline).
        train, test: data sets; accuracy on both is recorded after every step.
        criteria: criteria of :func:`cnn_redundancy.prune`; the first is the reference of ``gap``.
        steps: kernels removed per trial and criterion.
        epochs, lr, weight_decay, batch_size: baseline training (Adam).
        activation_data: data for the activation vectors (default ``train``, as in the paper).
        train_eval: data on which "train accuracy" is measured (default ``train``).
        finetune_epochs: optional fine-tuning after every step (``finetune_lr``).
        seed: trial ``t`` uses ``seed + t`` for initialization, training and the random criterion.
        device: where training, pruning and evaluation run (default: the CPU).
        partial: a JSON path rewritten with the finished (trial, criterion) runs (when 30 s of work have
            passed since the last write, on an error or interrupt, and at the end).

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
    model_name = model if isinstance(model, str) else getattr(model, "__name__", type(model).__name__)
    res = TrialsResult(
        meta=make_meta("pruning-trials", {"model": model_name, "model_kw": kw, "criteria": criteria, "trials": trials,
                                          "steps": steps, "epochs": epochs, "lr": lr, "weight_decay": weight_decay,
                                          "batch_size": batch_size, "rule": rule, "center": center,
                                          "finetune_epochs": finetune_epochs, "finetune_lr": finetune_lr}, seed),
        model=model_name, criteria=criteria, trials=trials, steps=steps,
        train_acc={c: [] for c in criteria}, test_acc={c: [] for c in criteria}, removed={c: [] for c in criteria})
    splits = {"train": train, "train_eval": train_eval if train_eval is not None else train, "test": test,
              "activations": activation_data if activation_data is not None else train}
    prune_kw = {"steps": steps, "layers": layers, "rule": rule, "center": center, "device": device, "progress": False}
    tune = {"epochs": finetune_epochs, "lr": finetune_lr, "batch_size": batch_size}
    res.meta["complete"] = False
    with progress_bar(trials * len(criteria), f"trials {model_name}", enabled=progress, unit="run") as bar, \
            Partials((lambda: res.save(partial)) if partial is not None else None) as partials:  # fmt: skip
        partials.started = True
        for t in range(trials):
            s = seed + t
            torch.manual_seed(s)
            base = get_model(model, **kw) if isinstance(model, str) else model()
            fit(base, train, epochs=epochs, lr=lr, weight_decay=weight_decay, batch_size=batch_size, seed=s,
                device=device, progress=False)
            for crit in criteria:
                tr_acc, te_acc, removed = _pruned_trial(base, crit, s, splits, prune_kw, tune)
                res.train_acc[crit].append(tr_acc)
                res.test_acc[crit].append(te_acc)
                res.removed[crit].append(removed)
                bar.update(1)
                partials.maybe()
        _gaps(res, criteria, steps)
        res.meta["seconds"] = time.perf_counter() - t0
        res.meta["complete"] = True
    return res


def _gaps(res: TrialsResult, criteria: list[str], steps: int) -> None:
    """The paper's average gap of every criterion to the first one."""
    ref = criteria[0]
    for crit in criteria[1:]:
        res.gap[crit] = {
            split: statistics.fmean(a - b for ra, rb in zip(acc[ref], acc[crit]) for a, b in zip(ra[1:], rb[1:]))
            if steps else 0.0
            for split, acc in (("train", res.train_acc), ("test", res.test_acc))
        }


def _pruned_trial(base: nn.Module, crit: str, seed: int, splits: dict, prune_kw: dict, tune: dict):
    """Prune a copy of ``base`` by ``crit``; train and test accuracy before and after every step."""
    tr_acc = [evaluate(base, splits["train_eval"], progress=False)]
    te_acc = [evaluate(base, splits["test"], progress=False)]

    def after(entry: dict[str, Any], model: nn.Module) -> bool:
        if tune["epochs"]:
            fit(model, splits["train"], seed=seed, progress=False, **tune)
        tr_acc.append(evaluate(model, splits["train_eval"], progress=False))
        te_acc.append(evaluate(model, splits["test"], progress=False))
        return False

    pr = prune(base, splits["activations"], criterion=crit, seed=seed, callback=after, **prune_kw)
    return tr_acc, te_acc, [[h["layer"], h["kernel"]] for h in pr.history]


@dataclasses.dataclass(eq=False)
class HeadToHeadResult(Result):
    """Every criterion at the same MACs reductions.

    Attributes:
        baseline: ``{"test_acc", "macs", "params"}`` of the unpruned model.
        rows: one dict per (criterion, target reduction): ``criterion``, ``target``, ``macs_reduction``
            (reached), ``kernels_removed``, ``test_acc``, ``test_acc_finetuned``, ``macs``, ``params``.
        The measured CPU latencies are timings, kept in ``meta["latency_ms"]`` (``"unpruned"`` and
        ``"rows"``, one per row) outside the same-seed comparison: :meth:`latency` reads them.
    """

    model: str = ""
    baseline: dict[str, float] = dataclasses.field(default_factory=dict)
    rows: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    kind = "head-to-head"

    def latency(self) -> tuple[float | None, list[float | None]]:
        """Measured CPU latency (ms) of the unpruned model and of each row's model (``None`` where not measured)."""
        t = self.meta.get("latency_ms", {})
        rows = t.get("rows", [])
        return t.get("unpruned"), [rows[i] if i < len(rows) else None for i in range(len(self.rows))]

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
    device: str | torch.device | None = None,
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
        baseline={"test_acc": evaluate(model, test, progress=False), "macs": macs0, "params": params0})
    res.meta["latency_ms"] = {"unpruned": 1e3 * cpu_latency(model, xb, runs=latency_runs), "rows": []}
    act_data = activation_data if activation_data is not None else train
    removable = sum(m.out_channels - 1 for m in model.modules() if isinstance(m, nn.Conv2d))
    with progress_bar(len(criteria), "head to head", enabled=progress, unit="criterion") as bar:
        for crit in criteria:
            pending = list(targets)

            def after(entry: dict[str, Any], pruned: nn.Module, crit=crit, pending=pending) -> bool:
                red = 1 - entry["macs"] / macs0
                while pending and red >= pending[0]:
                    target = pending.pop(0)
                    snap = copy.deepcopy(pruned)
                    row = {"criterion": crit, "target": target, "macs_reduction": red, "kernels_removed": entry["step"],
                           "test_acc": evaluate(snap, test, progress=False), "macs": entry["macs"], "params": entry["params"]}
                    res.meta["latency_ms"]["rows"].append(1e3 * cpu_latency(snap, xb, runs=latency_runs))
                    if finetune_epochs:
                        fit(snap, train, epochs=finetune_epochs, lr=finetune_lr, seed=seed, progress=False)
                    row["test_acc_finetuned"] = evaluate(snap, test, progress=False)
                    res.rows.append(row)
                return not pending

            prune(model, act_data, criterion=crit, steps=removable, seed=seed, callback=after, example_input=x1,
                  track_macs=True, device=device, progress=False)
            bar.update(1)
    return res
