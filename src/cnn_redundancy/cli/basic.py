"""``train``, ``evaluate``, ``layers``, ``models``, ``report`` and ``demo`` commands."""

from __future__ import annotations

import argparse
import json

from ..core.results import atomic_write
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
    p = sub.add_parser(
        "train",
        help="train a model and save a checkpoint",
        description="Train a model from the zoo (or torchvision / your file) on a data set and save "
        "<out>/model.pt (loadable with --checkpoint) and <out>/train.json.",
    )
    add_model_args(p)
    add_data_args(p, split="train")
    add_out_arg(p, "runs/train")
    p.add_argument("--epochs", type=int, default=5, help="epochs (default 5)")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate (default 1e-3)")
    p.add_argument("--optimizer", default="adam", choices=["adam", "sgd", "rmsprop"])
    p.add_argument("--recompute-bn", action=argparse.BooleanOptionalAction, default=True,
                   help="after every epoch, set the BatchNorm running statistics to the training data's with that "
                   "epoch's weights, so the checkpoint computes in eval mode what it learned (default: on; "
                   "--no-recompute-bn keeps PyTorch's running averages, which lag after few batches)")  # fmt: skip
    add_metric_args(p)
    p.set_defaults(func=_train, batch_size=64)

    p = sub.add_parser("evaluate", help="evaluate a checkpoint on a data set", description="Print the metric of a model on a data split.")
    add_model_args(p)
    add_data_args(p)
    add_metric_args(p)
    p.add_argument("--amp", choices=["bf16", "fp16"], help="forward passes in bfloat16 or float16 (torch.autocast)")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("layers", help="list a model's conv layers", description="List the dotted names of a model's conv layers in forward order.")
    add_model_args(p)
    p.set_defaults(func=_layers)

    p = sub.add_parser("models", help="list the model zoo", description="List the registered models.")
    p.set_defaults(func=_models)

    p = sub.add_parser(
        "report",
        help="(re)build report.html from the sections in a folder",
        description="Collect every section saved under <folder>/sections and write <folder>/report.html.",
    )
    p.add_argument("folder", help="a run folder, e.g. runs/demo")
    p.set_defaults(func=_report)

    p = sub.add_parser(
        "demo",
        help="the main job: LeNet-5 vs LeNet-5x10 on the bundled MNIST, analyze and compress, one report",
        description="Train (or reuse cached) LeNet-5 and LeNet-5x10 on mnist5k, run the impulse-response paper's "
        "comparison (both shuffle probes on conv2, impulse responses), analyze LeNet-5x10 with every lens, compress it "
        "to at most half its MACs within 1 point on held-out data; write JSON, figures and one report.html.",
    )
    p.add_argument("--out", "-o", default="runs/demo", help="output folder (default runs/demo)")
    p.add_argument("--epochs", type=int, default=4, help="training epochs per network (default 4)")
    p.add_argument("--repeats", type=int, default=2, help="shuffles per channel (default 2)")
    p.add_argument("--limit", type=int, help="use only this many training and test images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto (CUDA when present, else the CPU), cpu, cuda or cuda:N")
    p.set_defaults(func=_demo)


def _train(args: argparse.Namespace) -> int:
    from ..checkpoint import save_checkpoint
    from ..core.metrics import get_metric
    from ..training import batch_norms, evaluate, fit

    if args.split == "test":
        raise ValueError("train --split test would train on the test split and then score the model on it: use "
                         "--split train (the default) or all")
    out = out_dir(args, writes=("model.pt",))
    train = data_from_args(args)
    test = data_from_args(args, "test")
    held_out = args.split != "all"
    if not held_out:
        say("note: --split all trains on every sample, the test split's too: the test score is not held out")
    model = model_from_args(args, train, training=True)
    metric = metric_from_args(args, model, train)
    name = get_metric(metric).name
    hist = fit(model, train, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, optimizer=args.optimizer,
               seed=args.seed, val=test, metric=metric, checkpoint=out / "model.pt", device=args.device,
               recompute_bn=args.recompute_bn)  # fmt: skip
    score = evaluate(model, test, metric, device=args.device)
    bn_stats = "recomputed on the training data" if args.recompute_bn else "running averages"
    info = {"history": hist, f"test_{name}": score, "test_held_out": held_out, "train_samples": len(train),
            "test_samples": len(test), "bn_stats": bn_stats if batch_norms(model) else None}  # fmt: skip
    save_checkpoint(model, out / "model.pt", extra=info)
    atomic_write(out / "train.json", json.dumps(info, indent=1))
    print(f"test {name} {score:.4f}{'' if held_out else ' (not held out: trained on it)'}; checkpoint {out / 'model.pt'}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from ..core.distributed import is_main
    from ..core.metrics import get_metric
    from ..training import evaluate

    data = data_from_args(args)
    model = model_from_args(args, data)
    metric = metric_from_args(args, model, data)
    value = evaluate(model, data, metric, batch_size=args.batch_size, device=args.device, amp=args.amp)
    if is_main():
        print(f"{get_metric(metric).name} {value:.4f}")
    return 0


def _layers(args: argparse.Namespace) -> int:
    from ..core.layers import conv_layers

    model = model_from_args(args)
    for n in conv_layers(model):
        m = model.get_submodule(n)
        print(f"{n}\t{m.in_channels}->{m.out_channels}\tkernel {tuple(m.kernel_size)}")
    return 0


def _models(args: argparse.Namespace) -> int:
    from ..models import list_models

    for n in list_models():
        print(n)
    print("torchvision:<name>   any torchvision classification model")
    print("path/to/file.py:fn   your own model factory")
    return 0


def _report(args: argparse.Namespace) -> int:
    from ..report import load_sections, write_report

    if not load_sections(args.folder):
        say(f"no sections under {args.folder}/sections")
        return 1
    print(write_report(args.folder))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from ..experiments.demo import run_demo

    run_demo(args.out, epochs=args.epochs, repeats=args.repeats, limit=args.limit, seed=args.seed, device=args.device)
    return 0
