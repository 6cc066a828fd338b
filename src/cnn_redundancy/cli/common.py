"""Options shared by the commands: model, data, metric, output folder, seed, device."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_model_args", "add_data_args", "add_out_arg", "add_metric_args", "model_from_args", "data_from_args",
           "metric_from_args", "parse_kw", "say", "out_dir", "RUNS_FILE"]  # fmt: skip

#: the parameters of every command run into an output folder, by command
RUNS_FILE = "runs.json"
#: arguments that do not change a run's numbers (left out of the record)
_NOT_RECORDED = {"func", "analysis", "experiment", "quiet", "overwrite", "device", "model_default", "dataset_default", "writes", "resume"}


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
    g.add_argument("--checkpoint", "-c", "--weights", dest="checkpoint",
                   help="a checkpoint written by this toolkit, or a weights file for --model: a state_dict, "
                        "{'state_dict': ...} or {'model': ...} ('module.' / 'model.' key prefixes are fine)")
    g.add_argument("--model", "-m", default=None,
                   help=f"model: registered, torchvision:<name> or file.py:factory (default {default}; with -c: the "
                        "model the checkpoint names, which may not be a file: name a file model here)")
    g.add_argument("--model-kw", nargs="*", metavar="KEY=VALUE",
                   help="model arguments, e.g. width=10 (in_channels, num_classes, input_size default to the data's)")
    g.add_argument("--device", default="auto", help="auto (CUDA when present, else the CPU), cpu, cuda or cuda:N "
                   "(default auto; under torchrun each process takes cuda:LOCAL_RANK)")
    p.set_defaults(model_default=default)


def add_data_args(p: argparse.ArgumentParser, *, split: str = "test", required: bool = True) -> None:
    g = p.add_argument_group("data")
    names = "mnist5k, digits, mnist, cifar10, cifar100, imagefolder, shapes"
    g.add_argument("--dataset", "-d", default=None,
                   help=f"{names}, or a folder (read as --root) (default: what --root holds, else "
                        f"{'mnist5k' if required else 'none: not needed'})")  # fmt: skip
    p.set_defaults(dataset_default="mnist5k" if required else None)
    g.add_argument("--root", help="folder with the data set's files (mnist, cifar*: the python batches, read without "
                                  "running code; imagefolder: root/<class>/<image> or root/<split>/<class>/<image>)")
    g.add_argument("--split", default=split, choices=["train", "test", "all"], help=f"which split (default {split})")
    g.add_argument("--limit", type=int, help="use only this many samples (a seeded random subset)")
    g.add_argument("--batch-size", type=int, default=256, help="mini-batch size (default 256)")
    g.add_argument("--image-size", type=int, nargs="+", metavar="N", help="imagefolder: resize to N x N (or H W)")
    g.add_argument("--grayscale", action="store_true", help="imagefolder: one channel")
    g.add_argument("--normalize", default=None, metavar="imagenet|none|MEAN,STD",
                   help="imagenet, none (values in [0, 1]) or mean,std (one value or one per channel each); "
                        "default: the data set's usual statistics (imagefolder: 0.5,0.5)")


def add_out_arg(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("--out", "-o", default=default, help=f"output folder for JSON and figures (default {default})")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--overwrite", action="store_true",
                   help=f"write into --out even though it holds results of this command run with other parameters "
                        f"(recorded in <out>/{RUNS_FILE})")


def add_metric_args(p: argparse.ArgumentParser, *, none: bool = False) -> None:
    choices = ["auto", "accuracy", "dice"] + (["none"] if none else [])
    p.add_argument("--metric", default="auto", choices=choices,
                   help="the model's metric; auto (default): dice for per-pixel outputs [N, C, H, W], else accuracy"
                        + ("; none: skip it where the analysis allows" if none else ""))
    add_output_key_arg(p, "the metric")


def add_output_key_arg(p: argparse.ArgumentParser, reader: str = "the analysis") -> None:
    p.add_argument("--output-key", default=None, metavar="KEY|INDEX",
                   help=f"for a model returning a dict or tuple: the output {reader} reads (e.g. out, or 0)")


def output_key(args: argparse.Namespace) -> str | int | None:
    """``--output-key``: a dict key, or an index (digits) into a tuple output; ``None`` where not given."""
    key = getattr(args, "output_key", None)
    return int(key) if key is not None and key.lstrip("-").isdigit() else key


def _data_classes(data) -> int | None:
    """How many classes a data set declares (``classes``, through subsets), or ``None``."""
    while data is not None:
        classes = getattr(data, "classes", None)
        if classes:
            return len(classes)
        data = getattr(data, "dataset", None)
    return None


def _fitted_kwargs(name: str, data, given: dict[str, Any]) -> dict[str, Any]:
    """``in_channels``, ``num_classes``, ``input_size`` from the data, where the factory takes them and they are not given."""
    from ..core.batches import sample_shape
    from ..models import data_fitted_parameters

    if data is None:
        return {}
    params = data_fitted_parameters(name)
    c, h, w = (sample_shape(data) + (None, None, None))[:3]
    found = {"in_channels": c, "num_classes": _data_classes(data), "input_size": h if h == w else None}
    return {k: v for k, v in found.items() if k in params and k not in given and v is not None}


def model_from_args(args: argparse.Namespace, data=None, *, training: bool = False):
    """The model of ``-c`` / ``-m``; without a checkpoint, built with ``--seed`` and fitted to ``data``'s shape and
    classes (``training``: the weights are about to be trained, so random ones are what is wanted)."""
    from ..checkpoint import load_checkpoint
    from ..models import get_model

    kw = parse_kw(args.model_kw)
    if getattr(args, "checkpoint", None):
        model = load_checkpoint(args.checkpoint, model=args.model, model_kw=kw or None)
        if data is not None:
            _warn_input_shift(args, model, data)
        return model
    name = args.model or args.model_default
    seed = getattr(args, "seed", 0)
    fitted = _fitted_kwargs(name, data, kw)
    say((f"training {name} from random weights (seed {seed})" if training else
         f"note: no --checkpoint given, using {name} with random weights (seed {seed})")
        + (f", built for the data: {', '.join(f'{k}={v}' for k, v in fitted.items())}" if fitted else ""))
    return get_model(name, seed=seed, **fitted, **kw).eval()


def _warn_input_shift(args: argparse.Namespace, model, data) -> None:
    """One line when the data reaches the model's first BatchNorm far from its training statistics."""
    from ..training import input_shift

    shift = input_shift(model, data, device=getattr(args, "device", None))
    if shift is not None and shift.far:
        scaling = f"--normalize {args.normalize}" if getattr(args, "normalize", None) else "the data set's default scaling"
        say(f"warning: {shift.describe()}: were its training images scaled otherwise than here ({scaling})? Give its "
            "training's --normalize (imagenet, none or MEAN,STD), or recompute stale running statistics "
            "(cnn_redundancy.recompute_bn_stats); until then its metric on these images may mean little")


def dataset_from_args(args: argparse.Namespace) -> str | None:
    """``--dataset``; without it, the data set ``--root`` holds (said once), else the command's default.
    The answer is written back to ``args.dataset``, so what is recorded is what was read."""
    from ..data import DATASETS, guess_dataset

    given = args.dataset
    if given is not None and given not in DATASETS and Path(given).expanduser().is_dir():  # a folder, not a name
        root = getattr(args, "root", None)
        if root is not None and Path(root).expanduser().resolve() != Path(given).expanduser().resolve():
            raise ValueError(f"--dataset takes a data set's name ({', '.join(DATASETS)}), and {given} is a folder: "
                             f"give the files' folder once, as --root (--root is {root})")
        args.root, args.dataset = given, guess_dataset(given)
        say(f"--dataset {given} is a folder: read as --root {given} --dataset {args.dataset}")
    elif args.dataset is None and getattr(args, "root", None) is not None:
        args.dataset = guess_dataset(args.root)
        say(f"--root {args.root}: read as --dataset {args.dataset} (name --dataset to read it otherwise)")
    elif args.dataset is None:
        args.dataset = getattr(args, "dataset_default", None)
    return args.dataset


def data_from_args(args: argparse.Namespace, split: str | None = None):
    from torch.utils.data import Subset

    from ..data import load_dataset, subset

    dataset_from_args(args)  # set already by the command line's main; called directly, resolved here
    kw: dict[str, Any] = {}
    if args.normalize is not None:
        kw["normalize"] = args.normalize
    if args.dataset == "imagefolder":
        kw.update(grayscale=args.grayscale, image_size=_image_size(args.image_size))
    elif args.image_size or args.grayscale:
        raise ValueError("--image-size and --grayscale apply to --dataset imagefolder")
    split = split or args.split
    ds = load_dataset(args.dataset, split, root=args.root, **kw)
    if args.dataset == "imagefolder" and isinstance(ds, Subset):  # no <root>/<split> folder
        say(f"note: {args.root} has no {split}/ folder: its {split} split is {len(ds)} of its {len(ds.dataset)} images, "
            "the same share of every class (seed 0); --split all reads every image")
    return subset(ds, args.limit, seed=getattr(args, "seed", 0))


def _image_size(size: list[int] | None):
    if size is None:
        return None
    if len(size) > 2 or min(size) < 1:
        raise ValueError(f"--image-size takes N (square) or H W, positive, not {' '.join(map(str, size))}")
    return size[0] if len(size) == 1 else tuple(size)


def metric_from_args(args: argparse.Namespace, model, data):
    """``--metric`` (``auto``: from the model's output shape on ``data``) and ``--output-key`` as a metric, or ``None``."""
    from ..core.metrics import get_metric, infer_metric

    key = output_key(args)
    if args.metric == "none":
        return None
    name = args.metric
    if name == "auto":
        name = infer_metric(model, data, key)
        say(f"note: metric {name} (from the model's output shape; --metric to choose)")
    return get_metric(name, output=key) if key is not None else name


def say(msg: str) -> None:
    """A note on stderr (from rank 0 only under ``torchrun``)."""
    from ..core.distributed import is_main

    if is_main():
        print(msg, file=sys.stderr)


def _record(args: argparse.Namespace) -> dict[str, Any]:
    """The parameters of this run that decide its numbers (what the output folder records)."""
    from ..core.results import to_plain

    return to_plain({k: v for k, v in sorted(vars(args).items()) if k not in _NOT_RECORDED})


def out_dir(args: argparse.Namespace, writes: tuple[str, ...] = ()) -> Path:
    """The output folder, made; refuses a file, a run that would overwrite its input checkpoint (one of
    ``writes``), and (without ``--overwrite``) a folder holding results of this command with other parameters."""
    from ..core.results import atomic_write

    p = Path(args.out)
    if p.exists() and not p.is_dir():
        raise ValueError(f"--out {p} is a file; pass a folder (it is created if missing)")
    ckpt = getattr(args, "checkpoint", None)
    if ckpt and any((p / w).resolve() == Path(ckpt).resolve() for w in writes):
        raise ValueError(f"--out {p} would overwrite the input checkpoint {ckpt}: write to another folder")
    p.mkdir(parents=True, exist_ok=True)
    command = " ".join(x for x in (args.command, getattr(args, "experiment", None) and args.experiment.name) if x)
    runs_file = p / RUNS_FILE
    try:
        runs = json.loads(runs_file.read_text()) if runs_file.exists() else {}
    except json.JSONDecodeError:
        runs = {}
    now, before = _record(args), runs.get(command)
    holds = any(x.name != RUNS_FILE for x in p.iterdir())  # a run that failed before writing left nothing to mix
    if before is not None and before != now and holds and not getattr(args, "overwrite", False):
        diff = ", ".join(f"{k} {before.get(k)!r} -> {now.get(k)!r}" for k in sorted(now.keys() | before.keys())
                         if before.get(k) != now.get(k))
        raise ValueError(f"{p} holds results of '{command}' run with other parameters ({diff}); results of two runs "
                         f"would be mixed: use another --out, or --overwrite to replace them")
    runs[command] = now
    atomic_write(runs_file, json.dumps(runs, indent=1, sort_keys=True))
    return p
