"""One command per registered analysis and one ``reproduce`` subcommand per registered experiment,
generated from the registries (:mod:`cnn_redundancy.core.registry`): nothing here knows a method."""

from __future__ import annotations

import argparse
import inspect
from typing import Any

from ..core.distributed import is_main
from ..core.registry import Option, list_analyses, list_experiments
from .common import (
    add_data_args,
    add_metric_args,
    add_model_args,
    add_out_arg,
    add_output_key_arg,
    data_from_args,
    metric_from_args,
    model_from_args,
    out_dir,
    output_key,
    say,
)


def _text(s: str | None) -> str | None:
    """A help text as argparse prints it literally (it %-formats help strings: "50%" must be "50%%")."""
    return None if s is None else s.replace("%", "%%")


def _add_option(p: argparse.ArgumentParser, opt: Option, default: Any) -> None:
    flag = "--" + opt.name.replace("_", "-")
    if isinstance(default, bool) and opt.type is None:
        if default:
            p.add_argument("--no-" + opt.name.replace("_", "-"), dest=opt.name, action="store_false", help=_text(opt.help))
        else:
            p.add_argument(flag, dest=opt.name, action="store_true", help=_text(opt.help))
        return
    typ = opt.type or (type(default) if default is not None and not isinstance(default, list | tuple) else str)
    shown = " ".join(map(str, default)) if isinstance(default, list | tuple) else default
    kw: dict[str, Any] = {"dest": opt.name, "default": default,
                          "help": _text(opt.help if default is None else f"{opt.help} (default {shown})")}
    if opt.choices is not None:
        kw["choices"] = [c for c in opt.choices if c is not None]
    if opt.nargs is not None:
        kw["nargs"] = opt.nargs
    p.add_argument(flag, type=typ, **kw)


def _options(p: argparse.ArgumentParser, fn, options: tuple[Option, ...]) -> None:
    params = inspect.signature(fn).parameters
    for opt in options:
        _add_option(p, opt, params[opt.name].default)


def _observe(spec: list[str] | None):
    """``--observe act2`` (one layer) or ``--observe conv1=act1 conv2=act2``."""
    if not spec:
        return None
    if len(spec) == 1 and "=" not in spec[0]:
        return spec[0]
    pairs = [s.split("=", 1) for s in spec]
    if any(len(p) != 2 for p in pairs):
        raise ValueError("--observe takes one module, or layer=module pairs")
    return dict(pairs)


def register(sub) -> None:
    for a in list_analyses():
        p = sub.add_parser(a.name, help=_text(a.summary), description=f"{a.summary} Writes <out>/{a.name}.json and "
                           f"<out>/{a.name}.png (partial results as it goes).")
        add_model_args(p)
        add_data_args(p, required=a.needs_data)
        add_out_arg(p, f"runs/{a.name}")
        p.add_argument("--layers", "-l", nargs="*", help="conv layers (names or fnmatch globs; default all)")
        if a.observes:
            p.add_argument("--observe", nargs="*", help="module whose output is read (one layer), or layer=module pairs")
        if a.evaluates:
            add_metric_args(p, none=True)
        elif a.reads_output:
            add_output_key_arg(p)
        _options(p, a.fn, a.options)
        p.set_defaults(func=_run_analysis, analysis=a)


def _run_analysis(args: argparse.Namespace) -> int:
    from ..report import save_figure

    a = args.analysis
    out = out_dir(args)
    data = data_from_args(args) if a.needs_data or args.dataset else None
    model = model_from_args(args, data)
    kw: dict[str, Any] = {o.name: getattr(args, o.name) for o in a.options}
    kw.update(batch_size=args.batch_size, seed=args.seed, device=args.device, partial=out / f"{a.name}.json")
    if a.observes:
        kw["observe"] = _observe(args.observe)
    if a.evaluates:
        kw["metric"] = metric_from_args(args, model, data)
    elif a.reads_output:
        kw["output"] = output_key(args)
    res = a.fn(model, data, args.layers or None, **kw)
    if not is_main():  # under torchrun every process holds the result; rank 0 writes it
        return 0
    path = res.save(out / f"{a.name}.json")
    save_figure(res.plot(), out / f"{a.name}.png")
    for line in res.headline():
        print(line)
    say(f"wrote {path} and {out / f'{a.name}.png'}")
    return 0


def register_reproduce(rsub) -> None:
    for e in list_experiments():
        p = rsub.add_parser(e.name, help=_text(e.summary), description=inspect.getdoc(e.run))
        p.add_argument("--out", "-o", default=f"runs/reproduce-{e.name}", help="output folder")
        p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
        p.add_argument("--device", default="auto", help="auto (CUDA when present, else the CPU), cpu, cuda or cuda:N")
        p.add_argument("--quick", action="store_true", help="a tiny run to check the pipeline")
        _options(p, e.run, e.options)
        p.set_defaults(func=_run_experiment, experiment=e)


def _run_experiment(args: argparse.Namespace) -> int:
    e = args.experiment
    out_dir(args)
    kw = {o.name: getattr(args, o.name) for o in e.options}
    path = e.run(args.out, quick=args.quick, seed=args.seed, device=args.device, **kw)
    print(f"report: {path}")
    return 0
