"""``distinctiveness``, ``prune`` and ``reproduce distinctiveness`` commands."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from .common import add_data_args, add_model_args, add_out_arg, data_from_args, model_from_args, out_dir, say

CRITERIA = ("distinctiveness", "random", "l1", "l2", "fpgm", "taylor")


def _add_common(p: argparse.ArgumentParser, out: str) -> None:
    add_model_args(p)
    add_data_args(p, split="train")
    add_out_arg(p, out)
    p.add_argument("--layers", nargs="*", help="conv layers (names or globs; default all)")
    p.add_argument("--center", choices=["mean", "minmax"], help="center the vectors (lets complementary pairs appear)")


def register(sub) -> None:
    p = sub.add_parser(
        "distinctiveness",
        help="angles between kernels' activation vectors",
        description="Distinctiveness of every pair of kernels of each conv layer (angle between their activation "
        "vectors over the data, degrees). Writes <out>/distinctiveness.json and a figure; prints the least distinct pairs.",
    )
    _add_common(p, "runs/distinctiveness")
    p.add_argument("--top", type=int, default=10, help="pairs to print (default 10)")
    p.set_defaults(func=_distinctiveness)

    p = sub.add_parser(
        "prune",
        help="progressively remove kernels (physically) with a criterion",
        description="Remove --steps kernels one at a time (distinctiveness, random, l1, l2, fpgm, taylor) with real "
        "structural removal. Writes <out>/prune.json and <out>/model.pt (a checkpoint that loads with --checkpoint).",
    )
    _add_common(p, "runs/prune")
    p.add_argument("--criterion", default="distinctiveness", choices=CRITERIA)
    p.add_argument("--steps", type=int, default=1, help="kernels to remove (default 1)")
    p.add_argument("--rule", default="least-distinct", choices=["least-distinct", "gedeon-harris"])
    p.add_argument("--no-eval", action="store_true", help="skip test accuracy before/after")
    p.set_defaults(func=_prune)


def register_reproduce(rsub) -> None:
    p = rsub.add_parser(
        "distinctiveness",
        help="distinctiveness vs random pruning over 10 trials (Tables 1-2) and a criteria head-to-head",
        description="On mnist5k: 10 trials of (train a fresh small_cnn_mnist baseline, prune 9 kernels with "
        "distinctiveness and with random pruning), mean/std tables and plot; then every criterion head to head "
        "on lenet5 and small_cnn_mnist at 10/25/50%% MACs reduction. Writes JSON, figures and a report section.",
    )
    add_out_arg(p, "runs/reproduce-distinctiveness")
    p.add_argument("--quick", action="store_true", help="a tiny version (2 trials, 2 steps, small subsets)")
    p.add_argument("--model", default="small_cnn_mnist", help="model of the trials (default small_cnn_mnist)")
    p.add_argument("--trials", type=int, default=10)
    p.add_argument("--steps", type=int, default=9)
    p.add_argument("--epochs", type=int, default=3, help="baseline training epochs per trial (default 3)")
    p.add_argument("--no-head-to-head", action="store_true", help="skip the criteria head-to-head")
    p.set_defaults(func=_reproduce)


def _distinctiveness(args: argparse.Namespace) -> int:
    from ..distinctiveness import distinctiveness
    from ..report import save_figure

    out = out_dir(args)
    res = distinctiveness(model_from_args(args), data_from_args(args), args.layers or None, center=args.center,
                          batch_size=args.batch_size)
    res.save(out / "distinctiveness.json")
    save_figure(res.plot(), out / "distinctiveness.png")
    for p in res.pairs(args.top):
        print(f"{p['layer']}\tkernels {p['i']} and {p['j']}\t{p['angle']:.2f} deg")
    say(f"wrote {out / 'distinctiveness.json'}")
    return 0


def _prune(args: argparse.Namespace) -> int:
    from ..checkpoint import save_checkpoint
    from ..pruning import prune
    from ..training import evaluate

    out = out_dir(args)
    model = model_from_args(args)
    data = data_from_args(args)
    res = prune(model, data, criterion=args.criterion, steps=args.steps, rule=args.rule, center=args.center,
                layers=args.layers or None, seed=args.seed, batch_size=args.batch_size)
    extra = {}
    if not args.no_eval:
        test = data_from_args(args, "test")
        extra = {"test_acc_before": evaluate(model, test), "test_acc_after": evaluate(res.model, test)}
    res.save(out / "prune.json")
    save_checkpoint(res.model, out / "model.pt", extra=extra)
    for h in res.history:
        print(f"step {h['step']}: {h['action']} {h['layer']} kernel {h['kernel']}: {h['reason']}")
    print(f"params {res.params_before} -> {res.params_after}; MACs {res.macs_before} -> {res.macs_after}")
    if extra:
        print(f"test accuracy {extra['test_acc_before']:.4f} -> {extra['test_acc_after']:.4f}")
    say(f"wrote {out / 'prune.json'} and {out / 'model.pt'}")
    return 0


def _reproduce(args: argparse.Namespace) -> int:
    from ..pruning_trials import reproduce_distinctiveness as reproduce

    t0 = time.perf_counter()
    path = reproduce(Path(args.out), quick=args.quick, model=args.model, trials=args.trials, steps=args.steps,
                     epochs=args.epochs, compare=not args.no_head_to_head, seed=args.seed)
    print(f"report: {path} ({time.perf_counter() - t0:.0f} s)")
    return 0
