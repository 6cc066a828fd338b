"""``ablate``, ``remove-trivial`` and ``reproduce ablation`` commands (zero-ablation paper)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from .common import add_data_args, add_model_args, add_out_arg, data_from_args, model_from_args, out_dir, say


def register(sub) -> None:
    p = sub.add_parser(
        "ablate",
        help="zero-ablate conv layers and measure the metric (which layers are non-trivial)",
        description="Replace conv kernels with zeros (or drop residual branches), one unit at a time, and "
        "write <out>/ablation.json, <out>/ablation.png and a table.",
    )
    add_model_args(p)
    add_data_args(p)
    add_out_arg(p, "runs/ablate")
    p.add_argument("--scope", default="layer", choices=["layer", "block", "decomposition"])
    p.add_argument("--mode", default="zero-kernel", choices=["zero-kernel", "remove-branch"])
    p.add_argument("--layers", nargs="*", help="restrict to these layers / blocks (names or globs)")
    p.add_argument("--metric", default="accuracy", choices=["accuracy", "dice"])
    p.add_argument("--tolerance", type=float, default=0.01, help="largest metric drop that counts as trivial (default 0.01)")
    p.add_argument("--adjacent", default="forward", choices=["forward", "block", "none"],
                   help="layers kept next to decomposition layers with --scope block (default forward)")
    p.set_defaults(func=_ablate)

    p = sub.add_parser(
        "remove-trivial",
        help="remove residual branches whose removal keeps the metric within tolerance",
        description="Greedily remove trivial residual branches and save the smaller model as <out>/model.pt "
        "(loadable with --checkpoint) with <out>/removal.json.",
    )
    add_model_args(p)
    add_data_args(p)
    add_out_arg(p, "runs/remove-trivial")
    p.add_argument("--metric", default="accuracy", choices=["accuracy", "dice"])
    p.add_argument("--tolerance", type=float, default=0.01, help="largest allowed metric drop (default 0.01)")
    p.set_defaults(func=_remove)


def register_reproduce(rsub) -> None:
    p = rsub.add_parser(
        "ablation",
        help="zero-ablation paper: ResNet-20 on mnist5k and a PSPNet-style model on synthetic shapes",
        description="Train a CIFAR-style ResNet-20 on mnist5k and a ResNet-34-layout PSPNet on the synthetic "
        "shapes set, run the paper's three experiments on each, remove trivial branches, and write "
        "tables, figures and a report section into --out.",
    )
    p.add_argument("--out", "-o", default="runs/ablation", help="output folder (default runs/ablation)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="a tiny run (small subsets, one epoch) to check the pipeline")
    p.set_defaults(func=_reproduce)


def _print_table(res) -> None:
    print(f"baseline {res.metric} {res.baseline:.4f}  (scope={res.scope}, mode={res.mode}, tolerance={res.tolerance:g})")
    for row in res.table():
        unit, stage, dec, n, score, drop, verdict = row
        print(f"{unit:28s} {stage:10s} {'D' if dec else ' '} {n:3d}  {score:.4f}  drop {drop:+.4f}  {verdict}")


def _ablate(args: argparse.Namespace) -> int:
    from ..ablation import zero_ablation
    from ..report import save_figure

    out = out_dir(args)
    model = model_from_args(args)
    layers = args.layers if args.layers else None
    res = zero_ablation(model, data_from_args(args), scope=args.scope, mode=args.mode, layers=layers,
                        metric=args.metric, tolerance=args.tolerance, adjacent=args.adjacent, batch_size=args.batch_size)
    res.save(out / "ablation.json")
    save_figure(res.plot(), out / "ablation.png")
    _print_table(res)
    if res.unchanged:
        say(f"warning: ablating {', '.join(res.unchanged)} did not change the output at all")
    print(f"wrote {out / 'ablation.json'}")
    return 0


def _remove(args: argparse.Namespace) -> int:
    from ..checkpoint import save_checkpoint
    from ..removal import remove_trivial

    out = out_dir(args)
    res = remove_trivial(model_from_args(args), data_from_args(args), tolerance=args.tolerance, metric=args.metric,
                         batch_size=args.batch_size)
    res.save(out / "removal.json")
    save_checkpoint(res.model, out / "model.pt", extra={"removed": res.removed, args.metric: res.final})
    print(f"{args.metric} {res.baseline:.4f} -> {res.final:.4f}; removed {len(res.removed)} branches: {', '.join(res.removed)}")
    for k in res.before:
        print(f"{k:10s} {res.before[k]:>14,.4g} -> {res.after[k]:,.4g}")
    print(f"wrote {out / 'model.pt'}")
    return 0


def _run_set(model, test, metric: str, out: Path, tag: str, tolerance: float):
    """The three experiments (and the branch-removal sweep) on one trained model."""
    from ..ablation import zero_ablation
    from ..report import save_figure

    runs = {}
    for scope, mode in (("layer", "zero-kernel"), ("block", "zero-kernel"), ("decomposition", "zero-kernel"),
                        ("layer", "remove-branch")):
        try:
            res = zero_ablation(model, test, scope=scope, mode=mode, metric=metric, tolerance=tolerance)
        except ValueError as e:  # a block scope with nothing left to zero is reported, not fatal
            if scope != "block":
                raise
            say(f"{tag}: scope=block skipped: {e}")
            continue
        key = f"{tag}-{scope}-{mode}"
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


def _reproduce(args: argparse.Namespace) -> int:
    import torch

    from ..checkpoint import save_checkpoint
    from ..data import load_dataset, subset
    from ..models import get_model
    from ..removal import remove_trivial
    from ..report import Figure, Section, Table, save_figure, write_report
    from ..training import evaluate, fit

    t0 = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    q = args.quick
    torch.manual_seed(args.seed)
    tables, figures, findings, summary = [], [], [], {}
    tol = 0.01

    # classification: ResNet-20 (one input channel) on mnist5k
    train = load_dataset("mnist5k", "train", seed=args.seed)
    test = load_dataset("mnist5k", "test", seed=args.seed)
    if q:
        train, test = subset(train, 128, seed=args.seed), subset(test, 64, seed=args.seed)
    model = get_model("resnet20", in_channels=1, input_size=28, width=4 if q else 16)
    say("training ResNet-20 on mnist5k")
    fit(model, train, epochs=1 if q else 3, lr=2e-3, batch_size=128, seed=args.seed)
    save_checkpoint(model, out / "resnet20-mnist5k.pt")
    half = len(test) // 2
    check, held = test.subset(range(half)), test.subset(range(half, len(test)))
    runs = _run_set(model, test, "accuracy", out, "resnet20-mnist5k", tol)
    findings += _findings("ResNet-20 / mnist5k", runs, "accuracy")
    removal = remove_trivial(model, check, tolerance=tol)
    removal.save(out / "resnet20-removal.json")
    save_figure(removal.plot(), out / "resnet20-removal.png")
    save_checkpoint(removal.model, out / "resnet20-trimmed.pt", extra={"removed": removal.removed})
    held_before, held_after = evaluate(model, held), evaluate(removal.model, held)
    findings.append(
        f"remove_trivial (tolerance {tol:g}, checked on the first half of the test split): removed "
        f"{len(removal.removed)} of {len(runs[('layer', 'remove-branch')].units)} branches ({', '.join(removal.removed) or 'none'}); "
        f"accuracy {removal.baseline:.3f} -> {removal.final:.3f} there, {held_before:.3f} -> {held_after:.3f} on the held-out half; "
        f"params {removal.before['params']:,} -> {removal.after['params']:,}, MACs {removal.before['macs']:,} -> "
        f"{removal.after['macs']:,}, CPU latency {removal.before['latency_ms']:.1f} -> {removal.after['latency_ms']:.1f} ms "
        f"(batch of 16, median)."
    )
    summary["classification"] = {"baseline": runs[("layer", "zero-kernel")].baseline, "removed": removal.removed,
                                 "held_out": [held_before, held_after]}

    # segmentation: PSPNet with a ResNet-34-layout encoder on synthetic shapes
    n_train, n_test = (32, 16) if q else (600, 200)
    strain = load_dataset("shapes", "train", seed=args.seed, n_train=n_train, n_test=n_test)
    stest = load_dataset("shapes", "test", seed=args.seed, n_train=n_train, n_test=n_test)
    seg = get_model("pspnet_resnet", in_channels=1, num_classes=3, depths=(1, 1, 1, 1) if q else (3, 4, 6, 3),
                    width=4 if q else 8)
    say("training PSPNet-ResNet34 layout on synthetic shapes")
    fit(seg, strain, epochs=1 if q else 6, lr=3e-3, batch_size=32, seed=args.seed, metric="dice")
    save_checkpoint(seg, out / "pspnet-shapes.pt")
    sruns = _run_set(seg, stest, "dice", out, "pspnet-shapes", tol)
    findings += _findings("PSPNet / shapes", sruns, "Dice")

    for tag, rs, metric in (("ResNet-20 / mnist5k", runs, "accuracy"), ("PSPNet / shapes", sruns, "Dice")):
        for (scope, mode), res in rs.items():
            key = f"{'resnet20-mnist5k' if rs is runs else 'pspnet-shapes'}-{scope}-{mode}"
            figures.append(Figure(f"{key}.png", f"{tag}: {metric} with each unit ablated (scope={scope}, mode={mode}); "
                                  "red: decomposition layers; dashed: baseline."))
            if scope != "layer":
                tables.append(Table(f"{tag}: scope={scope}, mode={mode} (baseline {res.baseline:.3f})",
                                    ["unit", "layer block", "decomposition", "# ablated", metric, "drop", "verdict"],
                                    res.table()))
    figures.append(Figure("resnet20-removal.png", "Branch removal: metric after each tried removal (green: kept)."))
    elapsed = time.perf_counter() - t0
    findings.append(f"Run time {elapsed:.0f} s ({'quick run' if q else 'full run'}).")
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
    write_report(out, [section])
    (out / "summary.json").write_text(json.dumps({**summary, "seconds": elapsed}, indent=1))
    for line in findings:
        print(line)
    print(f"report: {out / 'report.html'}")
    return 0
