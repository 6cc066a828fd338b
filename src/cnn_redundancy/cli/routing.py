"""``route`` (strongest-activation labels and a router) and ``reproduce routing`` (the layer-skipping paper)."""

from __future__ import annotations

import argparse
import json
import time

from .common import add_data_args, add_model_args, add_out_arg, data_from_args, model_from_args, out_dir, say


def register(sub) -> None:
    p = sub.add_parser(
        "route",
        help="label images by the conv layer of their strongest activations; train a router",
        description="For the first --feature-maps maps of each conv layer, select the --top images with the "
        "highest mean absolute activation and label them with the layer (deeper wins on repetition). Writes "
        "<out>/labels.json, <out>/labels.png and, with --router-epochs > 0, <out>/router.pt (CNN 2).",
    )
    add_model_args(p, default="equal_width_cnn")
    add_data_args(p, split="train")
    add_out_arg(p, "runs/route")
    p.add_argument("--layers", nargs="*", help="conv layers (names or globs; default all)")
    p.add_argument("--feature-maps", type=int, default=10, help="first feature maps per layer (default 10)")
    p.add_argument("--top", type=int, default=10, help="images per feature map (default 10)")
    p.add_argument("--where", default="activation", choices=["activation", "conv"], help="score the activation (default) or the conv output")
    p.add_argument("--router-epochs", type=int, default=0, help="train a router for this many epochs (default 0: no router)")
    p.set_defaults(func=_route)


def register_reproduce(rsub) -> None:
    p = rsub.add_parser(
        "routing",
        help="the layer-skipping paper: labels, router, skip network, end-to-end check",
        description="Train CNN 1 (equal_width_cnn), label images by strongest activations, train the router "
        "(CNN 2) and the skip network (CNN 3); report the paper's protocol and the end-to-end use on the real "
        "test set against CNN 1 and a confidence-based early exit. Writes result.json, figures, a report section.",
    )
    p.add_argument("--dataset", "-d", default="mnist5k", help="mnist5k (default), digits, mnist, cifar10, cifar100")
    p.add_argument("--root", help="folder with the data set's files (mnist, cifar*)")
    add_out_arg(p, "runs/routing")
    p.add_argument("--channels", type=int, nargs="+", default=[16, 16, 16], help="feature maps per conv layer (default 16 16 16)")
    p.add_argument("--head", default="shared", choices=["shared", "per_exit"], help="one dense layer for every exit (default) or one per exit")
    p.add_argument("--epochs", type=int, default=5, help="epochs on the full training set (CNN 1 and full-data nets; default 5; the paper: 20)")
    p.add_argument("--subset-epochs", type=int, default=20, help="epochs of CNN 2 and CNN 3 on the labelled subset (default 20, the paper's)")
    p.add_argument("--feature-maps", type=int, default=10)
    p.add_argument("--top", type=int, default=10)
    p.add_argument("--optimizer", default="rmsprop", choices=["rmsprop", "adam", "sgd"], help="default rmsprop (the paper's)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--limit", type=int, help="use only this many training images (and a fifth as many test images)")
    p.add_argument("--latency-repeats", type=int, default=3, help="timing repeats (0: no timing)")
    p.add_argument("--quick", action="store_true", help="a tiny run (small subsets, narrow model, 1 epoch) to check the pipeline")
    p.set_defaults(func=_reproduce)


def _route(args: argparse.Namespace) -> int:
    from ..report import save_figure
    from ..routing import strongest_activation_labels, train_router

    out = out_dir(args)
    model = model_from_args(args)
    data = data_from_args(args)
    labels = strongest_activation_labels(model, data, layers=args.layers or None, feature_maps=args.feature_maps,
                                         top=args.top, where=args.where, batch_size=args.batch_size)
    labels.save(out / "labels.json")
    save_figure(labels.plot(data), out / "labels.png")
    print("images labelled per layer: " + ", ".join(f"{k}={v}" for k, v in labels.counts.items()))
    if args.router_epochs > 0:
        from ..checkpoint import save_checkpoint

        router, hist = train_router(data, labels, epochs=args.router_epochs, seed=args.seed)
        save_checkpoint(router, out / "router.pt", extra={"history": hist, "layers": labels.layers})
        print(f"router: training accuracy {hist['train_metric'][-1]:.3f}; checkpoint {out / 'router.pt'}")
    print(f"wrote {out / 'labels.json'}")
    return 0


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)


def _reproduce(args: argparse.Namespace) -> int:
    from ..data import load_dataset, subset
    from ..report import Figure, Section, Table, save_figure, write_report
    from ..routing import layer_skipping_experiment

    out = out_dir(args)
    t0 = time.perf_counter()
    train = load_dataset(args.dataset, "train", root=args.root)
    test = load_dataset(args.dataset, "test", root=args.root)
    kw = {"channels": args.channels, "head": args.head, "epochs": args.epochs, "router_epochs": args.subset_epochs,
          "skip_epochs": args.subset_epochs, "feature_maps": args.feature_maps, "top": args.top,
          "optimizer": args.optimizer, "lr": args.lr, "latency_repeats": args.latency_repeats, "seed": args.seed}
    limit = args.limit
    if args.quick:
        limit = limit or 300
        kw.update(channels=[4, 4, 4], epochs=1, router_epochs=2, skip_epochs=2, latency_repeats=1,
                  feature_maps=min(args.feature_maps, 4), top=min(args.top, 5))
    if limit:
        train, test = subset(train, limit, seed=args.seed), subset(test, max(limit // 5, 20), seed=args.seed)
    say(f"layer skipping on {args.dataset}: {len(train)} training and {len(test)} test images")
    res, art = layer_skipping_experiment(train, test, **kw)
    res.save(out / "result.json")
    labels = art["labels"]
    labels.save(out / "labels.json")
    save_figure(res.plot(), out / "routing_tradeoff.png")
    save_figure(labels.plot(train), out / "routing_labels.png")
    elapsed = time.perf_counter() - t0

    rows = [[r["method"], r["accuracy"], r["mean_conv_layers"], r["macs"] / 1e6, r["macs_with_router"] / 1e6,
             r["latency_ms"] if r["latency_ms"] is not None else "n/a", "/".join(map(str, r["exit_histogram"]))]
            for r in res.end_to_end]
    conf = [[c["threshold"], c["accuracy"], c["mean_conv_layers"], c["macs"] / 1e6, "/".join(map(str, c["exit_histogram"]))]
            for c in res.confidence]
    p = res.paper
    full = res.end_to_end[0]
    routed = [r for r in res.end_to_end if "router" in r["method"]]
    best_routed = max(routed, key=lambda r: r["accuracy"])
    conf_match = [c for c in res.confidence if c["macs"] <= best_routed["macs_with_router"]]
    best_conf = max(conf_match, key=lambda c: c["accuracy"]) if conf_match else None
    findings = [
        f"{p['n_labelled']} images labelled ({', '.join(f'{k}: {v}' for k, v in labels.counts.items())}); "
        f"{p['n_heldout']} held out for the paper's protocol.",
        f"Router (CNN 2) held-out accuracy {p['router_accuracy']:.3f} (always predicting the most common label: "
        f"{p['router_majority_baseline']:.3f}); the paper reports 62% on MNIST.",
        f"Paper's protocol: CNN 3 on the held-out labelled images {p['cnn3_accuracy_true_exits']:.3f} with their own "
        f"labels as exits, {p['cnn3_accuracy_router_exits']:.3f} with the router's exits (CNN 1, which trained on "
        f"these images: {p['cnn1_accuracy_on_heldout']:.3f}). The paper reports close to 100%.",
        f"Real test set: CNN 1 {full['accuracy']:.3f} at {full['macs'] / 1e6:.2f} M MACs; best routed CNN 3 "
        f"({best_routed['method']}) {best_routed['accuracy']:.3f} at {best_routed['macs_with_router'] / 1e6:.2f} M MACs "
        f"with the router, {best_routed['mean_conv_layers']:.2f} conv layers on average.",
    ]
    if best_conf is not None:
        verdict = "does better than" if best_conf["accuracy"] > best_routed["accuracy"] else "does no better than"
        findings.append(
            f"Confidence early exit at no more compute (threshold {best_conf['threshold']}): {best_conf['accuracy']:.3f} "
            f"at {best_conf['macs'] / 1e6:.2f} M MACs: it {verdict} the router."
        )
    if full["latency_ms"] and best_routed["latency_ms"]:
        findings.append(
            f"Measured CPU latency per image: CNN 1 {full['latency_ms']:.4f} ms, routed {best_routed['latency_ms']:.4f} ms "
            f"(speedup {full['latency_ms'] / best_routed['latency_ms']:.2f}x; ideal from MACs "
            f"{full['macs'] / best_routed['macs_with_router']:.2f}x)."
        )
    findings.append(f"Run time {elapsed:.0f} s.")
    section = Section(
        key="routing",
        title="Layer skipping by strongest activations",
        intro="CNN 1 (equal-size conv layers, one dense layer) labels images by the conv layer where they give one of "
        "the strongest activations; CNN 2 learns to predict that label; CNN 3 runs each image only up to its layer "
        f"(later layers not computed). {args.dataset}, {len(train)} training / {len(test)} test images, channels "
        f"{kw['channels']}, head {args.head}, {kw['epochs']} epochs (full set), optimizer {args.optimizer}.",
        findings=findings,
        tables=[
            Table("End to end on the real test set", ["method", "accuracy", "mean conv layers", "M MACs (net)",
                                                        "M MACs (+router)", "latency ms/image", "exits 0/1/2"], rows,
                  note="The router picks the exit of every test image; fixed-exit rows use a jointly trained early-exit net."),
            Table("Confidence early exit (threshold sweep)", ["threshold", "accuracy", "mean conv layers", "M MACs", "exits"], conf),
        ],
        figures=[Figure("routing_tradeoff.png", "Accuracy against compute on the real test set."),
                 Figure("routing_labels.png", "Images labelled with each layer (training set).")],
        order=40,
    )
    write_report(out, [section])
    (out / "summary.json").write_text(json.dumps({"seconds": elapsed, "findings": findings}, indent=1))
    for f in findings:
        print(f)
    for r in rows:
        print("  " + " | ".join(_fmt(v) for v in r))
    print(f"report: {out / 'report.html'}")
    return 0
