"""Options shared by the commands: model, data, output folder, seed, device."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_model_args", "add_data_args", "add_out_arg", "model_from_args", "data_from_args", "parse_kw", "say",
           "out_dir"]  # fmt: skip


def parse_kw(items: list[str] | None) -> dict[str, Any]:
    """``["width=10", "activation=tanh"]`` -> ``{"width": 10, "activation": "tanh"}`` (values parsed as JSON when they can be)."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"expected key=value, got {item!r}")
        k, v = item.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def add_model_args(p: argparse.ArgumentParser, *, default: str = "lenet5") -> None:
    g = p.add_argument_group("model")
    g.add_argument("--checkpoint", "-c", help="a checkpoint written by 'cnn-redundancy train' (overrides --model)")
    g.add_argument("--model", "-m", default=default, help=f"model name: registered, torchvision:<name> or file.py:factory (default {default})")
    g.add_argument("--model-kw", nargs="*", metavar="KEY=VALUE", help="model arguments, e.g. width=10")
    g.add_argument("--device", default="auto", help="auto (CUDA when present, else the CPU), cpu, cuda or cuda:N "
                   "(default auto; under torchrun each process takes cuda:LOCAL_RANK)")


def add_data_args(p: argparse.ArgumentParser, *, split: str = "test", required: bool = True) -> None:
    g = p.add_argument_group("data")
    names = "mnist5k, digits, mnist, cifar10, cifar100, imagefolder"
    g.add_argument("--dataset", "-d", default="mnist5k" if required else None,
                   help=f"{names} (default {'mnist5k' if required else 'none: not needed'})")
    g.add_argument("--root", help="folder with the data set's files (mnist, cifar*, imagefolder)")
    g.add_argument("--split", default=split, choices=["train", "test", "all"], help=f"which split (default {split})")
    g.add_argument("--limit", type=int, help="use only this many samples (a seeded random subset)")
    g.add_argument("--batch-size", type=int, default=256, help="mini-batch size (default 256)")


def add_out_arg(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("--out", "-o", default=default, help=f"output folder for JSON and figures (default {default})")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")


def model_from_args(args: argparse.Namespace):
    from ..checkpoint import load_checkpoint
    from ..models import get_model

    if getattr(args, "checkpoint", None):
        return load_checkpoint(args.checkpoint)
    say(f"note: no --checkpoint given, using {args.model} with random weights (seeded by --seed)")
    import torch

    torch.manual_seed(getattr(args, "seed", 0))  # the same weights in every process under torchrun
    return get_model(args.model, **parse_kw(args.model_kw)).eval()


def data_from_args(args: argparse.Namespace, split: str | None = None):
    from ..data import load_dataset, subset

    ds = load_dataset(args.dataset, split or args.split, root=args.root)
    return subset(ds, args.limit, seed=getattr(args, "seed", 0))


def say(msg: str) -> None:
    """A note on stderr (from rank 0 only under ``torchrun``)."""
    from ..core.distributed import is_main

    if is_main():
        print(msg, file=sys.stderr)


def out_dir(args: argparse.Namespace) -> Path:
    p = Path(args.out)
    p.mkdir(parents=True, exist_ok=True)
    return p
