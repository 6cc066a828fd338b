"""``compress``: a smaller, faster model with an accuracy guarantee measured on data it never chose with.

The plan, cheapest first (:mod:`.stages`): dead kernels (the output is unchanged), merges of
near-duplicate kernels (nearly unchanged), trivial residual blocks, then channels by a criterion,
many per step with scores refreshed every step (:mod:`.pruning.schedule`); ``criterion="auto"``
runs every criterion from the same point and keeps, among those that reach the target, the best
validation metric (without a target, the one that goes furthest within the budget). It stops at
``target_macs`` (a fraction of the original MACs) or where the validation metric would drop more
than ``max_drop``, whichever comes first; optional fine-tuning
(the toolkit's ``fit``, a short cosine schedule) follows. Then the result is **verified on the test
split**, which no choice has seen, beside Torch-Pruning's own pruner (group L1 and group Taylor) and
random pruning at the same MACs with the same fine-tuning.

Data: ``data`` trains (fine-tuning) and calibrates (scores: a seeded subset of ``calibration``
images); ``val`` chooses (every stop, every undo, the criterion); ``test`` only reports. Given one
data set, a seeded 60/20/20 split makes all three; which images served what is in ``result.data``.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..core.batches import first_input, resolve_device
from ..core.cost import count_macs, measure_latency
from ..core.distributed import is_main
from ..core.graph import Traced
from ..core.hooks import copy_of, preserved
from ..core.layers import LayerSpec, called_by_default, resolve_layers
from ..core.metrics import Metric, coarse, get_metric, no_better_than_chance, output_param
from ..core.observe import resolve_observe
from ..core.progress import progress_bar
from ..core.results import Result, make_meta
from ..data import majority_rate, split, subset
from ..models import append_surgery
from ..training import evaluate, fit
from .baselines import BASELINES, torch_pruning_baseline
from .pruning.schedule import Shrinker, kernel_ranking
from .pruning.surgeon import FOLDED, OUTPUT_LAYERS, SURGERY_KIND, in_torch_pruning, kernels
from .removal import remove_trivial
from .stages import merge_duplicates, remove_dead

__all__ = ["CompressResult", "compress", "CRITERIA", "AUTO"]

CRITERIA = ("distinctiveness", "taylor", "l1", "fpgm", "random")
AUTO = ("distinctiveness", "taylor", "l1", "fpgm")


@dataclasses.dataclass(eq=False)
class CompressResult(Result):
    """What ``compress`` removed, how it chose, and what it verified.

    Attributes:
        data: images used for what (``train``, ``calibration``, ``validation``, ``test``, ``how``).
        criterion: the channel criterion used (``candidates``: each one's outcome under ``auto``).
        original / final: ``{"params", "macs", "val", "test", "widths"}``; ``final`` adds ``macs_fraction``.
        stages: one record per stage (``dead``, ``merge``, ``blocks``, ``channels``, ``finetune``).
        steps: the channel steps kept (kernels, removed per conv with the coupled ones, MACs, val).
        stopped: why the channel stage stopped. guarantee: ``max_drop``, the drop on val and on test,
            and whether it holds on test. baselines: Torch-Pruning and random at the same MACs.
        curves: method -> ``[[macs, test metric], ...]`` as pruning went (for the plot).
        model: the compressed model (not written to JSON; ``save_checkpoint`` it).
    """

    criterion: str = ""
    candidates: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    metric: str = "accuracy"
    data: dict[str, Any] = dataclasses.field(default_factory=dict)
    original: dict[str, Any] = dataclasses.field(default_factory=dict)
    final: dict[str, Any] = dataclasses.field(default_factory=dict)
    stages: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    steps: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    stopped: str = ""
    guarantee: dict[str, Any] = dataclasses.field(default_factory=dict)
    baselines: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    curves: dict[str, list[list[float]]] = dataclasses.field(default_factory=dict)
    model: Any = dataclasses.field(default=None, metadata={"skip": True}, repr=False, compare=False)

    def table(self) -> list[list[Any]]:
        """Rows ``[method, params, MACs, % of original MACs, test metric, latency ms]`` (latency: a timing, in meta)."""
        lat = self.meta.get("latency_ms", {})
        rows = [["original", self.original["params"], self.original["macs"], 100.0, self.original["test"],
                 lat.get("original")]]  # fmt: skip
        rows.append([f"compress ({self.criterion})", self.final["params"], self.final["macs"],
                     100 * self.final["macs_fraction"], self.final["test"], lat.get("compress")])  # fmt: skip
        for b in self.baselines:
            rows.append([b["method"], b["params"], b["macs"], 100 * b["macs"] / self.original["macs"], b["test"],
                         lat.get(b["method"])])  # fmt: skip
        return rows

    def headline(self) -> list[str]:
        g = self.guarantee
        lines = [f"{self.original['macs'] / 1e6:.2f} M -> {self.final['macs'] / 1e6:.2f} M MACs "
                 f"({100 * self.final['macs_fraction']:.1f}% left), params {self.original['params']:,} -> "
                 f"{self.final['params']:,}; {self.metric} on test {self.original['test']:.4f} -> {self.final['test']:.4f}"]
        if g["max_drop"] is None:
            lines.append(f"no metric budget (the target alone stopped it): val drop {g['val_drop']:+.4f}, "
                         f"test drop {g['test_drop']:+.4f}")
        else:
            lines.append(f"guarantee (drop <= {g['max_drop']:g} on validation data): val drop {g['val_drop']:+.4f}, test "
                         f"drop {g['test_drop']:+.4f} ({'holds' if g['holds_on_test'] else 'does not hold'} on the test split)")
        if g.get("caveat"):
            lines.append(f"note: the guarantee is {g['caveat']}")
        if g.get("warning"):
            lines.insert(0, f"warning: {g['warning']}")
        if self.data.get("not_called"):
            lines.append(f"left as they are: {len(self.data['not_called'])} conv layer(s) a forward pass in eval mode "
                         f"never calls (heads used in training only): {', '.join(self.data['not_called'])}")
        if self.data.get("output_layers"):
            lines.append(f"left as they are: {OUTPUT_LAYERS}: {', '.join(self.data['output_layers'])}")
        if self.data.get("folded"):
            lines.append(f"{FOLDED}: {', '.join(self.data['folded'])}")
        lines += [f"{s['stage']}: {s['note']}" for s in self.stages]
        lines += [f"{b['method']} at the same MACs: test {b['test']:.4f}" for b in self.baselines]
        lines += [f"{method} at the same MACs: not measured, Torch-Pruning failed ({why})"
                  for method, why in self.data.get("baselines_failed", {}).items()]
        return lines

    def plot(self):
        """Test metric against MACs for every method (as each pruned), the original, and the guarantee."""
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7.0, 4.2))
        for name, pts in self.curves.items():
            if pts:
                ax.plot([p[0] / 1e6 for p in pts], [p[1] for p in pts], "o-" if "compress" in name else ".--",
                        label=name, ms=4)  # fmt: skip
        ax.scatter([self.original["macs"] / 1e6], [self.original["test"]], marker="*", s=120, color="black",
                   label="original", zorder=3)  # fmt: skip
        ax.scatter([self.final["macs"] / 1e6], [self.final["test"]], marker="s", s=60, color="tab:red",
                   label=f"compressed ({self.criterion})", zorder=3)  # fmt: skip
        if self.guarantee.get("max_drop") is not None:
            ax.axhline(self.original["test"] - self.guarantee["max_drop"], color="gray", ls=":", lw=1,
                       label=f"original - {self.guarantee['max_drop']:g}")  # fmt: skip
        ax.set_xlabel("MACs per image (millions)")
        ax.set_ylabel(f"{self.metric} on the test split")
        ax.set_title("compress against Torch-Pruning and random, same MACs (test split)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
        fig.tight_layout()
        return fig


def _splits(data, val, test, calibration: int, seed: int) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
    if isinstance(data, DataLoader):
        data = data.dataset
    if not isinstance(data, Dataset) or len(data) < 10:  # type: ignore[arg-type]
        raise ValueError("compress needs a Dataset (or DataLoader) of at least 10 (input, label) pairs")
    how = []
    if test is None:
        data, test = split(data, max(1, len(data) // 5), seed=seed)  # type: ignore[arg-type]
        how.append(f"test: {len(test)} images held out at random (seed {seed}), used only to report")
    else:
        how.append(f"test: the given {len(test)} images, used only to report")
    if val is None:
        data, val = split(data, max(1, len(data) // 4), seed=seed + 1)  # type: ignore[arg-type]
        how.append(f"validation: {len(val)} images held out at random (seed {seed + 1}), used for every choice")
    else:
        how.append(f"validation: the given {len(val)} images, used for every choice")
    calib = subset(data, calibration, seed=seed)
    how.append(f"train: {len(data)} images for fine-tuning; calibration: {len(calib)} of them for the scores")
    return data, calib, val, test, {"train": len(data), "calibration": len(calib), "validation": len(val),
                                    "test": len(test), "how": "; ".join(how)}  # fmt: skip


class _Run:
    """The data, the metric and the evaluations every stage shares."""

    def __init__(self, model, metric, batch_size, device, seed, train, calib, val, test, finetune):
        self.model, self.metric, self.batch_size, self.device, self.seed = model, metric, batch_size, device, seed
        m = get_metric(metric)
        self.name, self.output = m.name, m.output  # the metric's name (records) and the model output it reads
        self.train, self.calib, self.val, self.test, self.finetune = train, calib, val, test, finetune

    def on(self, model: nn.Module, data) -> float:
        return evaluate(model, data, self.metric, batch_size=self.batch_size, device=self.device, progress=False)

    def tune(self, model: nn.Module, epochs: int) -> None:
        if epochs:
            fit(model, self.train, epochs=epochs, lr=self.finetune["lr"], batch_size=self.finetune["batch_size"],
                schedule="cosine", metric=self.metric, seed=self.seed, device=self.device, progress=False)  # fmt: skip

    def describe(self, model: nn.Module, example) -> dict[str, Any]:
        return {"params": sum(p.numel() for p in model.parameters()), "macs": sum(count_macs(model, example).values()),
                "val": self.on(model, self.val), "test": self.on(model, self.test), "widths": kernels(model)}  # fmt: skip


def _flush(sh: Shrinker) -> None:
    """Record the kernels removed so far as a surgery step (so the checkpoint rebuilds them)."""
    if sh.surgeon.removals:
        append_surgery(sh.model, {"kind": SURGERY_KIND, "input_shape": list(sh.example.shape),
                                  "removals": [list(r) for r in sh.surgeon.removals], **output_param(sh.surgeon.output)})  # fmt: skip
        sh.surgeon.removals = []


def _blocks(sh: Shrinker, run: _Run, base: float, max_drop: float | None) -> tuple[Shrinker, dict[str, Any]]:
    """Remove trivial residual branches within what is left of the budget (on the validation data)."""
    from ..core.structure import residual_blocks

    if not residual_blocks(sh.model):
        return sh, {"stage": "blocks", "kernels": 0, "note": "no residual block in torchvision's convention to remove"}
    spent = base - run.on(sh.model, run.val)
    left = 0.0 if max_drop is None else max(0.0, max_drop - spent)
    _flush(sh)
    r = remove_trivial(sh.model, run.val, tolerance=left, metric=run.metric, batch_size=run.batch_size,
                       measure=False, device=run.device, progress=False)  # fmt: skip
    if not r.removed:
        return sh, {"stage": "blocks", "kernels": 0, "note": f"no branch removable within {left:.4f} of the metric"}
    layers = [n for n in sh.layers if n in kernels(r.model)]
    new = Shrinker(r.model, sh.example, layers, sh.macs0, run.output)
    return new, {"stage": "blocks", "kernels": 0, "removed_blocks": r.removed,
                 "note": f"{len(r.removed)} residual branch(es) removed: {', '.join(r.removed)}"}  # fmt: skip


def _channels(sh: Shrinker, run: _Run, criteria: list[str], *, base, target, max_drop, step_fraction, observe,
              center) -> tuple[Shrinker, str, dict[str, Any], dict[str, list[list[float]]]]:  # fmt: skip
    """Run every candidate criterion from the same point; keep the best (see :func:`_best`)."""
    _flush(sh)
    outcomes, shrinkers, curves = {}, {}, {}
    for crit in criteria:
        cand = Shrinker(copy.deepcopy(sh.model), sh.example, sh.layers, sh.macs0, run.output)
        gen = torch.Generator().manual_seed(run.seed)
        curve = curves.setdefault(crit, [])

        def score(s: Shrinker, crit=crit, gen=gen) -> dict[str, torch.Tensor]:
            layers = [n for n in s.layers if s.surgeon.can_remove(n)]
            return kernel_ranking(s.surgeon, layers, crit, run.calib, observe=observe, center=center, gen=gen,
                                  batch_size=run.batch_size, device=run.device, output=run.output)  # fmt: skip

        stopped = cand.run(score, lambda m: run.on(m, run.val), target=target, base=base, max_drop=max_drop,
                           step_fraction=step_fraction, on_step=lambda m, macs, c=curve: c.append([macs, run.on(m, run.test)]))  # fmt: skip
        macs = cand.macs()
        outcomes[crit] = {"macs_fraction": macs / sh.macs0, "val": run.on(cand.model, run.val), "steps": len(cand.steps),
                          "stopped": stopped}  # fmt: skip
        shrinkers[crit] = cand
    best = _best(outcomes, target, step_fraction)
    return shrinkers[best], best, outcomes, curves


def _best(outcomes: dict[str, dict[str, Any]], target: float | None, step_fraction: float) -> str:
    """The criterion to keep: among those that reached the target (within a step), the best validation
    metric; without a target (or if none reached it), the one that went furthest, then the best metric."""
    reached = [c for c, o in outcomes.items() if target is not None and o["macs_fraction"] <= target + 1e-9]
    if reached:
        return max(reached, key=lambda c: (outcomes[c]["val"], -outcomes[c]["macs_fraction"]))
    return min(outcomes, key=lambda c: (round(outcomes[c]["macs_fraction"] / step_fraction), -outcomes[c]["val"]))


def _verify_baselines(model, result: CompressResult, run: _Run, example, layers, kinds, finetune_epochs) -> list[dict[str, Any]]:
    """The baselines at the compressed model's MACs; one that Torch-Pruning itself fails on is named in
    ``result.data["baselines_failed"]`` with the error, and the others still run."""
    rows = []
    for kind in kinds:
        method = f"torch-pruning {kind}" if kind != "random" else "random"
        curve = result.curves.setdefault(method, [])
        try:
            pruned = torch_pruning_baseline(model, example, layers, result.final["macs"], kind=kind, calib=run.calib,
                                            batch_size=run.batch_size, seed=run.seed, device=run.device, output=run.output,
                                            on_step=lambda m, macs, c=curve: c.append([macs, run.on(m, run.test)]))  # fmt: skip
        except Exception as e:
            inside = in_torch_pruning(e)
            if inside is None:
                raise
            result.data.setdefault("baselines_failed", {})[method] = inside
            del result.curves[method]
            continue
        run.tune(pruned, finetune_epochs)
        rows.append({"method": method, **run.describe(pruned, example), "model": pruned})
    return rows


def _latencies(models: dict[str, nn.Module], example: torch.Tensor) -> dict[str, float]:
    x = example.expand(64, *example.shape[1:]).contiguous()
    out = {}
    for name, m in models.items():
        with preserved(m):
            m.eval()
            out[name] = 1e3 * measure_latency(m, x, repeats=10, warmup=2)
    return out


def compress(
    model: nn.Module,
    data: Dataset | DataLoader,
    *,
    val: Dataset | DataLoader | None = None,
    test: Dataset | DataLoader | None = None,
    target_macs: float | None = None,
    max_drop: float | None = 0.01,
    criterion: str = "auto",
    finetune_epochs: int = 0,
    finetune_lr: float = 1e-3,
    layers: LayerSpec = None,
    metric: str | Metric = "accuracy",
    stages: tuple[str, ...] | list[str] = ("dead", "merge", "blocks", "channels"),
    merge_angle: float = 10.0,
    step_fraction: float = 0.05,
    calibration: int = 1024,
    baselines: tuple[str, ...] | list[str] = BASELINES,
    batch_size: int = 256,
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool | None = None,
    partial: str | os.PathLike | None = None,
) -> CompressResult:
    """A smaller model within ``max_drop`` of the validation metric (or down to ``target_macs``), verified on test.

    Args:
        model: the trained network (never modified; the result holds a compressed copy).
        data: training data (fine-tuning, and a seeded ``calibration`` subset for the scores); given
            alone, a seeded 60/20/20 split also makes ``val`` and ``test``.
        val: the data every choice is made on. test: the data the result is verified on, only.
        target_macs: stop at this fraction of the original MACs (``None``: only the budget stops).
        max_drop: the largest drop of the validation metric allowed (``None``: only the target stops).
        criterion: ``"auto"`` (each of distinctiveness, Taylor, L1, FPGM from the same point; among those
            that reach ``target_macs``, the best validation metric; otherwise the one that goes furthest
            within the budget, then the best metric) or one of :data:`CRITERIA`.
        finetune_epochs: fine-tuning after pruning (Adam, ``finetune_lr``, cosine schedule); the
            baselines get the same.
        stages: the plan's stages to run (see :mod:`.stages`).
        merge_angle: the mean-centered angle (degrees) under which two kernels are merged.
        step_fraction: the share of the original MACs a channel step removes (halved on a failed step).
        baselines: Torch-Pruning's pruners to compare at the same MACs (``"l1"``, ``"taylor"``, ``"random"``).
        metric: ``"accuracy"``, ``"dice"`` or a Metric; for a model returning a dict or tuple, one that
            names the output it reads (``get_metric("accuracy", output="logits")``), which the Taylor
            gradients read too.

    Example:
        >>> import cnn_redundancy as cr
        >>> from cnn_redundancy.testing import TinyCNN, random_images
        >>> r = compress(TinyCNN().eval(), random_images(120), max_drop=1.0, target_macs=0.6, criterion="l1",
        ...              baselines=(), progress=False)
        >>> r.final["macs_fraction"] <= 0.6 < r.original["macs"]
        True
    """
    _check(target_macs, max_drop, criterion, stages, baselines)
    names = resolve_layers(model, layers)
    train, calib, val, test, how = _splits(data, val, test, calibration, seed)
    dev = resolve_device(device, model)
    example = first_input(calib, model).to(dev)
    names, not_called = called_by_default(model, names, layers, example)  # no kernel of theirs goes
    if not_called:
        how["not_called"] = not_called
    run = _Run(model, metric, batch_size, dev, seed, train, calib, val, test,
               {"lr": finetune_lr, "batch_size": 64})  # fmt: skip
    with preserved(model):
        model.eval()
        res = CompressResult(meta={**make_meta("compress", {"target_macs": target_macs, "max_drop": max_drop,
                                                            "criterion": criterion, "finetune_epochs": finetune_epochs,
                                                            "stages": list(stages), "layers": names,
                                                            **output_param(run.output)},
                                                  seed),
                                   "complete": False}, metric=run.name, data=how)  # fmt: skip
        res.original = run.describe(model, example)
        work = _compress_copy(model, example, names, res, run, target_macs, max_drop, criterion, stages,
                              merge_angle, step_fraction, finetune_epochs, progress, partial)  # fmt: skip
        res.final = {**run.describe(work, example)}
        res.final["macs_fraction"] = res.final["macs"] / res.original["macs"]
        allowed = max_drop if max_drop is not None else float("inf")
        res.guarantee = {"max_drop": max_drop, "val_drop": res.original["val"] - res.final["val"],
                         "test_drop": res.original["test"] - res.final["test"],
                         "holds_on_test": res.original["test"] - res.final["test"] <= allowed}  # fmt: skip
        caveats = [c for c in (coarse(len(run.val), run.name, max_drop, "validation"),
                               coarse(len(run.test), run.name, max_drop, "test")) if c]  # fmt: skip
        if caveats:
            res.guarantee["caveat"] = f"coarse: {'; '.join(caveats)}; more images give a finer guarantee"
        chance = no_better_than_chance(run.name, res.original["val"], majority_rate(run.val),
                                       "keeping its accuracy keeps nothing")  # fmt: skip
        if chance:
            res.guarantee["warning"] = chance
        prunable = [n for n in names if n not in res.data.get("output_layers", [])]  # Torch-Pruning's too
        rows = _verify_baselines(model, res, run, example, prunable, list(baselines), finetune_epochs)
        res.meta["latency_ms"] = _latencies({"original": model, "compress": work, **{r["method"]: r["model"] for r in rows}},
                                            example)  # fmt: skip
        res.baselines = [{k: v for k, v in r.items() if k != "model"} for r in rows]
    res.model, res.meta["complete"] = work.eval(), True
    if partial is not None and is_main():  # under torchrun rank 0 writes
        res.save(partial)
    return res


def _check(target_macs, max_drop, criterion, stages, baselines) -> None:
    if target_macs is None and max_drop is None:
        raise ValueError("give target_macs (a fraction of the original MACs), max_drop (a metric drop), or both")
    if target_macs is not None and (isinstance(target_macs, bool) or not 0 < target_macs < 1):
        raise ValueError(f"target_macs must be a fraction in (0, 1), not {target_macs!r}")
    if max_drop is not None and (isinstance(max_drop, bool) or not 0 <= max_drop <= 1):
        raise ValueError(f"max_drop must be in [0, 1], not {max_drop!r}")
    if criterion != "auto" and criterion not in CRITERIA:
        raise ValueError(f"criterion must be 'auto' or one of {', '.join(CRITERIA)}, not {criterion!r}")
    bad = [s for s in stages if s not in ("dead", "merge", "blocks", "channels")]
    bad += [b for b in baselines if b not in BASELINES]
    if bad:
        raise ValueError(f"unknown stages or baselines {bad}; stages: dead, merge, blocks, channels; baselines: "
                         f"{', '.join(BASELINES)}")


def _compress_copy(model, example, names, res: CompressResult, run: _Run, target_macs, max_drop, criterion, stages,
                   merge_angle, step_fraction, finetune_epochs, progress, partial) -> nn.Module:  # fmt: skip
    """The plan's stages on a copy of ``model``; fills ``res.stages``, ``steps``, ``curves``; returns the copy."""

    base = res.original["val"]
    sh = Shrinker(copy_of(model, "compress"), example, names, res.original["macs"], run.output)
    if sh.surgeon.folded:
        res.data["folded"] = sh.surgeon.folded
    outputs = sh.surgeon.output_layers(names)
    if outputs:
        res.data["output_layers"] = outputs
    observe = resolve_observe(sh.model, names, traced=Traced.maybe(sh.model))
    common = {"batch_size": run.batch_size, "device": run.device}
    todo = [s for s in ("dead", "merge", "blocks", "channels") if s in stages] + (["finetune"] if finetune_epochs else [])
    with progress_bar(len(todo), "compress", enabled=progress, unit="stage") as bar:
        for stage in todo:
            bar.set_postfix_str(stage)
            if stage == "dead":
                rec = remove_dead(sh, run.calib, observe, output=run.output, **common)
            elif stage == "merge":
                rec = merge_duplicates(sh, run.calib, observe, lambda m: run.on(m, run.val), base=base,
                                       budget=max_drop, angle=merge_angle, **common)  # fmt: skip
            elif stage == "blocks":
                sh, rec = _blocks(sh, run, base, max_drop)
                observe = {n: o for n, o in observe.items() if n in sh.layers}
            elif stage == "channels":
                crits = list(AUTO) if criterion == "auto" else [criterion]
                sh, res.criterion, res.candidates, curves = _channels(
                    sh, run, crits, base=base, target=target_macs, max_drop=max_drop, step_fraction=step_fraction,
                    observe=observe, center="mean")  # fmt: skip
                res.curves[f"compress ({res.criterion})"] = curves[res.criterion]
                res.steps, res.stopped = sh.steps, res.candidates[res.criterion]["stopped"]
                rec = {"stage": "channels", "kernels": sum(s["kernels"] for s in sh.steps),
                       "note": f"criterion {res.criterion}; {len(sh.steps)} steps; {res.stopped}"}  # fmt: skip
            else:
                run.tune(sh.model, finetune_epochs)
                rec = {"stage": "finetune", "kernels": 0, "note": f"{finetune_epochs} epochs, cosine schedule"}
            rec["macs"], rec["val"] = sh.macs(), run.on(sh.model, run.val)
            res.stages.append(rec)
            bar.update(1)
            if partial is not None and is_main():
                res.save(partial)
    _flush(sh)
    return sh.model
