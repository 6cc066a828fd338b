"""Commands that return a smaller model: ``compress``, ``prune``, ``remove-trivial``, ``route`` (labels and a router).

``compress``, and ``prune`` / ``remove-trivial`` given ``--target-macs`` or ``--max-drop``, keep three
kinds of data apart: the data set's training split trains and calibrates, a seeded part of it
chooses (validation), and the test split (``--test-split``) only reports.
"""

from __future__ import annotations

import argparse

from .common import (
    add_data_args,
    add_metric_args,
    add_model_args,
    add_out_arg,
    data_from_args,
    metric_from_args,
    model_from_args,
    out_dir,
    output_key,
    say,
)

CRITERIA = ("distinctiveness", "random", "l1", "l2", "fpgm", "taylor")


def _add_guarantee_args(p: argparse.ArgumentParser, *, target: bool = True) -> None:
    g = p.add_argument_group("guarantee (validation data chooses, the test split only reports)")
    if target:
        g.add_argument("--target-macs", type=float, help="stop at this fraction of the original MACs (e.g. 0.5)")
    g.add_argument("--max-drop", type=float, help="stop where the validation metric would drop by more (e.g. 0.01)")
    g.add_argument("--test-split", default="test", choices=["test", "none"],
                   help="the split that verifies (default test; 'none': hold out a seeded fifth of --split)")
    g.add_argument("--finetune-epochs", type=int, default=0, help="fine-tuning after pruning (cosine schedule)")


def register(sub) -> None:
    _register_compress(sub)
    _register_prune(sub)
    _register_remove(sub)
    _register_route(sub)


def _register_compress(sub) -> None:
    from ..compression.compress import CRITERIA as COMPRESS_CRITERIA

    p = sub.add_parser(
        "compress",
        help="a smaller, faster model within a metric drop, verified on the test split beside Torch-Pruning",
        description="Remove dead kernels, merge near-duplicates, remove trivial residual branches, then prune channels "
        "(criterion auto: the best of distinctiveness, Taylor, L1, FPGM on validation data) until --target-macs or "
        "--max-drop on validation data; optionally fine-tune; verify on the test split beside Torch-Pruning's "
        "pruners and random at the same MACs. Writes <out>/model.pt, <out>/compress.json, compress.png, report.html.",
    )
    add_model_args(p)
    add_data_args(p, split="train")
    add_out_arg(p, "runs/compress")
    add_metric_args(p)
    _add_guarantee_args(p)
    p.add_argument("--criterion", default="auto", choices=["auto", *COMPRESS_CRITERIA])
    p.add_argument("--layers", nargs="*", help="conv layers that may lose kernels (names or globs; default all)")
    p.add_argument("--baselines", nargs="*", default=["l1", "taylor", "random"], choices=["l1", "taylor", "random"],
                   help="Torch-Pruning's pruners and random at the same MACs (default all three)")
    p.set_defaults(func=_compress, max_drop_default=0.01)


def _register_prune(sub) -> None:
    p = sub.add_parser(
        "prune",
        help="progressively remove kernels (physically) with a criterion",
        description="Remove --steps kernels one at a time (distinctiveness, random, l1, l2, fpgm, taylor) with real "
        "structural removal. Writes <out>/prune.json (rewritten with the steps done so far as it goes) and "
        "<out>/model.pt (a checkpoint that loads with --checkpoint).",
    )
    add_model_args(p)
    add_data_args(p, split="train")
    add_out_arg(p, "runs/prune")
    p.add_argument("--layers", nargs="*", help="conv layers (names or globs; default all)")
    p.add_argument("--center", choices=["mean", "minmax"], help="center the vectors (lets complementary pairs appear)")
    p.add_argument("--criterion", default="distinctiveness", choices=CRITERIA)
    p.add_argument("--steps", type=int, default=1, help="kernels to remove (default 1)")
    p.add_argument("--rule", default="least-distinct", choices=["least-distinct", "gedeon-harris"])
    p.add_argument("--no-eval", action="store_true", help="skip the test metric before/after")
    add_metric_args(p)
    _add_guarantee_args(p)
    p.set_defaults(func=_prune)


def _register_remove(sub) -> None:
    p = sub.add_parser(
        "remove-trivial",
        help="remove residual branches whose removal keeps the metric within tolerance",
        description="Greedily remove trivial residual branches and save the smaller model as <out>/model.pt "
        "(loadable with --checkpoint) with <out>/removal.json (rewritten with the branches tried so far as it goes; "
        "the ranking sweep first writes <out>/removal-ranking.json).",
    )
    add_model_args(p)
    add_data_args(p)
    add_out_arg(p, "runs/remove-trivial")
    add_metric_args(p)
    p.add_argument("--tolerance", type=float, default=0.01, help="largest allowed metric drop, checked on --split "
                   "itself (default 0.01); --max-drop checks it on validation data and reports on the test split")
    p.add_argument("--resume", action="store_true", help="continue a stopped ranking sweep from the state it left "
                   "(<out>/removal-ranking.state.pt); the removals after it are tried again")
    _add_guarantee_args(p, target=False)
    p.set_defaults(func=_remove)


def _register_route(sub) -> None:
    p = sub.add_parser(
        "route",
        help="label images by the conv layer of their strongest activations; train a router",
        description="Strongest-activation labels (as the strongest-activations command) and, with --router-epochs > 0, "
        "a router (CNN 2) trained on them, saved as <out>/router.pt.",
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


def _compress(args: argparse.Namespace, stages=("dead", "merge", "blocks", "channels"), criterion=None) -> int:
    from ..checkpoint import save_checkpoint
    from ..compression.compress import compress
    from ..core.distributed import is_main
    from ..report import Figure, Section, Table, save_figure, write_report

    out = out_dir(args, writes=("model.pt",))
    data = data_from_args(args)
    test = data_from_args(args, "test") if args.test_split == "test" and args.split != "all" else None
    model = model_from_args(args, data)
    metric = metric_from_args(args, model, data)
    max_drop = args.max_drop if args.max_drop is not None or getattr(args, "target_macs", None) else 0.01
    res = compress(model, data, test=test, target_macs=getattr(args, "target_macs", None), max_drop=max_drop,
                   criterion=criterion or getattr(args, "criterion", "auto"), finetune_epochs=args.finetune_epochs,
                   layers=getattr(args, "layers", None) or None, metric=metric or "accuracy", stages=stages,
                   baselines=getattr(args, "baselines", ["l1", "taylor", "random"]) if "channels" in stages else (),
                   batch_size=args.batch_size, seed=args.seed, device=args.device, partial=out / "compress.json")  # fmt: skip
    if not is_main():  # under torchrun every process holds the result; rank 0 writes it
        return 0
    res.save(out / "compress.json")
    save_checkpoint(res.model, out / "model.pt", extra={"compress": res.final, "guarantee": res.guarantee})
    save_figure(res.plot(), out / "compress.png")
    section = Section("compress", "Compressed: what was removed, verified on the test split", order=5,
                      intro=f"Data: {res.data['how']}.", findings=res.headline(),
                      tables=[Table("Every method at the same MACs (test split; latency: batch of 64, median, a timing)",
                                    ["method", "params", "MACs", "% MACs", f"test {res.metric}", "latency ms"], res.table())],
                      figures=[Figure("compress.png", "Test metric against MACs, every method.")])  # fmt: skip
    write_report(out, [section])
    for line in res.headline():
        print(line)
    say(f"wrote {out / 'model.pt'}, {out / 'compress.json'} and {out / 'report.html'}")
    return 0


def _prune(args: argparse.Namespace) -> int:
    if args.target_macs is not None or args.max_drop is not None:
        return _compress(args, stages=("channels",), criterion=args.criterion if args.criterion != "l2" else "l1")
    from ..checkpoint import save_checkpoint
    from ..compression.pruning import prune
    from ..compression.pruning.surgeon import FOLDED, OUTPUT_LAYERS
    from ..core.distributed import is_main
    from ..core.metrics import get_metric
    from ..training import evaluate

    out = out_dir(args, writes=("model.pt",))
    data = data_from_args(args)
    model = model_from_args(args, data)
    res = prune(model, data, criterion=args.criterion, steps=args.steps, rule=args.rule, center=args.center,
                layers=args.layers or None, seed=args.seed, batch_size=args.batch_size, device=args.device,
                output=output_key(args), partial=out / "prune.json")
    extra = {}
    if not args.no_eval:
        test = data_from_args(args, "test")
        metric = metric_from_args(args, model, test)
        extra = {"metric": get_metric(metric).name, "test_before": evaluate(model, test, metric, device=args.device),
                 "test_after": evaluate(res.model, test, metric, device=args.device)}
    if not is_main():  # rank 0 writes
        return 0
    res.save(out / "prune.json")
    save_checkpoint(res.model, out / "model.pt", extra=extra)
    for h in res.history:
        print(f"step {h['step']}: {h['action']} {h['layer']} kernel {h['kernel']}: {h['reason']}")
    print(f"params {res.params_before} -> {res.params_after}; MACs {res.macs_before} -> {res.macs_after}")
    if res.meta.get("not_called"):
        say(f"note: left as they are: {', '.join(res.meta['not_called'])} (a forward pass in eval mode never calls them)")
    if res.meta.get("folded"):
        say(f"note: {FOLDED}: {', '.join(res.meta['folded'])}")
    if res.meta.get("output_layers"):
        say(f"note: left as they are: {OUTPUT_LAYERS}: {', '.join(res.meta['output_layers'])}")
    if extra:
        print(f"test {extra['metric']} {extra['test_before']:.4f} -> {extra['test_after']:.4f}")
    say(f"wrote {out / 'prune.json'} and {out / 'model.pt'}")
    return 0


def _remove(args: argparse.Namespace) -> int:
    if args.max_drop is not None:
        if args.resume:
            raise ValueError("--resume continues remove-trivial's ranking sweep; with --max-drop it runs compress's "
                             "blocks stage, which starts again: drop --resume, or --max-drop for the ranking sweep")
        return _compress(args, stages=("blocks",))
    from ..checkpoint import save_checkpoint
    from ..compression.removal import remove_trivial
    from ..core.distributed import is_main

    out = out_dir(args, writes=("model.pt",))
    data = data_from_args(args)
    model = model_from_args(args, data)
    res = remove_trivial(model, data, tolerance=args.tolerance, metric=metric_from_args(args, model, data),
                         batch_size=args.batch_size, device=args.device, partial=out / "removal.json", resume=args.resume)
    if not is_main():  # rank 0 writes
        return 0
    res.save(out / "removal.json")
    save_checkpoint(res.model, out / "model.pt", extra={"removed": res.removed, res.metric: res.final})
    print(f"{res.metric} {res.baseline:.4f} -> {res.final:.4f}; removed {len(res.removed)} branches: {', '.join(res.removed)}")
    for k in res.before:
        print(f"{k:10s} {res.before[k]:>14,.4g} -> {res.after[k]:,.4g}")
    for k, v in res.meta.get("latency_ms", {}).items():
        print(f"latency ms {k}: {v:.3f} (a timing, in meta)")
    print(f"wrote {out / 'model.pt'}")
    return 0


def _route(args: argparse.Namespace) -> int:
    from ..analyses.activation_labels import strongest_activation_labels
    from ..report import save_figure

    out = out_dir(args, writes=("router.pt",))
    data = data_from_args(args)
    model = model_from_args(args, data)
    labels = strongest_activation_labels(model, data, args.layers or None, feature_maps=args.feature_maps,
                                         top=args.top, where=args.where, batch_size=args.batch_size, device=args.device,
                                         partial=out / "labels.json")
    labels.save(out / "labels.json")
    save_figure(labels.plot(data), out / "labels.png")
    print("images labelled per layer: " + ", ".join(f"{k}={v}" for k, v in labels.counts.items()))
    if args.router_epochs > 0:
        from ..checkpoint import save_checkpoint
        from ..compression.skipnet import train_router

        router = train_router(data, labels, epochs=args.router_epochs, seed=args.seed, device=args.device)
        save_checkpoint(router.model, out / "router.pt", extra={"history": router.history, "layers": labels.layers})
        print(f"router: training accuracy {router.history['train_metric'][-1]:.3f}; checkpoint {out / 'router.pt'}")
    print(f"wrote {out / 'labels.json'}")
    return 0
