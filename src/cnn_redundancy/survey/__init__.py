"""``analyze``: the user's question about their own model, answered in one step.

Which parts of this CNN are redundant, why, and how much can be removed safely? :func:`analyze`
runs every lens that applies to the model (each through the registry of analyses; a lens that does
not apply says why in one line), files their answers per kernel, per layer, per residual block and
across depth, measures whether the lenses agree, and estimates how many MACs could be removed
within a metric drop on validation data no lens has seen. ``result.save_report(out)`` writes the
HTML report that opens with the answer.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..core.batches import resolve_device
from ..core.cost import count_macs
from ..core.distributed import broadcast_object, is_main
from ..core.graph import Traced
from ..core.layers import LayerSpec, called_by_default, resolve_layers
from ..core.metrics import Metric, coarse, get_metric, output_param
from ..core.observe import resolve_observe
from ..core.progress import progress_bar
from ..core.results import Result, make_meta
from ..core.structure import residual_adds
from ..data import split, subset
from ..training import input_shift
from .estimate import SCORE_SIGNS, consensus_order, removable_macs
from .lenses import HIGH_NCC, LENSES, NEAR_ANGLE, RUNNERS, SHUFFLE_COSINE, Context
from .plan import impulse_passes, make_plan, time_one_pass

__all__ = ["AnalysisResult", "Interrupted", "analyze", "LENSES"]


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`analyze`: ``result`` holds what the lenses that finished found (``meta["complete"]``
    false; the removable-MACs estimate only where it was made before the interrupt), ready for
    ``result.save_report(out)``."""

    def __init__(self, result: AnalysisResult) -> None:
        super().__init__("interrupted")
        self.result = result


@dataclasses.dataclass(eq=False)
class AnalysisResult(Result):
    """Everything ``analyze`` found (plain data; see the module docstring of :mod:`.lenses` for the fields).

    Attributes:
        model: the model's name. layers: conv layers in forward order. kernels / macs: per layer.
        data: how many images were used for what (``analysis``, ``validation``) and how they were chosen;
            ``input_shift``: how they reach the first BatchNorm against its training statistics
            (:func:`cnn_redundancy.input_shift`; ``far``: the answer opens with a warning).
        lenses: lens -> ``{"status": "ran" | "skipped" | "failed", "note", "sampled", "passes"}``
            (``passes``: the planned cost in plain inference passes; measured times are in ``meta``).
        per_kernel: layer -> field -> one value per kernel. per_layer: layer -> measure -> value.
        blocks: residual block -> ``{"drop", "trivial", "convs"}``. depth: CKA matrix, impulse NCC
            across consecutive layers, layer-skipping labels.
        agreement: the lenses' per-kernel rank correlations: ``{"lenses", "matrix", "per_layer"}``.
        answer: the headline numbers (dead, near-duplicate kernels, trivial layers and blocks, the
            removable-MACs estimate with how it was made).
        results: each lens's own Result (not written to JSON; each is saved beside it by ``save_report``).
    """

    model: str = ""
    layers: list[str] = dataclasses.field(default_factory=list)
    kernels: dict[str, int] = dataclasses.field(default_factory=dict)
    macs: dict[str, int] = dataclasses.field(default_factory=dict)
    data: dict[str, Any] = dataclasses.field(default_factory=dict)
    lenses: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    per_kernel: dict[str, dict[str, list]] = dataclasses.field(default_factory=dict)
    per_layer: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
    blocks: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    depth: dict[str, Any] = dataclasses.field(default_factory=dict)
    agreement: dict[str, Any] = dataclasses.field(default_factory=dict)
    answer: dict[str, Any] = dataclasses.field(default_factory=dict)
    results: dict[str, Any] = dataclasses.field(default_factory=dict, metadata={"skip": True}, repr=False, compare=False)

    def headline(self) -> list[str]:
        """The answer in a few lines."""
        from .report import answer_lines

        return answer_lines(self)

    def plot(self):
        """The layer x lens map: each lens's fraction of redundant kernels (and the ablation drop) per layer."""
        from .report import lens_map

        return lens_map(self)

    def save_report(self, out: str | os.PathLike) -> Path:
        """Write ``analysis.json``, every figure, each lens's JSON and ``report.html`` into ``out``."""
        from .report import write_analysis_report

        return write_analysis_report(self, Path(out))


def _spearman(a: list[float], b: list[float]) -> float:
    from scipy.stats import spearmanr

    pairs = [(x, y) for x, y in zip(a, b) if x is not None and y is not None and not (math.isnan(x) or math.isnan(y))]
    if len(pairs) < 4 or len({p[0] for p in pairs}) < 2 or len({p[1] for p in pairs}) < 2:
        return math.nan
    return float(spearmanr(*zip(*pairs)).statistic)


def agreement(per_kernel: dict[str, dict[str, list]]) -> dict[str, Any]:
    """Per layer, the Spearman correlation between the lenses' redundancy scores (oriented so that a
    positive value means the two lenses call the same kernels redundant), and their mean over layers."""
    fields = [f for f in SCORE_SIGNS if any(f in v for v in per_kernel.values())]
    per_layer, sums, counts = {}, {}, {}
    for layer, values in per_kernel.items():
        m = []
        for f in fields:
            row = []
            for g in fields:
                if f not in values or g not in values:
                    row.append(math.nan)
                    continue
                r = _spearman([SCORE_SIGNS[f] * (v if v is not None else math.nan) for v in values[f]],
                              [SCORE_SIGNS[g] * (v if v is not None else math.nan) for v in values[g]])  # fmt: skip
                row.append(r)
                if not math.isnan(r):
                    sums[(f, g)] = sums.get((f, g), 0.0) + r
                    counts[(f, g)] = counts.get((f, g), 0) + 1
            m.append(row)
        per_layer[layer] = m
    mean = [[sums[(f, g)] / counts[(f, g)] if counts.get((f, g)) else math.nan for g in fields] for f in fields]
    return {"lenses": fields, "matrix": mean, "per_layer": per_layer}


def _answer(res: AnalysisResult, estimate: dict[str, Any] | None, max_drop: float) -> dict[str, Any]:
    total = sum(res.kernels.values())
    pk = res.per_kernel

    def count(field: str, test) -> int | None:
        if not any(field in v for v in pk.values()):
            return None
        return sum(1 for layer, v in pk.items() if field in v for i, x in enumerate(v[field])
                   if not v.get("dead", [False] * len(v[field]))[i] and x is not None and test(x))  # fmt: skip

    ablated = {layer: v["ablation_drop"] for layer, v in res.per_layer.items() if "ablation_drop" in v}
    return {
        "kernels": total,
        "dead": sum(sum(v["dead"]) for v in pk.values()) if any("dead" in v for v in pk.values()) else None,
        "constant": sum(sum(v["constant"]) - sum(v["dead"]) for v in pk.values()) if any("dead" in v for v in pk.values()) else None,
        "near_duplicate_activations": count("angle", lambda a: not math.isnan(a) and a < NEAR_ANGLE),
        "near_duplicate_impulse": count("ncc", lambda c: not math.isnan(c) and c >= HIGH_NCC),
        "trivial_layers": [layer for layer, d in ablated.items() if d <= max_drop] if ablated else None,
        "layers_ablated": len(ablated),
        "trivial_blocks": [b for b, v in res.blocks.items() if v["trivial"]] if res.blocks else None,
        "blocks": len(res.blocks),
        "removable": estimate,
        "thresholds": {"near_angle": NEAR_ANGLE, "high_ncc": HIGH_NCC, "shuffle_cosine": SHUFFLE_COSINE, "max_drop": max_drop},
    }  # fmt: skip


def _prepare(model, data, val, limit, seed):
    """Datasets for the lenses and the estimate (held out when ``val`` is not given) and how they were chosen."""
    batch = None
    if isinstance(data, DataLoader):
        data, batch = data.dataset, data.batch_size
    if isinstance(val, DataLoader):
        val = val.dataset
    if not isinstance(data, Dataset) or len(data) == 0:  # type: ignore[arg-type]
        raise ValueError("analyze needs a non-empty Dataset or DataLoader of (input, label) pairs")
    data = subset(data, limit, seed=seed) if limit is not None else data
    how = f"{len(data)} images" + (f" (a seeded subset of --limit {limit})" if limit is not None else "")
    if val is None:
        n_val = max(1, min(len(data) // 5, 2000))
        if len(data) < 10:
            raise ValueError(f"analyze needs at least 10 images to hold out validation data, got {len(data)}")
        data, val = split(data, n_val, seed=seed)
        how += f"; {n_val} held out at random (seed {seed}) as validation data for the removable-MACs estimate"
    else:
        how += f"; the given validation set ({len(val)} images) for the removable-MACs estimate"
    return data, val, batch, {"analysis": len(data), "validation": len(val), "how": how}


def analyze(
    model: nn.Module,
    data: Dataset | DataLoader,
    *,
    val: Dataset | DataLoader | None = None,
    lenses: str | list[str] | tuple[str, ...] = "all",
    layers: LayerSpec = None,
    metric: str | Metric = "accuracy",
    max_drop: float = 0.01,
    budget_minutes: float | None = None,
    limit: int | None = None,
    batch_size: int = 256,
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool | None = None,
    partial: str | os.PathLike | None = None,
) -> AnalysisResult:
    """Every lens that applies to ``model``, one result and (with ``save_report``) one report.

    Args:
        model: a trained CNN (left exactly as found).
        data: the images the lenses read (a Dataset, or a DataLoader over one).
        val: validation data for the removable-MACs estimate; default: a seeded fifth of ``data``
            (at most 2,000 images) held out, never read by a lens.
        lenses: ``"all"`` or a list of :data:`LENSES` (``dead``, ``distinctiveness``, ``impulse``,
            ``shuffle``, ``scores``, ``ablation``, ``blocks``, ``cka``, ``skipping``).
        layers: conv layers to analyse (default all).
        metric: ``"accuracy"``, ``"dice"`` or a Metric; for a model returning a dict or tuple, one that
            names the output it reads (``get_metric("accuracy", output="logits")``), which the Taylor
            scores read too. max_drop: the metric drop that still counts as "safe"
            (trivial layers and blocks, the removable-MACs estimate).
        budget_minutes: fit the work into about this many minutes by sampling fewer images and
            channels (never below floors; see :mod:`.plan`); what was sampled is written in the result.
        limit: use at most this many images of ``data`` (a seeded subset).
        partial: a JSON path rewritten after every lens.

    Raises:
        Interrupted: on Ctrl-C (a ``KeyboardInterrupt``), carrying the result of the lenses that
            finished; a lens cut short leaves nothing behind.

    Example:
        >>> from cnn_redundancy.testing import TinyCNN, random_images
        >>> res = analyze(TinyCNN().eval(), random_images(40), lenses=["dead", "scores"], progress=False)
        >>> res.lenses["dead"]["status"], res.answer["kernels"]
        ('ran', 10)
    """
    if isinstance(max_drop, bool) or not isinstance(max_drop, int | float) or not 0 <= max_drop <= 1:
        raise ValueError(f"max_drop must be a number in [0, 1], not {max_drop!r}")
    chosen = list(LENSES) if lenses == "all" else [lenses] if isinstance(lenses, str) else list(lenses)
    unknown = [x for x in chosen if x not in LENSES]
    if unknown:
        raise ValueError(f"unknown lenses {unknown}; choose from {', '.join(LENSES)}")
    name, output = get_metric(metric).name, get_metric(metric).output
    names = resolve_layers(model, layers)
    data, val, loader_batch, how = _prepare(model, data, val, limit, seed)
    batch_size = loader_batch or batch_size
    names, not_called = called_by_default(model, names, layers, data[0][0][None].to(resolve_device(device, model)))
    traced = Traced.maybe(model)
    res = _start(model, names, how, device, data, seed, {"metric": name, **output_param(output)},
                 max_drop, budget_minutes)  # fmt: skip
    if not_called:
        res.data["not_called"] = not_called
    shift = input_shift(model, data, batch_size=min(batch_size, 32), device=device)
    if shift is not None:
        res.data["input_shift"] = {**dataclasses.asdict(shift), "far": shift.far}
    ctx = Context(model, data, names, resolve_observe(model, names, traced=traced), traced, metric, max_drop, None,
                  {"batch_size": batch_size, "seed": seed, "device": device, "progress": False},
                  res.per_kernel, res.per_layer, res.blocks, res.depth)  # type: ignore[arg-type]  # fmt: skip
    ctx.plan = _plan(model, data, val, names, traced, chosen, budget_minutes, batch_size, device, sum(res.macs.values()))
    estimate = None
    try:
        _run_lenses(res, ctx, chosen, progress, partial)
        if traced is not None and res.per_kernel:
            estimate = removable_macs(model, traced, val, consensus_order(res.per_kernel), ctx.observed, res.macs,
                                      metric=metric, max_drop=max_drop, batch_size=batch_size, device=device)  # fmt: skip
            estimate["how"] = ("the k most redundant kernels by the lenses' consensus rank (dead first) zeroed in the "
                               f"traced forward pass, k found by binary search on the {len(val)} validation images; "
                               "no fine-tuning, coupled channels not accounted for")  # fmt: skip
            caveat = coarse(len(val), name, max_drop, "validation")
            if caveat:
                estimate["caveat"] = f"a coarse estimate: {caveat}; more validation images give a finer one"
        res.agreement = agreement(res.per_kernel)
        res.answer = _answer(res, estimate, max_drop)
    except KeyboardInterrupt:
        missing = [lens for lens in chosen if lens not in res.lenses]
        for i, lens in enumerate(missing):
            res.lenses[lens] = {"status": "not run", "note": "not started: the run was interrupted" if i else
                                "interrupted before it finished"}  # fmt: skip
        res.agreement = agreement(res.per_kernel)
        res.answer = _answer(res, estimate, max_drop)  # the estimate where it was made before the interrupt
        res.results = ctx.results
        if partial is not None and is_main():
            res.save(partial)
        raise Interrupted(res) from None
    res.results = ctx.results
    res.meta["complete"] = True
    if partial is not None and is_main():
        res.save(partial)
    return res


def _model_name(model: nn.Module) -> str:
    spec = getattr(model, "cnn_redundancy_spec", None)
    if not spec:
        return type(model).__name__
    kw = ", ".join(f"{k}={v}" for k, v in spec.get("kwargs", {}).items())
    return f"{spec['name']}({kw})" if kw else spec["name"]


def _start(model, names, how, device, data, seed, metric: dict[str, Any], max_drop, budget) -> AnalysisResult:
    dev = resolve_device(device, model)
    x0 = data[0][0][None].to(dev)
    params = {"layers": names, **metric, "max_drop": max_drop, "budget_minutes": budget}
    res = AnalysisResult(meta={**make_meta("analyze", params, seed), "complete": False},
                         model=_model_name(model), layers=names, data=how,
                         kernels={n: model.get_submodule(n).out_channels for n in names},
                         macs=count_macs(model, x0))  # fmt: skip
    for n in names:
        res.per_layer[n] = {}
    return res


def _plan(model, data, val, names, traced, chosen, budget, batch_size, device, macs_per_image):
    adds = residual_adds(traced) if traced is not None else []
    shape = {"layers": len(names), "blocks": len(adds), "consumers": len(names),
             "kernels_max": max(model.get_submodule(n).out_channels for n in names),
             "kernels": sum(model.get_submodule(n).out_channels for n in names)}  # fmt: skip
    if "impulse" in chosen:
        x0 = data[0][0][None].to(resolve_device(device, model))
        shape["impulse_passes"] = impulse_passes(model, names, x0, macs_per_image, len(data))
    seconds = time_one_pass(model, data, batch_size, device, len(data)) if budget is not None else None
    # under torchrun every process must make the same plan: rank 0's timing decides
    return make_plan(len(data), len(val), shape, chosen, budget, broadcast_object(seconds))


def _run_lenses(res: AnalysisResult, ctx: Context, chosen: list[str], progress, partial) -> None:
    total = sum(ctx.plan.passes.values())
    filed = (res.per_kernel, res.per_layer, res.blocks, res.depth)  # what the lenses write into, in place
    with progress_bar(float(total), "analyze", enabled=progress, unit="pass") as bar:
        for lens in chosen:
            if lens in ctx.plan.skip:
                res.lenses[lens] = {"status": "skipped", "note": ctx.plan.skip[lens]}
                continue
            bar.set_postfix_str(lens)
            t0 = time.perf_counter()
            before, results = copy.deepcopy(filed), dict(ctx.results)
            try:
                note = RUNNERS[lens](ctx)
            except KeyboardInterrupt:  # a lens cut short leaves nothing: what it filed so far would read as complete
                for now, then in zip(filed, before):
                    now.clear()
                    now.update(then)
                ctx.results.clear()
                ctx.results.update(results)
                raise
            skipped = note is not None and (note.startswith("skipped") or note.startswith("does not apply"))
            res.lenses[lens] = {"status": "skipped" if skipped else "ran", "note": note or "",
                                "sampled": ctx.sampled.get(lens, ""), "passes": ctx.plan.passes.get(lens, 0.0)}  # fmt: skip
            res.meta.setdefault("seconds", {})[lens] = time.perf_counter() - t0
            bar.update(ctx.plan.passes.get(lens, 0.0))
            if partial is not None and is_main():
                res.save(partial)
