"""The zero-ablation paper's experiments ("Is each layer non-trivial in CNN?") on the bundled data.

ResNet-20 on mnist5k (classification) and a PSPNet with a ResNet-34-layout encoder on the synthetic
shapes set (segmentation, Dice): each layer zeroed alone, each layer block but its decomposition
layers, each shortcut projection alone, each residual branch removed; then trivial branches removed
for real. See ``docs/zero-ablation.md``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from ..analyses.ablation import zero_ablation
from ..checkpoint import save_checkpoint
from ..compression.removal import remove_trivial
from ..core.registry import experiment, option
from ..core.results import atomic_write
from ..data import load_dataset, split, subset
from ..models import get_model
from ..report import Figure, Section, Table, save_figure, write_report
from ..training import evaluate, fit
from .settings import PAPER_OPTION, comparison_table, holds, preset, settings_table, write_markdown

__all__ = ["run"]


def _say(msg: str) -> None:
    print(msg, file=sys.stderr)


def _run_set(model, test, metric: str, out: Path, tag: str, tolerance: float, device):
    """The three experiments (and the branch-removal sweep) on one trained model."""
    runs = {}
    for scope, mode in (("layer", "zero-kernel"), ("block", "zero-kernel"), ("decomposition", "zero-kernel"),
                        ("layer", "remove-branch")):
        key = f"{tag}-{scope}-{mode}"
        try:
            res = zero_ablation(model, test, scope=scope, mode=mode, metric=metric, tolerance=tolerance, device=device,
                                partial=out / f"{key}.json")
        except ValueError as e:  # a block scope with nothing left to zero is reported, not fatal
            if scope != "block":
                raise
            _say(f"{tag}: scope=block skipped: {e}")
            continue
        res.save(out / f"{key}.json")
        save_figure(res.plot(title=f"{tag}: scope={scope}, mode={mode}"), out / f"{key}.png")
        runs[(scope, mode)] = res
    return runs


def _findings(tag: str, runs, metric: str) -> list[str]:
    lay = runs[("layer", "zero-kernel")]
    dec = [u for u in lay.units if u in lay.decomposition]
    rest = [u for u in lay.units if u not in lay.decomposition]
    nd = sum(not lay.trivial[u] for u in dec)
    nr = sum(not lay.trivial[u] for u in rest)
    mean = lambda us: sum(lay.scores[u] for u in us) / max(1, len(us))  # noqa: E731
    holds = nd / max(1, len(dec)) > nr / max(1, len(rest))
    lines = [
        f"{tag}: baseline {metric} {lay.baseline:.3f}. Zeroing one conv at a time: {nd}/{len(dec)} decomposition layers "
        f"and {nr}/{len(rest)} other layers are non-trivial (drop > {lay.tolerance:g}); mean {metric} with a "
        f"decomposition layer zeroed {mean(dec):.3f}, with another layer zeroed {mean(rest):.3f}. The paper's claim "
        f"(decomposition layers non-trivial, the rest mostly trivial) {'holds' if holds and nr <= len(rest) / 2 else 'does not hold'} here.",
    ]
    blk = runs.get(("block", "zero-kernel"))
    if blk is None:
        lines.append(f"{tag}: no layer block holds a conv that is not a decomposition layer or adjacent to one (scope=block skipped).")
    else:
            lines.append(f"{tag}: zeroing every non-decomposition, non-adjacent conv of a layer block: "
                     + ", ".join(f"{u} {blk.scores[u]:.3f}" for u in blk.units) + ".")
    d = runs[("decomposition", "zero-kernel")]
    lines.append(f"{tag}: zeroing a shortcut projection conv: " + ", ".join(f"{u} {d.scores[u]:.3f}" for u in d.units) + ".")
    for res in runs.values():
        if res.unchanged:
            lines.append(f"{tag}: ablating {', '.join(res.unchanged)} (scope={res.scope}, mode={res.mode}) changed nothing.")
    rb = runs[("layer", "remove-branch")]
    lines.append(f"{tag}: removing one residual branch: {sum(rb.trivial.values())}/{len(rb.units)} branches trivial.")
    return lines


#: the paper's models: ResNet-34 (here its CIFAR layout, one input channel) and PSPNet-ResNet34 at full
#: width, trained to a plateau (early stopping on a validation split; the paper gives no training settings)
PAPER = {"width": 64, "seg_width": 64, "epochs": 100, "patience": 5}
#: the paper's figures: the block experiment (Tables 1 and 3, by the text) and the shortcut projections
#: (Tables 2 and 4): metric with the unit zeroed, and the unzeroed baselines
PAPER_FIGURES = {
    "classification": {"baseline": 0.84, "block": [0.51, 0.61, 0.83, 0.84], "decomposition": [0.28, 0.33, 0.16]},
    "segmentation": {"baseline": 0.87, "block": [0.82, 0.86, 0.82, 0.00], "decomposition": [0.00, 0.00, 0.00]},
}


def _setup(quick: bool, paper: bool, width, seg_width, epochs, patience) -> dict:
    """Models, sizes and training of both tasks (``None``: the setting's own value)."""
    q = quick  # quick sizes win over the paper's
    cls = {"name": "resnet34_cifar" if paper else "resnet20", "width": (2 if paper else 4) if q else width or 16,
           "epochs": 2 if q and patience else 1 if q else epochs or 3, "lr": 2e-3, "batch_size": 128}
    seg = {"depths": (3, 4, 6, 3) if paper or not q else (1, 1, 1, 1), "width": (2 if paper else 4) if q else seg_width or 8,
           "epochs": 2 if q and patience else 1 if q else epochs or 6, "lr": 3e-3, "batch_size": 32,
           "n": (32, 16) if q else (600, 200)}  # fmt: skip
    return {"cls": cls, "seg": seg, "patience": patience, "tag": "resnet34" if paper else "resnet20",
            "label": "ResNet-34" if paper else "ResNet-20"}


def _train(model, train, cfg: dict, patience, seed: int, device, metric: str = "accuracy") -> dict:
    """Fixed epochs, or (with ``patience``) to a plateau on a seeded validation split of ``train``."""
    kw = {"epochs": cfg["epochs"], "lr": cfg["lr"], "batch_size": cfg["batch_size"], "seed": seed, "device": device,
          "metric": metric}  # fmt: skip
    if patience is None:
        return fit(model, train, **kw)
    train, val = split(train, max(1, len(train) // 8), seed=seed)
    hist = fit(model, train, val=val, patience=patience, **kw)
    return {**hist, "train_size": len(train), "val_size": len(val)}


@experiment("ablation", paper="ablation", options=[
    option("width", "classification ResNet width (default 16: ResNet-20; with --paper-settings 64: ResNet-34)", type=int),
    option("seg_width", "PSPNet encoder width (default 8; with --paper-settings 64)", type=int),
    option("epochs", "training epochs (with --patience or --paper-settings: the most epochs)", type=int),
    option("patience", "train to a plateau: early stopping on a validation eighth of the training set", type=int),
    PAPER_OPTION,
])  # fmt: skip
def run(out: str | Path = "runs/ablation", *, quick: bool = False, seed: int = 0, device: str | torch.device | None = None,
        width: int | None = None, seg_width: int | None = None, epochs: int | None = None, patience: int | None = None,
        paper_settings: bool = False) -> Path:  # fmt: skip
    """The zero-ablation paper: ResNet-20 on mnist5k and a PSPNet-style model on synthetic shapes.

    Trains a CIFAR-style ResNet-20 on mnist5k and a ResNet-34-layout PSPNet on the synthetic shapes
    set, runs the paper's three experiments on each, removes trivial branches, and writes tables,
    figures and a report section into ``out``; returns the report's path. ``quick``: small subsets
    and one epoch, to check the pipeline. ``paper_settings``: the paper's ResNet-34 (``resnet34_cifar``,
    width 64) and PSPNet-ResNet34 (width 64), each trained to a plateau (early stopping, patience 5, at
    most 100 epochs); options given beside it still apply (``--width 16`` to fit a small machine).
    """
    if paper_settings:
        p = preset(run, locals(), PAPER)
        width, seg_width, epochs, patience = p["width"], p["seg_width"], p["epochs"], p["patience"]
    cfg = _setup(quick, paper_settings, width, seg_width, epochs, patience)
    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    q = quick
    torch.manual_seed(seed)
    tables, figures, findings, summary = [], [], [], {}
    tol = 0.01
    tag, label = f"{cfg['tag']}-mnist5k", f"{cfg['label']} / mnist5k"

    # classification: a ResNet (one input channel) on mnist5k
    train = load_dataset("mnist5k", "train", seed=seed)
    test = load_dataset("mnist5k", "test", seed=seed)
    if q:
        train, test = subset(train, 128, seed=seed), subset(test, 64, seed=seed)
    c = cfg["cls"]
    model = get_model(c["name"], in_channels=1, input_size=28, width=c["width"], seed=seed)
    _say(f"training {cfg['label']} on mnist5k")
    hist = _train(model, train, c, patience, seed, device)
    save_checkpoint(model, out / f"{tag}.pt")
    # a seeded half chooses, the other half verifies (the test split is sorted by class: never cut it in two)
    check, held = split(test, len(test) // 2, seed=seed)
    runs = _run_set(model, test, "accuracy", out, tag, tol, device)
    findings += _findings(label, runs, "accuracy")
    removal = remove_trivial(model, check, tolerance=tol, partial=out / f"{cfg['tag']}-removal.json")
    removal.save(out / f"{cfg['tag']}-removal.json")
    save_figure(removal.plot(), out / f"{cfg['tag']}-removal.png")
    save_checkpoint(removal.model, out / f"{cfg['tag']}-trimmed.pt", extra={"removed": removal.removed})
    held_before, held_after = evaluate(model, held), evaluate(removal.model, held)
    findings.append(
        f"remove_trivial (tolerance {tol:g}, checked on a seeded half of the test split): removed "
        f"{len(removal.removed)} of {len(runs[('layer', 'remove-branch')].units)} branches ({', '.join(removal.removed) or 'none'}); "
        f"accuracy {removal.baseline:.3f} -> {removal.final:.3f} there, {held_before:.3f} -> {held_after:.3f} on the held-out half; "
        f"params {removal.before['params']:,} -> {removal.after['params']:,}, MACs {removal.before['macs']:,} -> "
        f"{removal.after['macs']:,}, CPU latency {removal.meta['latency_ms']['before']:.1f} -> {removal.meta['latency_ms']['after']:.1f} ms "
        f"(batch of 16, median)."
    )
    summary["classification"] = {"baseline": runs[("layer", "zero-kernel")].baseline, "removed": removal.removed,
                                 "held_out": [held_before, held_after], "training": _trained_note(hist)}

    # segmentation: PSPNet with a ResNet-34-layout encoder on synthetic shapes
    g = cfg["seg"]
    n_train, n_test = g["n"]
    strain = load_dataset("shapes", "train", seed=seed, n_train=n_train, n_test=n_test)
    stest = load_dataset("shapes", "test", seed=seed, n_train=n_train, n_test=n_test)
    seg = get_model("pspnet_resnet", in_channels=1, num_classes=3, depths=g["depths"], width=g["width"], seed=seed)
    _say("training PSPNet-ResNet34 layout on synthetic shapes")
    shist = _train(seg, strain, g, patience, seed, device, metric="dice")
    save_checkpoint(seg, out / "pspnet-shapes.pt")
    sruns = _run_set(seg, stest, "dice", out, "pspnet-shapes", tol, device)
    findings += _findings("PSPNet / shapes", sruns, "Dice")
    summary["segmentation"] = {"baseline": sruns[("layer", "zero-kernel")].baseline, "training": _trained_note(shist)}

    for tg, rs, metric in ((label, runs, "accuracy"), ("PSPNet / shapes", sruns, "Dice")):
        for (scope, mode), res in rs.items():
            key = f"{tag if rs is runs else 'pspnet-shapes'}-{scope}-{mode}"
            figures.append(Figure(f"{key}.png", f"{tg}: {metric} with each unit ablated (scope={scope}, mode={mode}); "
                                  "red: decomposition layers; dashed: baseline."))
            if scope != "layer":
                tables.append(Table(f"{tg}: scope={scope}, mode={mode} (baseline {res.baseline:.3f})",
                                    ["unit", "layer block", "decomposition", "# ablated", metric, "drop", "verdict"],
                                    res.table()))
    figures.append(Figure(f"{cfg['tag']}-removal.png", "Branch removal: metric after each tried removal (green: kept)."))
    elapsed = time.perf_counter() - t0
    findings.append(f"Run time {elapsed:.0f} s ({'quick run' if q else 'full run'}).")
    settings = {"settings": "paper" if paper_settings else "default", "quick": q, "seed": seed,
                "classification": f"{c['name']}, width {c['width']}, {len(train)} mnist5k images ({_trained_note(hist)}), "
                                  f"{len(test)} test images", "segmentation":
                f"pspnet_resnet, depths {tuple(g['depths'])}, width {g['width']}, {n_train} shapes images "
                f"({_trained_note(shist)}), {n_test} test images",
                "training": f"adam, lr {c['lr']:g} / {g['lr']:g}, batch {c['batch_size']} / {g['batch_size']}",
                "tolerance (trivial: drop at most)": tol, "run time (s)": round(elapsed)}  # fmt: skip
    tables[:0] = [comparison_table(paper_rows(runs, sruns, tol), note="Trivial: the metric drops by at most the tolerance "
                                   f"({tol:g}), for the paper's numbers and ours alike."), settings_table(settings)]
    write_markdown(out / "paper_comparison.md", tables[:2])
    section = Section(
        key="zero-ablation",
        title="Is each layer non-trivial? Zero-ablation of ResNet conv layers",
        intro="Conv kernels of a trained ResNet are replaced with zeros (BN shifts stay, as in the paper's equations): "
        "each layer alone, each layer block except its feature decomposition layers (convs changing the channel "
        "count, including 1x1 projection shortcuts) and their adjacent layers, and each shortcut projection alone. "
        "'Trivial' here means the metric drops by at most the tolerance (the paper's introduction words it the other "
        "way round). The paper's CIFAR-10 and T1 data are replaced by mnist5k and synthetic shapes.",
        findings=findings, tables=tables, figures=figures, order=30,
    )
    path = write_report(out, [section])
    atomic_write(out / "summary.json", json.dumps(summary, indent=1))
    for line in findings:
        print(line)
    return path


def _trained_note(hist: dict) -> str:
    n = len(hist["loss"])
    if "best_epoch" not in hist:
        return f"{n} epochs"
    return (f"trained to a plateau: best validation epoch {hist['best_epoch'] + 1} of {n} run, "
            f"{hist['val_size']} validation images held out")


def _claim_rows(runs, task: str, metric: str, tol: float) -> list[list]:
    """One task's rows of the comparison: the per-layer claim, each block, each shortcut projection."""
    fig = PAPER_FIGURES[task]
    lay = runs[("layer", "zero-kernel")]
    dec = [u for u in lay.units if u in lay.decomposition]
    rest = [u for u in lay.units if u not in lay.decomposition]
    nd, nr = sum(not lay.trivial[u] for u in dec), sum(not lay.trivial[u] for u in rest)
    rows = [[f"{task}: unablated {metric}", f"{fig['baseline']:.2f}", f"{lay.baseline:.3f}", "n/a (other data)"],
            [f"{task}: decomposition layers non-trivial, the others trivial (figure {1 if task == 'classification' else 2})",
             "figure, no numbers", f"non-trivial: {nd}/{len(dec)} decomposition layers, {nr}/{len(rest)} others",
             holds(nd / max(1, len(dec)) > nr / max(1, len(rest)) and nr <= len(rest) / 2,
                   partly=nd / max(1, len(dec)) > nr / max(1, len(rest)))]]
    for scope, table in (("block", "1" if task == "classification" else "3"), ("decomposition", "2" if task == "classification" else "4")):
        res = runs.get((scope, "zero-kernel"))
        paper = fig[scope]
        units = res.units if res is not None else []
        first = 1 if scope == "block" else 2
        for i, value in enumerate(paper):
            what = "layer block" if scope == "block" else "shortcut projection of block"
            p_triv = round(fig["baseline"] - value, 9) <= tol
            if i >= len(units):
                rows.append([f"{task}: {what} {first + i} zeroed (Table {table})", f"{value:.2f}", "no such unit", "n/a"])
                continue
            u = units[i]
            rows.append([f"{task}: {what} {first + i} zeroed (Table {table})",
                         f"{value:.2f} ({'trivial' if p_triv else 'non-trivial'})",
                         f"{res.scores[u]:.3f}, drop {res.baseline - res.scores[u]:.3f} ({u}: {'trivial' if res.trivial[u] else 'non-trivial'})",
                         holds(p_triv == res.trivial[u])])
    return rows


def paper_rows(runs, sruns, tol: float) -> list[list]:
    """The paper's figures (both tasks) beside ours; trivial means a drop of at most ``tol`` for both."""
    return _claim_rows(runs, "classification", "accuracy", tol) + _claim_rows(sruns, "segmentation", "Dice", tol)
