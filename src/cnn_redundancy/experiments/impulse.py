"""The impulse-response paper on LeNet-5 and LeNet-5x10, trained on the bundled MNIST.

:func:`run` trains (or loads the cached checkpoints of) both networks, runs the channel- and
pixel-shuffle probes on every input channel of ``conv2`` and the impulse analysis on both conv
layers, and writes the JSON results, the figures and a report section to ``out``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from ..analyses.impulse import ImpulseResult, impulse_response
from ..analyses.shuffle import ShuffleResult, channel_shuffle, pixel_shuffle
from ..core.registry import experiment, option
from ..data import load_dataset, split, subset
from ..report import Figure, Section, Table, save_figure, write_report
from ..training import evaluate
from .settings import (
    PAPER_OPTION,
    cached_fit,
    comparison_table,
    holds,
    preset,
    settings_table,
    write_markdown,
)

__all__ = ["run", "impulse_section", "NETWORKS"]

NETWORKS = {"LeNet-5": {"width": 1}, "LeNet-5x10": {"width": 10}}


def _log(msg: str, quiet: bool) -> None:
    if not quiet:
        print(msg, flush=True)


def _trained(label: str, kw: dict, ckpt: Path, train, epochs: int, seed: int, quiet: bool, device=None, *, val=None,
             patience: int | None = None):  # fmt: skip
    """A trained LeNet-5 (cached in ``ckpt`` for the same settings); with ``patience``, early stopping on ``val``."""
    return cached_fit("lenet5", kw, ckpt, train, epochs=epochs, seed=seed, log=None if quiet else _log_line(label),
                      device=device, val=val, patience=patience)  # fmt: skip


def _log_line(label: str):
    return lambda msg: _log(f"{label}: {msg}", False)


#: the paper's setting: trained to convergence (early stopping on a validation split); the shuffles
#: use mini-batches of 256, as they always do here
PAPER = {"epochs": 200, "patience": 5}
VAL_SIZE = 500


@experiment("impulse", paper="impulse", options=[
    option("epochs", "training epochs per network (with --paper-settings: the most epochs)"),
    option("repeats", "shuffles per channel"),
    option("limit", "use only this many training and test images", type=int),
    option("patience", "early stopping: epochs without a better validation accuracy", type=int),
    PAPER_OPTION,
])  # fmt: skip
def run(
    out: str | os.PathLike = "runs/demo",
    *,
    quick: bool = False,
    seed: int = 0,
    device: str | None = None,
    epochs: int = 4,
    repeats: int = 2,
    limit: int | None = None,
    patience: int | None = None,
    paper_settings: bool = False,
    quiet: bool = False,
) -> Path:
    """The impulse-response paper: shuffle probes and impulse responses of LeNet-5 and LeNet-5x10.

    Args:
        out: output folder (JSON, PNG figures, ``report.html``, ``checkpoints/``).
        quick: 1 epoch, 1 repeat, 512 images (to check the pipeline).
        seed: seed of the training and of every shuffle.
        device: where the networks train and run.
        epochs: training epochs per network (checkpoints are reused when the settings match).
        repeats: shuffles per channel (the metric is reported as mean and std).
        limit: use only this many training and test images (for quick checks).
        patience: early stopping on a validation split of the training images (500, or an eighth
            with ``limit``): the best epoch's weights are kept and ``epochs`` is the most run.
        paper_settings: the paper's "trained till convergence": up to 200 epochs with early stopping
            (patience 5); options given beside it still apply.

    Returns:
        The path of ``report.html``; the results are in ``out`` (JSON and figures).
    """
    if paper_settings:
        p = preset(run, locals(), PAPER)
        epochs, patience = p["epochs"], p["patience"]
    if quick:
        epochs, repeats, limit = (2 if patience else 1), 1, limit or 512
    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    train = subset(load_dataset("mnist5k", "train"), limit, seed=seed)
    test = subset(load_dataset("mnist5k", "test"), limit, seed=seed)
    val = None
    if patience is not None:
        train, val = split(train, VAL_SIZE if limit is None else max(1, len(train) // 8), seed=seed)
    results: dict[str, Any] = {}
    for label, kw in NETWORKS.items():
        tag = label.lower().replace("-", "")
        model = _trained(label, kw, out / "checkpoints" / f"{tag}.pt", train, epochs, seed, quiet, device, val=val,
                         patience=patience)  # fmt: skip
        acc = evaluate(model, test, device=device)
        _log(f"{label}: test accuracy {acc:.4f}", quiet)
        r: dict[str, Any] = {"accuracy": acc, "params": sum(p.numel() for p in model.parameters()),
                             "training": getattr(model, "cnn_redundancy_extra", {})}  # fmt: skip
        for mode, fn in (("channel", channel_shuffle), ("pixel", pixel_shuffle)):
            res = fn(model, test, "conv2", repeats=repeats, batch_size=256, seed=seed, device=device,
                     partial=out / f"{tag}_{mode}_shuffle.json")
            res.save(out / f"{tag}_{mode}_shuffle.json")
            save_figure(res.plot(title=f"{label}: {mode} shuffle of the input of conv2"), out / f"{tag}_{mode}_shuffle.png")
            r[mode] = res
            s = res.summary()
            _log(f"{label}: {mode} shuffle: mean cosine {s['mean_cosine']:.4f}, mean accuracy drop {s['mean_drop']:.4f}", quiet)
        imp = impulse_response(model, mode="both", device=device, partial=out / f"{tag}_impulse.json")
        imp.save(out / f"{tag}_impulse.json")
        for layer in imp.layers:
            save_figure(imp.plot(layer, kind="responses", title=f"{label}: impulse responses of {layer}"), out / f"{tag}_{layer}_responses.png")
            save_figure(imp.plot(layer, kind="ncc", title=f"{label}: NCC between responses of {layer}"), out / f"{tag}_{layer}_ncc.png")
        r["impulse"] = imp
        results[label] = r
    _comparison_figures(results, out)
    trained = f"up to {epochs} epochs (early stopping, patience {patience})" if patience else f"{epochs} epochs"
    section = impulse_section(results, seed=seed, trained=trained, repeats=repeats, n_train=len(train), n_test=len(test))
    seconds = time.perf_counter() - t0
    settings = {"settings": "paper" if paper_settings else "default", "quick": quick, "seed": seed,
                "training images": len(train), "validation images": len(val) if val is not None else "none",
                "test images": len(test), "optimizer": "adam, lr 0.001, batch 64",
                "epochs": f"at most {epochs}, early stopping with patience {patience}" if patience else epochs,
                "shuffle mini-batch": 256, "shuffles per channel": repeats, "run time (s)": round(seconds)}  # fmt: skip
    section.tables[:0] = [comparison_table(paper_rows(results)), settings_table(settings)]
    write_markdown(out / "paper_comparison.md", section.tables[:2])
    path = write_report(out, [section])
    _log(f"report: {path} ({seconds:.0f} s)", quiet)
    return path


def paper_rows(results: dict[str, Any]) -> list[list[Any]]:
    """The paper's claims (figures 5, 6 and 9: qualitative, LeNet-5x10 against LeNet-5) beside our numbers."""
    a, b = results.get("LeNet-5"), results.get("LeNet-5x10")
    if a is None or b is None:
        return []
    rows = []
    for mode, fig in (("channel", "fig. 5a/5c"), ("pixel", "fig. 5b/5d")):
        sa, sb = a[mode].summary(), b[mode].summary()
        rows.append([f"{mode} shuffle: cosine similarity of A2 stays high for LeNet-5x10, drops for some channels "
                     f"of LeNet-5 ({fig})", "higher for LeNet-5x10 (plot, no number)",
                     f"mean {sa['mean_cosine']:.3f} vs {sb['mean_cosine']:.3f}; lowest channel {sa['min_cosine']:.3f} "
                     f"vs {sb['min_cosine']:.3f} (LeNet-5 vs LeNet-5x10)",
                     holds(sb["mean_cosine"] > sa["mean_cosine"] and sb["min_cosine"] > sa["min_cosine"],
                           partly=sb["mean_cosine"] > sa["mean_cosine"] or sb["min_cosine"] > sa["min_cosine"])])
    for mode in ("channel", "pixel"):
        sa, sb = a[mode].summary(), b[mode].summary()
        da, db = _tidy(sa["mean_drop"]), _tidy(sb["mean_drop"])
        rows.append([f"{mode} shuffle: much less accuracy lost by LeNet-5x10 (fig. 6)", "lower for LeNet-5x10 (plot)",
                     f"mean drop {100 * da:.2f} vs {100 * db:.2f} points; worst channel {100 * _tidy(sa['max_drop']):.2f} "
                     f"vs {100 * _tidy(sb['max_drop']):.2f}",
                     holds(db < da and sb["max_drop"] < sa["max_drop"], partly=db < da or sb["max_drop"] < sa["max_drop"])])
    fa, fb = a["impulse"].redundant_fraction(0.9), b["impulse"].redundant_fraction(0.9)
    more = [fb[n] > fa[n] for n in ("conv1", "conv2")]
    rows.append(["more impulse responses with a high-NCC partner in LeNet-5x10 (fig. 9)", "more for LeNet-5x10 (plot)",
                 f"NCC >= 0.9: conv1 {fa['conv1']:.0%} vs {fb['conv1']:.0%}, conv2 {fa['conv2']:.0%} vs {fb['conv2']:.0%}",
                 holds(all(more), partly=any(more))])
    rows.append(["both networks trained till convergence (sec. 2.2)", "no accuracy given",
                 f"test accuracy {a['accuracy']:.4f} vs {b['accuracy']:.4f}; " + _epochs_note(a, b), holds(None)])
    return rows


def _epochs_note(a: dict[str, Any], b: dict[str, Any]) -> str:
    ta, tb = a.get("training", {}), b.get("training", {})
    if "best_epoch" not in ta or "best_epoch" not in tb:
        return f"fixed {ta.get('epochs', '?')} epochs"
    return (f"best validation epoch {ta['best_epoch']} vs {tb['best_epoch']} (stopped after {ta['epochs_run']} vs "
            f"{tb['epochs_run']})")


def _comparison_figures(results: dict[str, Any], out: Path) -> None:
    import matplotlib.pyplot as plt

    labels = list(results)
    fig, axes = plt.subplots(2, len(labels), figsize=(6 * len(labels), 6.4), squeeze=False)
    for col, label in enumerate(labels):
        for row, mode in enumerate(("channel", "pixel")):
            res: ShuffleResult = results[label][mode]
            ax = axes[row, col]
            mc = res.mean_cosine["conv2"]
            ax.bar(range(len(mc)), mc, color="#4a78b5")
            ax.set_ylim(min(0.0, min(mc)), 1.0)
            ax.set_title(f"{label}: {mode} shuffle")
            ax.set_xlabel("perturbed input channel k of conv2")
            ax.set_ylabel("mean cosine similarity of act2")
    fig.suptitle("Cosine similarity between clean and perturbed conv2 activations (paper fig. 5)")
    fig.tight_layout()
    save_figure(fig, out / "cosine_comparison.png")

    fig, axes = plt.subplots(2, len(labels), figsize=(6 * len(labels), 6.4), squeeze=False)
    for col, label in enumerate(labels):
        for row, mode in enumerate(("channel", "pixel")):
            res = results[label][mode]
            ax = axes[row, col]
            metric = res.metric["conv2"]
            ax.errorbar(range(len(metric)), metric, yerr=res.metric_std["conv2"], fmt="o", ms=3, color="#d08a3a",
                        label="perturbed")
            ax.axhline(res.baseline, color="green", lw=2, label=f"baseline {res.baseline:.4f}")
            ax.set_title(f"{label}: {mode} shuffle")
            ax.set_xlabel("perturbed input channel k of conv2")
            ax.set_ylabel("test accuracy")
            ax.legend(loc="lower right", fontsize=8)
    lo = min(min(results[lb][m].metric["conv2"]) for lb in labels for m in ("channel", "pixel"))
    for ax in axes.flat:
        ax.set_ylim(max(0.0, lo - 0.02), 1.0)
    fig.suptitle("Test accuracy with one input channel of conv2 perturbed (paper fig. 6)")
    fig.tight_layout()
    save_figure(fig, out / "accuracy_comparison.png")

    layers = results[labels[0]]["impulse"].layers
    fig, axes = plt.subplots(len(labels), len(layers), figsize=(4.6 * len(layers), 3.8 * len(labels)), squeeze=False)
    for row, label in enumerate(labels):
        imp: ImpulseResult = results[label]["impulse"]
        for col, layer in enumerate(layers):
            ax = axes[row, col]
            v = imp.max_ncc(layer)
            ax.bar(range(len(v)), v, color="#4a78b5")
            ax.axhline(0.9, color="red", ls="--", lw=1)
            ax.set_ylim(min(0.0, min(v)), 1.0)
            ax.set_title(f"{label}: {layer}")
            ax.set_xlabel(f"kernel of {layer}")
            ax.set_ylabel("max NCC with another kernel")
    fig.suptitle("One-vs-all maximum NCC of impulse responses (paper fig. 9); red: 0.9")
    fig.tight_layout()
    save_figure(fig, out / "max_ncc_comparison.png")


def _tidy(x: float) -> float:
    """Round float noise (e.g. -1e-17) to 0 so that text shows 0.0000, not -0.0000."""
    return 0.0 if abs(x) < 1e-12 else x


def impulse_section(results: dict[str, Any], *, seed: int, trained: str, repeats: int, n_train: int, n_test: int) -> Section:
    """The report section comparing the networks (text, tables and figures); ``trained`` says for how long."""
    rows, ncc_rows = [], []
    summary: dict[str, dict[str, float]] = {}
    for label, r in results.items():
        ch, px = r["channel"].summary(), r["pixel"].summary()
        imp: ImpulseResult = r["impulse"]
        fr = imp.redundant_fraction(0.9)
        cross = imp.cross_depth("conv1", "conv2")
        summary[label] = {"ch_cos": ch["mean_cosine"], "px_cos": px["mean_cosine"], "ch_drop": _tidy(ch["mean_drop"]),
                          "px_drop": _tidy(px["mean_drop"]), "fr1": fr["conv1"], "fr2": fr["conv2"]}  # fmt: skip
        rows.append([label, r["params"], r["accuracy"], ch["mean_cosine"], ch["min_cosine"], ch["mean_drop"], ch["max_drop"],
                     px["mean_cosine"], px["min_cosine"], px["mean_drop"], px["max_drop"]])  # fmt: skip
        lin = {n: sum(v >= 0.9 for v in imp.max_ncc(n, linear=imp.mode == "both")) / len(imp.max_ncc(n)) for n in imp.layers}
        summary[label]["lin2"] = lin["conv2"]
        ncc_rows.append([label, fr["conv1"], fr["conv2"], lin["conv1"], lin["conv2"], sum(c >= 0.9 for c in cross) / len(cross)])
    a, b = summary.get("LeNet-5"), summary.get("LeNet-5x10")
    findings = []
    if a and b:
        def cmp(x, y, higher):  # noqa: E306
            return "higher" if (y > x) == higher else "lower"

        findings.append(
            f"Channel shuffle: mean cosine similarity {a['ch_cos']:.3f} (LeNet-5) vs {b['ch_cos']:.3f} (LeNet-5x10); "
            f"mean accuracy drop {a['ch_drop']:.4f} vs {b['ch_drop']:.4f}. "
            + ("LeNet-5x10 is more robust to it, as the paper reports." if b["ch_cos"] > a["ch_cos"] and b["ch_drop"] < a["ch_drop"]
               else "This does not reproduce the paper's claim that LeNet-5x10 is more robust on both measures.")
        )
        findings.append(
            f"Pixel shuffle: mean cosine similarity {a['px_cos']:.3f} vs {b['px_cos']:.3f}; "
            f"mean accuracy drop {a['px_drop']:.4f} vs {b['px_drop']:.4f}. "
            + ("LeNet-5x10 is more robust to it." if b["px_cos"] > a["px_cos"] and b["px_drop"] < a["px_drop"]
               else "LeNet-5x10 is not more robust on both measures here.")
        )
        findings.append(
            f"Kernels with a partner of NCC >= 0.9 in conv2: {a['fr2']:.0%} (LeNet-5) vs {b['fr2']:.0%} (LeNet-5x10); in conv1: "
            f"{a['fr1']:.0%} vs {b['fr1']:.0%}. LeNet-5x10 is {cmp(a['fr2'], b['fr2'], True)} in redundancy by this measure"
            + (", as the paper reports." if b["fr2"] > a["fr2"] else ", unlike the paper's report.")
        )
        if b["fr2"] > b["lin2"]:
            findings.append(
                f"In the linear part of the networks (no biases, no ReLU, average pooling) the conv2 fractions are "
                f"{a['lin2']:.0%} and {b['lin2']:.0%}: the kernels themselves are not duplicates; the similar network "
                "responses come from the cascade through conv1's ReLU and pooling, which gives every conv2 kernel much "
                "the same input blob (the paper's section 3.1 effect)."
            )
    intro = (
        "Sathish and Sheet's unit impulse response analysis, run on LeNet-5 (6 and 16 kernels) and LeNet-5x10 "
        f"(60 and 160 kernels), each trained for {trained} with Adam on the bundled MNIST subset "
        f"({n_train:,} training images; {n_test} test images). Channel shuffle permutes one input channel of conv2 across "
        "the samples of each mini-batch of 256; pixel shuffle permutes its pixels within each sample. The cosine "
        "similarity compares the clean and perturbed conv2 activations (after ReLU) per sample and output channel, "
        f"averaged; the accuracy is over the whole test set, mean of {repeats} shuffles (seed {seed}).\n\n"
        "Unit impulse responses: a 1 at the centre of a 28x28 input, passed through the trained network; the output "
        "of each conv kernel is its response. NCC is the zero-mean normalized cross-correlation, maximum over spatial "
        "shifts; 'linear' responses use the bias-free, nonlinearity-free composition (max pooling as average pooling)."
    )
    return Section(
        key="impulse-response",
        title="Impulse-response paper: channel/pixel shuffle and unit impulse responses",
        intro=intro,
        findings=findings,
        tables=[
            Table("Shuffle probes of conv2's input (test set)",
                  ["network", "params", "test accuracy", "channel: mean CS", "channel: min CS", "channel: mean acc. drop",
                   "channel: max acc. drop", "pixel: mean CS", "pixel: min CS", "pixel: mean acc. drop", "pixel: max acc. drop"],
                  rows, note="CS: cosine similarity averaged over output channels; min over perturbed input channels."),
            Table("Fraction of kernels whose impulse response has a partner with NCC >= 0.9",
                  ["network", "conv1", "conv2", "conv1 (linear)", "conv2 (linear)", "conv2 kernels matching a conv1 kernel"],
                  ncc_rows, note="Across depth: conv2 responses (10x10) against conv1 responses (28x28) at every relative placement."),
        ],  # fmt: skip
        figures=[
            Figure("cosine_comparison.png", "Mean cosine similarity per perturbed input channel (paper fig. 5)."),
            Figure("accuracy_comparison.png", "Test accuracy per perturbed input channel with the baseline in green (paper fig. 6)."),
            Figure("max_ncc_comparison.png", "One-vs-all maximum NCC per kernel (paper fig. 9)."),
            Figure("lenet5_conv1_responses.png", "LeNet-5: impulse responses of conv1 (paper fig. 8a)."),
            Figure("lenet5_conv2_responses.png", "LeNet-5: impulse responses of conv2 (paper fig. 8b)."),
            Figure("lenet5x10_conv1_responses.png", "LeNet-5x10: impulse responses of conv1, first 64 kernels (paper fig. 8c)."),
            Figure("lenet5x10_conv2_responses.png", "LeNet-5x10: impulse responses of conv2, first 64 kernels (paper fig. 8d)."),
            Figure("lenet5_conv2_ncc.png", "LeNet-5: NCC matrix of conv2 responses."),
            Figure("lenet5x10_conv2_ncc.png", "LeNet-5x10: NCC matrix of conv2 responses."),
        ],
        order=10,
    )
