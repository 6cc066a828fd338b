"""``compress`` against Torch-Pruning's pruners on the bundled data: the table of ``docs/compress.md``.

For lenet5, LeNet-5x10, ResNet-20 and a torchvision resnet18 with a one-channel stem, trained on
three quarters of mnist5k's training split (the last quarter, unseen in training, is the validation
data every choice is made on): ``compress`` (the whole plan, ``criterion="auto"``) to 30% and 50% of the original MACs,
without and with fine-tuning, beside Torch-Pruning's MetaPruner (group L1, group Taylor) and random
pruning at the same MACs with the same fine-tuning; every number on the test split, which no choice
saw. The validation metric of each criterion ``auto`` tried is reported too: whether the papers'
criterion beats the standard ones is a finding, whichever way it goes.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..compression.compress import compress
from ..core.registry import experiment, option
from ..data import load_dataset, split, subset
from ..models import get_model
from ..report import Figure, Section, Table, save_figure, write_report
from ..training import fit

__all__ = ["run", "MODELS"]

#: name -> (model factory, training epochs)
MODELS = {
    "lenet5": (lambda seed: get_model("lenet5", seed=seed), 4),
    "LeNet-5x10": (lambda seed: get_model("lenet5", width=10, seed=seed), 4),
    "resnet20": (lambda seed: get_model("resnet20", in_channels=1, input_size=28, seed=seed), 3),
    "resnet18-gray": (lambda seed: _resnet18_gray(seed), 2),
}


def _resnet18_gray(seed: int) -> nn.Module:
    """torchvision's resnet18 with its stem taking one channel (the rest as torchvision builds it)."""
    m = get_model("torchvision:resnet18", num_classes=10, seed=seed)
    g = torch.Generator().manual_seed(seed)
    stem = nn.Conv2d(1, 64, 7, stride=2, padding=3, bias=False)
    with torch.no_grad():
        stem.weight.copy_(torch.randn(stem.weight.shape, generator=g) * (2.0 / (49 * 64)) ** 0.5)
    m.conv1 = stem
    return m


def _rows(name: str, target: float, epochs: int, r) -> list[list[Any]]:
    tag = f"{name}, {100 * target:.0f}% MACs, {epochs} fine-tuning epochs"
    rows = [[tag, "original", r.original["params"], round(r.original["macs"] / 1e6, 2), 100.0, r.original["test"]],
            [tag, f"compress ({r.criterion})", r.final["params"], round(r.final["macs"] / 1e6, 2),
             round(100 * r.final["macs_fraction"], 1), r.final["test"]]]  # fmt: skip
    rows += [[tag, b["method"], b["params"], round(b["macs"] / 1e6, 2), round(100 * b["macs"] / r.original["macs"], 1),
              b["test"]] for b in r.baselines]  # fmt: skip
    return rows


@experiment("compress", paper="toolkit", options=[
    option("models", "models to compress", nargs="+", choices=list(MODELS)),
    option("finetune_epochs", "fine-tuning epochs of the fine-tuned runs"),
])  # fmt: skip
def run(out: str | Path = "runs/reproduce-compress", *, quick: bool = False, seed: int = 0, device=None,
        models: tuple[str, ...] | list[str] = tuple(MODELS), finetune_epochs: int = 2) -> Path:  # fmt: skip
    """compress against Torch-Pruning's pruners at 30% and 50% of the MACs, with and without fine-tuning.

    Writes one ``compress-<model>-<target>-<epochs>.json`` per run, a figure per model, the table and a
    report section into ``out``; returns the report's path. ``quick``: lenet5 alone on 600 images, 50% MACs.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    train, test = load_dataset("mnist5k", "train"), load_dataset("mnist5k", "test")
    if quick:
        models, train, test, finetune_epochs = ["lenet5"], subset(train, 600, seed=seed), subset(test, 200, seed=seed), 1
    # the validation data every choice is made on is held out before training, so no model has seen it
    train, val = split(train, len(train) // 4, seed=seed + 1)
    rows, findings, figures, tried = [], [], [], []
    for name in models:
        factory, epochs = MODELS[name]
        model = factory(seed)
        fit(model, train, epochs=1 if quick else epochs, seed=seed, device=device, progress=False)
        for target in (0.5,) if quick else (0.3, 0.5):
            for ft in (0, finetune_epochs):
                r = compress(model, train, val=val, test=test, target_macs=target, max_drop=None, criterion="auto",
                             finetune_epochs=ft, seed=seed, device=device, progress=False)  # fmt: skip
                key = f"{name.split(' ')[0].lower()}-{int(100 * target)}-{ft}"
                r.save(out / f"compress-{key}.json")
                save_figure(r.plot(), out / f"compress-{key}.png")
                rows += _rows(name, target, ft, r)
                tried.append([name, f"{100 * target:.0f}%", ft, *[round(r.candidates[c]["val"], 4) for c in
                                                                   ("distinctiveness", "taylor", "l1", "fpgm")]])
                best = max(r.baselines, key=lambda b: b["test"]) if r.baselines else None
                if best is not None:
                    verdict = "beats" if r.final["test"] > best["test"] else "ties" if r.final["test"] == best["test"] else "loses to"
                    findings.append(f"{name} at {100 * target:.0f}% MACs, {ft} fine-tuning epochs: compress "
                                    f"({r.criterion}) {r.final['test']:.4f} on test {verdict} the best baseline "
                                    f"({best['method']}, {best['test']:.4f}).")  # fmt: skip
                if ft:
                    figures.append(Figure(f"compress-{key}.png", f"{name}, {100 * target:.0f}% MACs, fine-tuned."))
    findings.append(f"Run time {time.perf_counter() - t0:.0f} s ({'quick' if quick else 'full'} settings).")
    section = Section(
        key="compress-vs-torch-pruning", title="compress against Torch-Pruning's pruners, same MACs", order=25,
        intro=f"Each model trained on {len(train):,} of mnist5k's training images; the other {len(val):,}, which no "
              "model saw in training, are the validation data every choice is made on; compress reports on the "
              f"{len(test):,} test images; Torch-Pruning's MetaPruner (global, "
              "group L1 and group Taylor importance) and random pruning are stepped to the same MACs and fine-tuned "
              "alike (Adam 1e-3, cosine schedule).",
        findings=findings,
        tables=[Table("Test accuracy at the same MACs", ["setting", "method", "params", "M MACs", "% MACs", "test accuracy"],
                      rows),
                Table("Validation accuracy of each criterion compress tried (auto keeps the one that goes furthest, "
                      "then the best)", ["model", "target", "fine-tuning", "distinctiveness", "taylor", "l1", "fpgm"],
                      tried)],
        figures=figures)  # fmt: skip
    return write_report(out, [section])
