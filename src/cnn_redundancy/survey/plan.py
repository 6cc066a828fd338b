"""How much of the data and of the model each lens of ``analyze`` measures: costs and sampling.

Costs are counted in *inference passes*: the time of one plain forward pass over the analysis data.
The streamed lenses (dead kernels, distinctiveness, CKA) cost about one pass each, the Taylor scores
about three (forward and backward), the ablation sweeps about half a pass per unit over their image
subset, the shuffle lens about 0.07 pass per channel for the cosine (only the path to the consumer's
activation is recomputed) and about half a pass per channel for the metric. Without a budget the
defaults below apply; with ``budget_minutes`` a quick timing of the model turns passes into seconds
and the sample sizes shrink (never below their floors) until the estimate fits; lenses that still do
not fit are skipped and say so. Every choice is written into the result.
"""

from __future__ import annotations

import dataclasses
import math
import time

import torch
from torch import nn

from ..core.batches import as_loader, batches, resolve_device

__all__ = ["Plan", "make_plan", "time_one_pass", "impulse_passes"]

#: cost of each lens in inference passes over the analysis data, per unit of what it measures
_COST = {"dead": 1.05, "distinctiveness": 1.1, "cka": 1.3, "taylor": 3.0, "ablation_unit": 0.5, "block_unit": 0.6,
         "cosine_channel": 0.07, "metric_channel": 0.5, "skipping": 1.1, "estimate_eval": 1.0}  # fmt: skip
#: images' worth of inference per (impulse NCC cost / the model's MACs per image): measured 1.3-5.8 on
#: torchvision resnet18 and resnet50 at 64x64 and 224x224 (2 threads), so an estimate within about 2x
_IMPULSE_IMAGES_PER_COST = 2.5


@dataclasses.dataclass
class Plan:
    """What each lens measures.

    Attributes:
        n_data: images the streamed lenses read. n_shuffle: images of the shuffle lens.
        cosine_channels / metric_channels: channels per consumer layer whose shuffle cosine / metric
            drop is measured. n_ablation: images of the ablation sweeps. n_val: validation images.
        skip: lens -> why it was left out for the budget. passes: lens -> estimated cost in passes.
        seconds_per_pass: the measured time of one pass (``None`` without a budget).
    """

    n_data: int
    n_shuffle: int = 256
    cosine_channels: int = 16
    metric_channels: int = 4
    n_ablation: int = 512
    n_val: int = 0
    skip: dict[str, str] = dataclasses.field(default_factory=dict)
    passes: dict[str, float] = dataclasses.field(default_factory=dict)
    seconds_per_pass: float | None = None

    def estimate(self, shape: dict[str, int]) -> dict[str, float]:
        """Cost of every lens in passes over ``n_data`` images, given the model's ``shape`` counts
        (``layers``, ``blocks``, ``consumers``, ``kernels_max``, ``impulse_passes``)."""
        f = lambda n: n / max(self.n_data, 1)  # noqa: E731
        return {
            "dead": _COST["dead"], "distinctiveness": _COST["distinctiveness"], "cka": _COST["cka"],
            "scores": _COST["taylor"], "impulse": shape.get("impulse_passes", 0.5),
            "ablation": _COST["ablation_unit"] * shape["layers"] * f(self.n_ablation),
            "blocks": _COST["block_unit"] * shape["blocks"] * f(self.n_ablation),
            "shuffle": shape["consumers"] * f(self.n_shuffle) * (
                _COST["cosine_channel"] * min(self.cosine_channels, shape["kernels_max"])
                + _COST["metric_channel"] * min(self.metric_channels, shape["kernels_max"])),
            "skipping": _COST["skipping"] if shape.get("skipping") else 0.0,
            "estimate": _COST["estimate_eval"] * math.ceil(math.log2(max(shape["kernels"], 2)) + 1) * f(self.n_val),
        }  # fmt: skip


def impulse_passes(model: nn.Module, layers: list[str], x0: torch.Tensor, macs_per_image: float, n_data: int) -> float:
    """The impulse lens's cost in passes over ``n_data`` images: its NCC within each layer and between
    consecutive layers (:func:`cnn_redundancy.core.metrics.ncc_cost`, from the responses' shapes on one
    input ``x0``), which depends on the model and the image size, not on the data."""
    from ..core.hooks import capture, preserved
    from ..core.metrics import ncc_cost

    with preserved(model), torch.no_grad(), capture(model, layers) as acts:
        model.eval()
        model(x0)
    # a layer the forward pass does not call (an auxiliary head) costs nothing here: the lens says so itself
    shapes = {n: (acts[n].shape[1], x0.shape[1], *acts[n].shape[2:]) for n in layers if n in acts and acts[n].dim() == 4}
    cost = sum(ncc_cost(s) for s in shapes.values())
    big = [n for n, s in shapes.items() if s[2] * s[3] > 16]  # what the lens compares across depth
    cost += sum(ncc_cost(shapes[a], shapes[b]) for a, b in zip(big, big[1:]))
    return _IMPULSE_IMAGES_PER_COST * cost / max(macs_per_image, 1.0) / max(n_data, 1)


def time_one_pass(model: nn.Module, data, batch_size: int, device, n_data: int) -> float:
    """Seconds of one plain forward pass over ``n_data`` images, extrapolated from up to two batches."""
    loader = as_loader(data, min(batch_size, 64))
    dev = resolve_device(device, model)
    seen, spent = 0, 0.0
    with torch.no_grad():
        for i, b in enumerate(batches(loader, dev, model)):
            t0 = time.perf_counter()
            model(b.x)
            if i:  # the first batch warms up
                spent += time.perf_counter() - t0
                seen += len(b.x)
            if i >= 2:
                break
    return spent / max(seen, 1) * n_data if seen else 0.0


def make_plan(n_data: int, n_val: int, shape: dict[str, int], lenses: list[str], budget_minutes: float | None,
              seconds_per_pass: float | None) -> Plan:  # fmt: skip
    """The sample sizes (and the lenses skipped) that fit the budget; the defaults without one."""
    plan = Plan(n_data=n_data, n_shuffle=min(n_data, 256), n_ablation=min(n_data, 512), n_val=n_val,
                seconds_per_pass=seconds_per_pass)  # fmt: skip
    if budget_minutes is None or not seconds_per_pass:
        plan.passes = {k: v for k, v in plan.estimate(shape).items() if k in lenses or k == "estimate"}
        return plan
    budget = budget_minutes * 60.0 / seconds_per_pass  # in passes
    floors = {"n_shuffle": min(n_data, 64), "cosine_channels": 4, "metric_channels": 1, "n_ablation": min(n_data, 128)}
    while _total(plan, shape, lenses) > budget and any(getattr(plan, k) > v for k, v in floors.items()):
        for k, v in floors.items():
            setattr(plan, k, max(v, getattr(plan, k) // 2))
    for lens, why in (("shuffle", "the shuffle lens"), ("blocks", "the branch-removal sweep"),
                      ("ablation", "the layer ablation sweep"), ("scores", "the Taylor scores"),
                      ("cka", "CKA"), ("impulse", "the impulse NCC")):  # fmt: skip
        if _total(plan, shape, lenses) <= budget:
            break
        if lens in lenses and lens not in plan.skip:
            plan.skip[lens] = f"{why} did not fit the budget of {budget_minutes:g} min even at its smallest sample"
    plan.passes = {k: v for k, v in plan.estimate(shape).items() if (k in lenses and k not in plan.skip) or k == "estimate"}
    return plan


def _total(plan: Plan, shape: dict[str, int], lenses: list[str]) -> float:
    est = plan.estimate(shape)
    return sum(v for k, v in est.items() if (k in lenses and k not in plan.skip) or k == "estimate")
