"""The layer-skipping paper's experiment: labels, router, skip network, and the honest end-to-end check.

1. :func:`~cnn_redundancy.analyses.activation_labels.strongest_activation_labels` labels images of
   the training set by the conv layer of their strongest activations (CNN 1).
2. :func:`~cnn_redundancy.compression.skipnet.train_router`: CNN 2 learns to predict the label (the exit).
3. :class:`~cnn_redundancy.compression.skipnet.SkipNetwork`: CNN 3 runs an image only up to its exit.
4. :func:`layer_skipping_experiment`: the paper's protocol (its labelled subset, split in two) and
   the end-to-end use on the real test set, against CNN 1 and a confidence-based early exit;
   :func:`run` writes its tables, figures and report section.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from ..analyses.activation_labels import strongest_activation_labels
from ..compression.skipnet import (
    ExitDataset,
    RelabelledDataset,
    SkipNetwork,
    predict_exits,
    stack_inputs,
    train_router,
    train_skip_network,
)
from ..core.batches import as_loader, resolve_device, sample_shape
from ..core.cost import count_macs, measure_latency
from ..core.hooks import preserved
from ..core.registry import experiment, option
from ..core.results import Result, atomic_write, make_meta
from ..training import fit
from .settings import PAPER_OPTION, comparison_table, holds, preset, settings_table, write_markdown

__all__ = ["LayerSkippingResult", "layer_skipping_experiment", "run", "DEFAULT_THRESHOLDS"]

DEFAULT_THRESHOLDS = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999)


@dataclasses.dataclass(eq=False)
class LayerSkippingResult(Result):
    """Everything :func:`layer_skipping_experiment` measured (plain data; see ``docs/layer-skipping.md``).

    Attributes:
        config: the experiment's parameters.
        labels: the :class:`LabelResult` as a dict.
        paper: the paper's protocol on the held-out part of the labelled subset.
        end_to_end: one row per method on the real test set (accuracy, mean conv layers run,
            MACs per image with and without the router). The measured latency per image (ms) of each
            method is a timing: ``meta["latency_ms"][method]`` (``None`` when not timed), outside the
            same-seed comparison.
        confidence: the confidence-based early exit, one row per threshold.
        router: held-out router accuracy, its majority-class baseline, exit histogram on the test set.
        exit_macs: MACs per image of each exit; router_macs: the router's.
        histories: training curves.
        artifacts: the trained models (``cnn1``, ``router``, ``skip_paper``, ``skip_full``,
            ``early_exit``), the :class:`LabelResult` (``labels``) and ``full_macs``; not written to JSON.
    """

    config: dict[str, Any]
    labels: dict[str, Any]
    paper: dict[str, Any]
    end_to_end: list[dict[str, Any]]
    confidence: list[dict[str, Any]]
    router: dict[str, Any]
    exit_macs: list[int]
    router_macs: int
    histories: dict[str, Any]
    artifacts: dict[str, Any] = dataclasses.field(default_factory=dict, metadata={"skip": True}, repr=False, compare=False)

    def plot(self):
        """Accuracy against MACs per image on the real test set: every method, and the confidence sweep."""
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        conf = self.confidence
        if conf:
            ax.plot([r["macs"] / 1e6 for r in conf], [r["accuracy"] for r in conf], "o-", color="tab:gray",
                    label="confidence early exit (threshold sweep)", ms=4)
        markers = {"CNN 1 (full)": ("*", "black")}
        for r in self.end_to_end:
            if r["method"].startswith("confidence"):
                continue
            m, c = markers.get(r["method"], ("s" if "router" in r["method"] else "^", None))
            ax.scatter(r["macs_with_router"] / 1e6, r["accuracy"], marker=m, s=70, color=c, label=r["method"], zorder=3)
        ax.set_xlabel("MACs per image (millions, router included)")
        ax.set_ylabel("test accuracy")
        ax.set_title("accuracy / compute on the real test set")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
        return fig


def _split_labelled(idx: list[int], lab: list[int], fraction: float, seed: int) -> tuple[list[int], list[int], list[int], list[int]]:
    """Seeded split of the labelled images into train / held-out, stratified by label where possible."""
    g = torch.Generator().manual_seed(seed)
    tr, te = [], []
    for k in sorted(set(lab)):
        mine = [j for j, v in enumerate(lab) if v == k]
        perm = [mine[p] for p in torch.randperm(len(mine), generator=g).tolist()]
        n_te = int(round(fraction * len(perm))) if len(perm) > 1 else 0
        te += perm[:n_te]
        tr += perm[n_te:]
    tr.sort()
    te.sort()
    return [idx[j] for j in tr], [lab[j] for j in tr], [idx[j] for j in te], [lab[j] for j in te]


def _accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    return float((logits.argmax(1) == y).float().mean()) if len(y) else float("nan")


def _fresh_model(model_kw: dict[str, Any], seed: int) -> nn.Module:
    from ..models import get_model

    torch.manual_seed(seed)
    return get_model("equal_width_cnn", **model_kw)


def _row(method: str, acc: float, exits: torch.Tensor, exit_macs: list[int], router_macs: int, latency: float | None,
         timings: dict[str, float | None]) -> dict[str, Any]:  # fmt: skip
    """One end-to-end row; the measured latency (seconds) goes to ``timings`` in ms."""
    net = float(torch.tensor([exit_macs[int(e)] for e in exits.tolist()], dtype=torch.float64).mean())
    timings[method] = None if latency is None else latency * 1e3
    return {
        "method": method,
        "accuracy": acc,
        "mean_conv_layers": float(exits.double().mean()) + 1.0,
        "macs": net,
        "macs_with_router": net + router_macs,
        "exit_histogram": [int((exits == k).sum()) for k in range(len(exit_macs))],
    }


def layer_skipping_experiment(
    train: Dataset,
    test: Dataset,
    *,
    channels: Sequence[int] = (16, 16, 16),
    head: str = "shared",
    epochs: int = 20,
    router_epochs: int = 20,
    skip_epochs: int = 20,
    feature_maps: int = 10,
    top: int = 10,
    holdout: float = 0.2,
    optimizer: str = "rmsprop",
    lr: float = 1e-3,
    batch_size: int = 64,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    latency_repeats: int = 3,
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool | None = None,
) -> LayerSkippingResult:
    """The paper's experiment and its honest end-to-end check.

    Trains CNN 1 (``equal_width_cnn``) on ``train``; labels images of ``train`` by strongest
    activations; splits the labelled subset (``holdout`` held out, seeded, stratified by label);
    trains CNN 2 (router) and CNN 3 (skip network, fresh weights, routed training) on its training
    part. Reports the paper's protocol on the held-out part, then on the whole of ``test``: CNN 1;
    CNN 3 with the router's exits; CNN 3 trained on all of ``train`` (images never selected take
    the router's exit); and a jointly trained early-exit network at fixed exits and with a
    confidence threshold (swept).

    ``latency_repeats=0`` skips the timing (the JSON is then identical for the same seed).
    ``device``: where every network trains and runs (default: the CPU).

    Returns:
        A :class:`LayerSkippingResult`; its ``artifacts`` hold the trained models and the labels.
    """
    if not 0.0 < holdout < 1.0:
        raise ValueError(f"holdout must be in (0, 1), got {holdout}")
    c, h, w = sample_shape(train)
    if h != w:
        raise ValueError(f"equal_width_cnn needs square images, got {h}x{w}")
    ys = torch.cat([y for _, y in as_loader(train, 4096)])
    classes = int(ys.max()) + 1
    model_kw = {"channels": list(channels), "in_channels": c, "num_classes": classes, "input_size": h, "head": head}
    config = {"channels": list(channels), "head": head, "epochs": epochs, "router_epochs": router_epochs,
              "skip_epochs": skip_epochs, "feature_maps": feature_maps, "top": top, "holdout": holdout,
              "optimizer": optimizer, "lr": lr, "batch_size": batch_size, "thresholds": list(thresholds),
              "n_train": len(train), "n_test": len(test), "latency_repeats": latency_repeats, "seed": seed}  # type: ignore[arg-type]
    dev = resolve_device(device)
    fit_kw = {"lr": lr, "batch_size": batch_size, "optimizer": optimizer, "device": dev, "progress": progress}

    cnn1 = _fresh_model(model_kw, seed).to(dev)
    hist1 = fit(cnn1, train, epochs=epochs, seed=seed, **fit_kw)
    labels = strongest_activation_labels(cnn1, train, feature_maps=feature_maps, top=top, device=dev, progress=progress)
    n_exits = len(labels.layers)
    idx_tr, lab_tr, idx_te, lab_te = _split_labelled(labels.indices, labels.labels, holdout, seed)

    routed = train_router(train, (idx_tr, lab_tr), n_exits=n_exits, epochs=router_epochs, lr=lr,
                          optimizer=optimizer, seed=seed, device=dev, progress=progress)
    router, hist_r = routed.model, routed.history
    skip_paper = SkipNetwork(_fresh_model(model_kw, seed + 1).to(dev))
    hist_p = train_skip_network(skip_paper, ExitDataset(train, lab_tr, idx_tr), epochs=skip_epochs, lr=lr,
                                optimizer=optimizer, seed=seed, device=dev, progress=progress)

    # The paper's protocol: held-out part of the labelled subset.
    x_ho, y_ho = stack_inputs(RelabelledDataset(train, idx_te, [int(train[i][1]) for i in idx_te]))
    x_ho, y_ho = x_ho.to(dev), y_ho.to(dev)
    e_ho = torch.tensor(lab_te, dtype=torch.long, device=dev)
    with torch.no_grad():
        r_ho = router(x_ho).argmax(1) if len(x_ho) else e_ho
        paper = {
            "n_labelled": len(labels.indices), "n_train": len(idx_tr), "n_heldout": len(idx_te),
            "router_accuracy": float((r_ho == e_ho).float().mean()) if len(e_ho) else float("nan"),
            "router_majority_baseline": max(lab_te.count(k) for k in range(n_exits)) / len(lab_te) if lab_te else float("nan"),
            "cnn3_accuracy_true_exits": _accuracy(skip_paper(x_ho, e_ho), y_ho) if len(x_ho) else float("nan"),
            "cnn3_accuracy_router_exits": _accuracy(skip_paper(x_ho, r_ho), y_ho) if len(x_ho) else float("nan"),
            "cnn1_accuracy_on_heldout": _accuracy(cnn1(x_ho), y_ho) if len(x_ho) else float("nan"),
        }

    # Images never selected: the router decides their exit; CNN 3 then trains on the whole training set.
    exits_train = predict_exits(router, train, device=dev)
    exits_train[torch.tensor(labels.indices, dtype=torch.long)] = torch.tensor(labels.labels, dtype=torch.long)
    skip_full = SkipNetwork(_fresh_model(model_kw, seed + 2).to(dev))
    hist_f = train_skip_network(skip_full, ExitDataset(train, exits_train), epochs=epochs, lr=lr,
                                optimizer=optimizer, seed=seed, batch_size=batch_size, device=dev, progress=progress)
    early = SkipNetwork(_fresh_model(model_kw, seed + 3).to(dev))
    hist_e = train_skip_network(early, ExitDataset(train, torch.zeros(len(train), dtype=torch.long)), mode="all_exits",  # type: ignore[arg-type]
                                epochs=epochs, lr=lr, optimizer=optimizer, seed=seed, batch_size=batch_size, device=dev,
                                progress=progress)

    # End to end on the real test set.
    x, y = stack_inputs(test)
    x, y = x.to(dev), y.to(dev)
    exit_macs = skip_paper.exit_macs()
    router_macs = sum(count_macs(router, x[:1]).values())
    full_macs = sum(count_macs(cnn1, x[:1]).values())
    last = n_exits - 1

    def latency(fn) -> float | None:
        return measure_latency(fn, x, batch_size=256, repeats=latency_repeats, warmup=1, stat="min") if latency_repeats else None

    rows: list[dict[str, Any]] = []
    timings: dict[str, float | None] = {}
    with preserved(cnn1), preserved(router), torch.no_grad():
        for m in (cnn1, router, skip_paper, skip_full, early):
            m.eval()
        r_test = router(x).argmax(1)
        everything = torch.full((len(x),), last, dtype=torch.long, device=dev)
        rows.append(_row("CNN 1 (full)", _accuracy(cnn1(x), y), everything, [full_macs] * n_exits, 0,
                         latency(cnn1), timings))

        def with_router(net: SkipNetwork):
            return lambda b: net(b, router(b).argmax(1))

        for name, net in (("CNN 3 (paper: labelled subset) + router", skip_paper),
                          ("CNN 3 (all training images) + router", skip_full)):
            rows.append(_row(name, _accuracy(net(x, r_test), y), r_test, exit_macs, router_macs,
                             latency(with_router(net)), timings))
        for k in range(n_exits):
            fixed = torch.full((len(x),), k, dtype=torch.long, device=dev)
            rows.append(_row(f"early-exit net, always exit {k}", _accuracy(early(x, fixed), y), fixed, exit_macs, 0,
                             latency(lambda b, k=k: early(b, k)), timings))
        head_macs = early.head_macs()
        confidence = []
        for t in thresholds:
            logits, ex = early.early_exit(x, float(t))
            # every exit passed through evaluates its head too
            macs = float(torch.tensor([exit_macs[int(e)] + sum(head_macs[: int(e)]) for e in ex.tolist()],
                                      dtype=torch.float64).mean())
            confidence.append({"threshold": float(t), "accuracy": _accuracy(logits, y), "macs": macs,
                               "mean_conv_layers": float(ex.double().mean()) + 1.0,
                               "exit_histogram": [int((ex == k).sum()) for k in range(n_exits)]})
    router_info = {"heldout_accuracy": paper["router_accuracy"], "majority_baseline": paper["router_majority_baseline"],
                   "test_exit_histogram": [int((r_test == k).sum()) for k in range(n_exits)]}
    result = LayerSkippingResult(
        meta={**make_meta("layer_skipping_experiment", config, seed), "latency_ms": timings},
        config=config,
        labels=labels.to_dict(),
        paper=paper,
        end_to_end=rows,
        confidence=confidence,
        router=router_info,
        exit_macs=exit_macs,
        router_macs=router_macs,
        histories={"cnn1": hist1, "router": hist_r, "cnn3_paper": hist_p, "cnn3_full": hist_f, "early_exit": hist_e},
    )
    result.artifacts = {"cnn1": cnn1, "router": router, "skip_paper": skip_paper, "skip_full": skip_full, "early_exit": early,
                 "labels": labels, "full_macs": full_macs}
    return result


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)


def _findings(res: LayerSkippingResult, labels, elapsed: float) -> list[str]:
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
    ms = res.meta.get("latency_ms", {})
    full_ms, routed_ms = ms.get(full["method"]), ms.get(best_routed["method"])
    if full_ms and routed_ms:
        findings.append(
            f"Measured CPU latency per image: CNN 1 {full_ms:.4f} ms, routed {routed_ms:.4f} ms "
            f"(speedup {full_ms / routed_ms:.2f}x; ideal from MACs "
            f"{full['macs'] / best_routed['macs_with_router']:.2f}x)."
        )
    findings.append(f"Run time {elapsed:.0f} s.")
    return findings


#: the paper's training (its section 3); the batch size is Keras' default, the paper names none
PAPER = {"epochs": 20, "subset_epochs": 20, "optimizer": "rmsprop", "lr": 1e-3, "batch_size": 32}


def _near(ours: float, paper: float) -> str:
    return holds(abs(100 * ours - paper) <= 5)


def paper_rows(res: LayerSkippingResult) -> list[list[Any]]:
    """The paper's numbers (section 4) beside ours."""
    p, full = res.paper, res.end_to_end[0]
    routed = max((r for r in res.end_to_end if "router" in r["method"]), key=lambda r: r["accuracy"])
    n_layers = len(res.exit_macs)
    top = res.config["feature_maps"] * res.config["top"]
    return [
        ["images labelled (10 maps x 10 images per layer, sec. 3)", f"{top} per layer, {top * n_layers} in all",
         f"{p['n_labelled']} distinct images", holds(p["n_labelled"] == top * n_layers)],
        ["CNN 2 (router) test accuracy (sec. 4)", "62%", f"{100 * p['router_accuracy']:.1f}% on {p['n_heldout']} held-out "
         f"labelled images (always the commonest label: {100 * p['router_majority_baseline']:.1f}%)", _near(p["router_accuracy"], 62)],
        ["CNN 1 test accuracy (sec. 4)", "98% (MNIST, 60,000 training images)", f"{100 * full['accuracy']:.1f}%",
         _near(full["accuracy"], 98)],
        ["CNN 3 test accuracy, close to 100% (sec. 4; the labelled images, their own exits)", "close to 100%",
         f"{100 * p['cnn3_accuracy_true_exits']:.1f}% (router's exits: {100 * p['cnn3_accuracy_router_exits']:.1f}%)",
         _near(p["cnn3_accuracy_true_exits"], 100)],
        ["CNN 3 above CNN 1 (sec. 4)", "~100% vs 98%", f"{100 * p['cnn3_accuracy_true_exits']:.1f}% vs "
         f"{100 * full['accuracy']:.1f}% (CNN 1 on the same held-out images: {100 * p['cnn1_accuracy_on_heldout']:.1f}%)",
         holds(p["cnn3_accuracy_true_exits"] > full["accuracy"])],
        ["CNN 3 routed on the real test set, against CNN 1 (not in the paper)", "not run",
         f"{100 * routed['accuracy']:.1f}% at {routed['macs_with_router'] / 1e6:.2f} M MACs vs {100 * full['accuracy']:.1f}% "
         f"at {full['macs'] / 1e6:.2f} M", holds(routed["accuracy"] >= full["accuracy"])],
    ]


_RUN_OPTIONS = [
    option("dataset", "mnist5k (default), digits, mnist, cifar10, cifar100"),
    option("root", "folder with the data set's files (mnist, cifar*)"),
    option("channels", "feature maps per conv layer", type=int, nargs="+"),
    option("head", "one dense layer for every exit (shared) or one per exit", choices=("shared", "per_exit")),
    option("epochs", "epochs on the full training set (CNN 1 and the full-data nets; the paper: 20)"),
    option("subset_epochs", "epochs of CNN 2 and CNN 3 on the labelled subset (the paper's 20)"),
    option("feature_maps", "first feature maps per layer that label images"),
    option("top", "images per feature map"),
    option("optimizer", "the paper's rmsprop, or adam, sgd", choices=("rmsprop", "adam", "sgd")),
    option("lr", "learning rate"),
    option("limit", "use only this many training images (and a fifth as many test images)", type=int),
    option("latency_repeats", "timing repeats (0: no timing)"),
    option("batch_size", "mini-batch of the networks trained on the full training set"),
    PAPER_OPTION,
]


@experiment("routing", paper="skipping", options=_RUN_OPTIONS)
def run(
    out: str | Path = "runs/routing",
    *,
    quick: bool = False,
    seed: int = 0,
    device: str | torch.device | None = None,
    dataset: str = "mnist5k",
    root: str | None = None,
    channels: Sequence[int] = (16, 16, 16),
    head: str = "shared",
    epochs: int = 5,
    subset_epochs: int = 20,
    feature_maps: int = 10,
    top: int = 10,
    optimizer: str = "rmsprop",
    lr: float = 1e-3,
    limit: int | None = None,
    latency_repeats: int = 3,
    batch_size: int = 64,
    paper_settings: bool = False,
) -> Path:
    """The layer-skipping paper: labels, router, skip network, end-to-end check on the real test set.

    Trains CNN 1 (``equal_width_cnn``), labels images by strongest activations, trains the router
    (CNN 2) and the skip network (CNN 3); reports the paper's protocol and the end-to-end use on the
    real test set against CNN 1 and a confidence-based early exit. Writes ``result.json``, figures
    and a report section into ``out``; returns the report's path. ``quick``: a tiny run (300
    images, a narrow model, one epoch) to check the pipeline. ``paper_settings``: RMSprop (lr 1e-3,
    Keras' default) for 20 epochs for every network, mini-batches of 32 (Keras' default; the paper
    names none); options given beside it still apply.
    """
    if paper_settings:
        p = preset(run, locals(), PAPER)
        epochs, subset_epochs, optimizer, lr, batch_size = (p[k] for k in ("epochs", "subset_epochs", "optimizer", "lr", "batch_size"))
    from ..data import load_dataset, subset
    from ..report import Figure, Section, Table, save_figure, write_report

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    train = load_dataset(dataset, "train", root=root)
    test = load_dataset(dataset, "test", root=root)
    kw = {"channels": list(channels), "head": head, "epochs": epochs, "router_epochs": subset_epochs,
          "skip_epochs": subset_epochs, "feature_maps": feature_maps, "top": top, "optimizer": optimizer, "lr": lr,
          "latency_repeats": latency_repeats, "batch_size": batch_size, "seed": seed, "device": device}
    if quick:
        limit = limit or 300
        kw.update(channels=[4, 4, 4], epochs=1, router_epochs=2, skip_epochs=2, latency_repeats=1,
                  feature_maps=min(feature_maps, 4), top=min(top, 5))
    if limit:
        train, test = subset(train, limit, seed=seed), subset(test, max(limit // 5, 20), seed=seed)
    res = layer_skipping_experiment(train, test, **kw)
    res.save(out / "result.json")
    labels = res.artifacts["labels"]
    labels.save(out / "labels.json")
    save_figure(res.plot(), out / "routing_tradeoff.png")
    save_figure(labels.plot(train), out / "routing_labels.png")
    findings = _findings(res, labels, time.perf_counter() - t0)
    ms = res.meta.get("latency_ms", {})
    rows = [[r["method"], r["accuracy"], r["mean_conv_layers"], r["macs"] / 1e6, r["macs_with_router"] / 1e6,
             ms.get(r["method"]) if ms.get(r["method"]) is not None else "n/a", "/".join(map(str, r["exit_histogram"]))]
            for r in res.end_to_end]  # fmt: skip
    conf = [[c["threshold"], c["accuracy"], c["mean_conv_layers"], c["macs"] / 1e6, "/".join(map(str, c["exit_histogram"]))]
            for c in res.confidence]  # fmt: skip
    settings = {"settings": "paper" if paper_settings else "default", "quick": quick, "seed": seed, "data": dataset,
                "training / test images": f"{len(train)} / {len(test)}", "channels": kw["channels"], "head": head,
                "optimizer": f"{optimizer}, lr {lr:g}", "epochs (CNN 1 and the full-set networks)": kw["epochs"],
                "epochs (CNN 2 and CNN 3 on the labelled subset)": kw["router_epochs"],
                "batch (full set / labelled subset)": f"{batch_size} / 32", "run time (s)": round(time.perf_counter() - t0)}  # fmt: skip
    comparison = [comparison_table(paper_rows(res), note="A single accuracy holds when ours is within 5 points of the paper's."),
                  settings_table(settings)]  # fmt: skip
    write_markdown(out / "paper_comparison.md", comparison)
    section = Section(
        key="routing",
        title="Layer skipping by strongest activations",
        intro="CNN 1 (equal-size conv layers, one dense layer) labels images by the conv layer where they give one of "
        "the strongest activations; CNN 2 learns to predict that label; CNN 3 runs each image only up to its layer "
        f"(later layers not computed). {dataset}, {len(train)} training / {len(test)} test images, channels "
        f"{kw['channels']}, head {head}, {kw['epochs']} epochs (full set), optimizer {optimizer}.",
        findings=findings,
        tables=[
            *comparison,
            Table("End to end on the real test set", ["method", "accuracy", "mean conv layers", "M MACs (net)",
                                                        "M MACs (+router)", "latency ms/image", "exits 0/1/2"], rows,
                  note="The router picks the exit of every test image; fixed-exit rows use a jointly trained early-exit net."),
            Table("Confidence early exit (threshold sweep)", ["threshold", "accuracy", "mean conv layers", "M MACs", "exits"], conf),
        ],  # fmt: skip
        figures=[Figure("routing_tradeoff.png", "Accuracy against compute on the real test set."),
                 Figure("routing_labels.png", "Images labelled with each layer (training set).")],
        order=40,
    )
    path = write_report(out, [section])
    atomic_write(out / "summary.json", json.dumps({"findings": findings}, indent=1))
    for f in findings:
        print(f)
    for r in rows:
        print("  " + " | ".join(_fmt(v) for v in r))
    return path
