"""How much could be removed within a metric drop: the lenses' consensus ranking, checked on held-out data.

Every kernel gets a consensus redundancy rank: dead kernels first, then the mean over the lenses
that scored it of its percentile within its layer (by each lens's own orientation: a smaller
distinctiveness angle, a larger impulse NCC or shuffle cosine, a smaller L1 or Taylor score is more
redundant). The k most redundant kernels (never a layer's last one) are removed *virtually*: their
activation channel is multiplied by zero in the traced forward pass (no retracing), and the metric
is measured on the validation data, which no lens has seen. A binary search over k finds the largest
k whose drop stays within ``max_drop``. The MACs it saves are each removed kernel's share of its
conv plus its share of the consumer conv's input.

This is an estimate: physical removal couples channels that residual additions share, and no
fine-tuning is done (``compress`` does both, and verifies on a test split).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..core.batches import as_loader, batches, resolve_device
from ..core.graph import Traced
from ..core.hooks import preserved
from ..core.metrics import Metric, get_metric
from ..core.structure import consumer

__all__ = ["consensus_order", "removable_macs", "macs_saved", "SCORE_SIGNS"]

#: per-kernel fields and their orientation: +1 when a larger value means more redundant
SCORE_SIGNS = {"max_activation": -1, "angle": -1, "ncc": 1, "shuffle_cosine": 1, "l1": -1, "taylor": -1}


def _percentiles(values: list[float], sign: int) -> list[float]:
    """Within-layer redundancy percentile (0: least, 1: most redundant) of the finite values; NaN elsewhere."""
    idx = [i for i, v in enumerate(values) if v is not None and not math.isnan(v)]
    out = [math.nan] * len(values)
    if len(idx) < 2:
        return out
    ordered = sorted(idx, key=lambda i: sign * values[i])
    for rank, i in enumerate(ordered):
        out[i] = rank / (len(idx) - 1)
    return out


def consensus_order(per_kernel: dict[str, dict[str, list]]) -> list[tuple[str, int, float]]:
    """``(layer, kernel, score)`` from most to least redundant (dead kernels score 2, others their mean percentile)."""
    out = []
    for layer, fields in per_kernel.items():
        k = len(next(iter(fields.values())))
        pct = [_percentiles(fields[f], s) for f, s in SCORE_SIGNS.items() if f in fields]
        dead = fields.get("dead", [False] * k)
        for i in range(k):
            vals = [p[i] for p in pct if not math.isnan(p[i])]
            out.append((layer, i, 2.0 if dead[i] else (sum(vals) / len(vals) if vals else 0.0)))
    return sorted(out, key=lambda t: (-t[2], t[0], t[1]))


def _evaluate(gm: nn.Module, val, metric: str | Metric, batch_size: int, device,
              classes: dict[int, int] | None = None) -> float:  # fmt: skip
    """The metric on ``val``; ``classes``, if given, counts the class labels (``[N]`` integer targets) on the way."""
    m = get_metric(metric)
    with torch.no_grad():
        for b in batches(as_loader(val, batch_size), device, gm):
            m.update(gm(b.x), b.y)
            if classes is not None and b.y is not None and b.y.dim() == 1 and not b.y.is_floating_point():
                for c, n in zip(*(t.tolist() for t in torch.unique(b.y, return_counts=True))):
                    classes[c] = classes.get(c, 0) + n
    return m.compute()


def removable_macs(model: nn.Module, traced: Traced, val, order: list[tuple[str, int, float]], observed: dict[str, str],
                   macs: dict[str, int], *, metric: str | Metric, max_drop: float, batch_size: int, device) -> dict[str, Any]:  # fmt: skip
    """The largest number of consensus-ranked kernels whose virtual removal keeps the metric on ``val``
    within ``max_drop``, and the MACs they account for (see the module docstring)."""
    dev = resolve_device(device, model)
    layers = list(dict.fromkeys(layer for layer, _, _ in order))
    gm, masks = traced.masked({layer: observed[layer] for layer in layers})
    left = {layer: model.get_submodule(layer).out_channels for layer in layers}
    chosen = []
    for layer, i, _ in order:  # never a layer's last kernel
        if left[layer] > 1:
            chosen.append((layer, i))
            left[layer] -= 1
    tried: dict[int, float] = {}
    classes: dict[int, int] = {}

    def metric_with(k: int) -> float:
        if k not in tried:
            for mask in masks.values():
                mask.fill_(1.0)
            for layer, i in chosen[:k]:
                masks[layer][0, i] = 0.0
            tried[k] = _evaluate(gm, val, metric, batch_size, dev, classes if k == 0 else None)
        return tried[k]

    with preserved(model):
        model.eval()
        base = metric_with(0)
        lo, hi = 0, len(chosen)
        while lo < hi:  # largest k with base - metric(k) <= max_drop
            mid = (lo + hi + 1) // 2
            if base - metric_with(mid) <= max_drop:
                lo = mid
            else:
                hi = mid - 1
    removed = chosen[:lo]
    total = sum(macs.values())
    saved = macs_saved(model, traced, removed, macs)
    return {"kernels": lo, "of": sum(model.get_submodule(x).out_channels for x in layers), "macs_saved": saved,
            "macs_total": total, "fraction": saved / total if total else 0.0, "baseline": base,
            "metric_after": tried[lo], "max_drop": max_drop, "evaluations": dict(sorted(tried.items())),
            "removed": [[layer, i] for layer, i in removed],
            # accuracy: what always answering the most frequent validation class scores (a model no better learned nothing here)
            "chance": max(classes.values()) / sum(classes.values())
            if classes and get_metric(metric).name == "accuracy" else None}  # fmt: skip


def macs_saved(model: nn.Module, traced: Traced, removed: list[tuple[str, int]], macs: dict[str, int]) -> float:
    """MACs saved by removing kernels: each conv keeps ``out_kept / out x in_kept / in`` of its MACs, where
    its input channels are those its producer (the layer it consumes channel for channel) keeps."""
    gone: dict[str, int] = {}
    for layer, _ in removed:
        gone[layer] = gone.get(layer, 0) + 1
    producer = {}
    for layer in gone:
        nxt = consumer(traced, layer)
        if nxt is not None:
            producer[nxt] = layer
    saved = 0.0
    for name in set(gone) | set(producer):
        conv = model.get_submodule(name)
        keep_out = 1 - gone.get(name, 0) / conv.out_channels
        keep_in = 1 - gone.get(producer.get(name, ""), 0) / conv.in_channels
        saved += macs.get(name, 0) * (1 - keep_out * keep_in)
    return saved
