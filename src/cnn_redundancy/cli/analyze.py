"""``analyze``: every lens that applies to the user's model, one result and one report."""

from __future__ import annotations

import argparse
import sys

from .common import (
    add_data_args,
    add_metric_args,
    add_model_args,
    add_out_arg,
    data_from_args,
    metric_from_args,
    model_from_args,
    out_dir,
    say,
)


def register(sub) -> None:
    from ..survey import LENSES

    p = sub.add_parser(
        "analyze",
        help="which parts of my CNN are redundant, why, and how much could go: every lens, one report",
        description="Run every lens that applies to the model (dead kernels, distinctiveness, impulse responses, "
        "channel shuffle at each layer's consumer, L1/Taylor, zero-ablation of layers and residual branches, CKA "
        "across depth, layer skipping), estimate the removable MACs on held-out data, and write "
        "<out>/analysis.json, figures and <out>/report.html, which opens with the answer.",
    )
    add_model_args(p)
    add_data_args(p)
    add_out_arg(p, "runs/analysis")
    p.add_argument("--layers", "-l", nargs="*", help="conv layers (names or globs; default all)")
    p.add_argument("--lenses", nargs="*", choices=list(LENSES), help="lenses to run (default all that apply)")
    add_metric_args(p)
    p.add_argument("--max-drop", type=float, default=0.01, help="metric drop that still counts as safe (default 0.01)")
    p.add_argument("--budget-minutes", type=float, help="fit the work into about this many minutes (samples fewer "
                   "images and channels; says what was sampled)")
    p.set_defaults(func=_analyze)


def _analyze(args: argparse.Namespace) -> int:
    from ..core.batches import resolve_device
    from ..core.distributed import is_main
    from ..survey import Interrupted, analyze

    out_dir(args)
    data = data_from_args(args)
    model = model_from_args(args, data)
    try:
        res = analyze(model, data, lenses=args.lenses or "all", layers=args.layers or None,
                      metric=metric_from_args(args, model, data), max_drop=args.max_drop,
                      budget_minutes=args.budget_minutes, batch_size=args.batch_size, seed=args.seed,
                      device=resolve_device(args.device, model), partial=f"{args.out}/analysis.json")  # fmt: skip
    except Interrupted as stop:  # the report of the lenses that finished, then the interrupt's own message
        if is_main():
            print(f"report of the lenses that finished: {stop.result.save_report(args.out)}", file=sys.stderr)
        raise
    if not is_main():  # under torchrun every process holds the result; rank 0 writes it
        return 0
    path = res.save_report(args.out)
    for line in res.headline():
        print(line)
    for lens, info in res.lenses.items():
        if info["status"] != "ran":
            say(f"{lens}: {info['note']}")
    print(f"report: {path}")
    return 0
