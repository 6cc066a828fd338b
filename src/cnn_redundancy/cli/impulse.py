"""``shuffle``, ``impulse`` and ``demo`` commands (the impulse-response paper)."""

from __future__ import annotations

import argparse

from .common import add_data_args, add_model_args, add_out_arg, data_from_args, model_from_args, out_dir, say


def register(sub) -> None:
    p = sub.add_parser(
        "shuffle",
        help="channel- or pixel-shuffle probe of a conv layer's input channels",
        description="For each input channel k of a conv layer, shuffle channel k across the samples of each "
        "mini-batch (--mode channel) or permute its pixels within each sample (--mode pixel), and measure the cosine "
        "similarity of the observed activation and the model's accuracy. Writes <out>/<mode>_shuffle.json and .png.",
    )
    add_model_args(p)
    add_data_args(p)
    add_out_arg(p, "runs/shuffle")
    p.add_argument("--layer", "-l", required=True, help="conv layer whose input channels are perturbed (name or glob)")
    p.add_argument("--mode", choices=["channel", "pixel"], default="channel", help="perturbation (default channel)")
    p.add_argument("--observe", help="module whose output is compared (default: the layer's activation)")
    p.add_argument("--channels", help="comma-separated input channels (default all)")
    p.add_argument("--repeats", type=int, default=1, help="shuffles per channel (default 1)")
    p.add_argument("--metric", default="accuracy", choices=["accuracy", "dice", "none"], help="'none' measures the cosine only (fastest)")
    p.add_argument("--engine", default="auto", choices=["auto", "fast", "naive"], help="computation (default auto: fast where traceable)")
    p.set_defaults(func=_shuffle)

    p = sub.add_parser(
        "impulse",
        help="unit impulse responses of every conv kernel and their NCC",
        description="Pass a unit impulse (one per input channel) through the model, keep every conv kernel's response, "
        "and compute the normalized cross-correlation between responses. Writes <out>/impulse.json and figures.",
    )
    add_model_args(p)
    add_out_arg(p, "runs/impulse")
    p.add_argument("--layers", "-l", nargs="*", help="conv layers (names or globs; default all)")
    p.add_argument("--input-shape", help="C,H,W of the model input (default: what the model declares)")
    p.add_argument("--mode", choices=["network", "linear", "both"], default="network")
    p.add_argument("--lag", choices=["max", "zero"], default="max", help="NCC at the best spatial shift (default) or at zero shift")
    p.add_argument("--threshold", type=float, default=0.9, help="NCC threshold for the redundant fraction (default 0.9)")
    p.set_defaults(func=_impulse)

    p = sub.add_parser(
        "demo",
        help="the main job: LeNet-5 vs LeNet-5x10 on the bundled MNIST, with report",
        description="Train (or reuse cached) LeNet-5 and LeNet-5x10 on mnist5k, run both shuffle probes on every input "
        "channel of conv2 and the impulse analysis on both conv layers; write JSON, figures and report.html.",
    )
    p.add_argument("--out", "-o", default="runs/demo", help="output folder (default runs/demo)")
    p.add_argument("--epochs", type=int, default=4, help="training epochs per network (default 4)")
    p.add_argument("--repeats", type=int, default=2, help="shuffles per channel (default 2)")
    p.add_argument("--limit", type=int, help="use only this many training and test images")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_demo)


def _shuffle(args: argparse.Namespace) -> int:
    from ..probes import probe
    from ..report import save_figure

    model = model_from_args(args)
    data = data_from_args(args)
    chans = [int(c) for c in args.channels.split(",")] if args.channels else None
    res = probe(model, data, args.layer, mode=args.mode, observe=args.observe, channels=chans, repeats=args.repeats,
                batch_size=args.batch_size, seed=args.seed, metric=None if args.metric == "none" else args.metric,
                engine=args.engine, partial=out_dir(args) / f"{args.mode}_shuffle.json")  # fmt: skip
    out = out_dir(args)
    path = res.save(out / f"{args.mode}_shuffle.json")
    save_figure(res.plot(title=f"{args.mode} shuffle of the input of {res.layer}"), out / f"{args.mode}_shuffle.png")
    s = res.summary()
    line = f"{res.layer}: mean cosine {s['mean_cosine']:.4f} (min {s['min_cosine']:.4f})"
    if res.metric:
        line += f"; baseline {res.metric_name} {s['baseline']:.4f}, mean drop {s['mean_drop']:.4f}, max drop {s['max_drop']:.4f}"
    print(line)
    say(f"wrote {path}")
    return 0


def _impulse(args: argparse.Namespace) -> int:
    from ..impulse import impulse_response
    from ..report import save_figure

    model = model_from_args(args)
    shape = tuple(int(v) for v in args.input_shape.split(",")) if args.input_shape else None
    res = impulse_response(model, shape, layers=args.layers or None, mode=args.mode, lag=args.lag)
    out = out_dir(args)
    path = res.save(out / "impulse.json")
    for layer in res.layers:
        safe = layer.replace(".", "_")
        save_figure(res.plot(layer, kind="responses"), out / f"{safe}_responses.png")
        save_figure(res.plot(layer, kind="ncc"), out / f"{safe}_ncc.png")
    for layer, frac in res.redundant_fraction(args.threshold).items():
        print(f"{layer}: {frac:.1%} of kernels have a partner with NCC >= {args.threshold}")
    say(f"wrote {path}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    run_demo(args.out, epochs=args.epochs, repeats=args.repeats, limit=args.limit, seed=args.seed)
    return 0
