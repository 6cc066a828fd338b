"""Layer skipping by strongest activations (the layer-skipping paper): labels, router, experiment.

1. :func:`strongest_activation_labels`: for the first ``feature_maps`` maps of every conv layer of a
   trained CNN 1, the ``top`` images with the highest mean absolute activation; each selected image
   is labelled with the index of the layer that selected it (the deeper layer wins on repetition).
2. :func:`train_router`: CNN 2, trained on those images to predict the label (the exit).
3. :class:`~cnn_redundancy.skipnet.SkipNetwork`: CNN 3, which runs an image only up to its exit.
4. :func:`layer_skipping_experiment`: the paper's protocol (its labelled subset, split in two) and
   the end-to-end use on the real test set, against CNN 1 and a confidence-based early exit.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from .data import as_loader, sample_shape
from .hooks import capture, preserved
from .layers import LayerSpec, conv_layers, resolve_layers
from .progress import progress_bar
from .results import Result, make_meta
from .skipnet import ExitDataset, SkipNetwork, count_macs, measure_latency, stack_inputs, train_skip_network
from .training import fit, forward_checked, predict_batches

__all__ = [
    "LabelResult",
    "LayerSkippingResult",
    "RelabelledDataset",
    "strongest_activation_labels",
    "train_router",
    "predict_exits",
    "layer_skipping_experiment",
]

DEFAULT_THRESHOLDS = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999)


@dataclasses.dataclass
class LabelResult(Result):
    """Images selected by strongest activations and their layer labels.

    Attributes:
        layers: conv layers in forward order (label ``k`` is ``layers[k]``).
        observed: the module whose output was scored for each layer (its activation by default).
        indices: selected images (indices into the data set), ascending.
        labels: the layer label of each selected image (deepest layer that selected it).
        counts: per layer, how many images carry its label.
        selected_per_layer: per layer, how many distinct images it selected (before repetition
            across layers was resolved).
        top_images: per layer, per feature map, the ``top`` image indices, strongest first.
        top_scores: the matching mean absolute activations.
        n_images: size of the scanned data set.
    """

    layers: list[str]
    observed: list[str]
    feature_maps: int
    top: int
    indices: list[int]
    labels: list[int]
    counts: dict[str, int]
    selected_per_layer: dict[str, int]
    top_images: dict[str, list[list[int]]]
    top_scores: dict[str, list[list[float]]]
    n_images: int

    def images_of(self, label: int) -> list[int]:
        """Images labelled ``label``, ordered by rank (best of every map first, then second best...)."""
        mine = {i for i, lab in zip(self.indices, self.labels) if lab == label}
        out: list[int] = []
        for rank in range(self.top):
            for per_map in self.top_images[self.layers[label]]:
                i = per_map[rank]
                if i in mine and i not in out:
                    out.append(i)
        return out

    def plot(self, data: Dataset | None = None, *, per_layer: int = 12):
        """Grid of the images labelled with each layer (needs ``data``), or a bar chart of the counts."""
        import matplotlib.pyplot as plt

        if data is None:
            fig, ax = plt.subplots(figsize=(4, 3))
            ax.bar(range(len(self.layers)), [self.counts[n] for n in self.layers])
            ax.set_xticks(range(len(self.layers)), self.layers)
            ax.set_ylabel("images labelled")
            ax.set_title("strongest-activation labels")
            return fig
        rows = len(self.layers)
        fig, axes = plt.subplots(rows, per_layer, figsize=(per_layer * 0.8, rows * 0.95), squeeze=False)
        for k, name in enumerate(self.layers):
            imgs = self.images_of(k)[:per_layer]
            for j in range(per_layer):
                ax = axes[k][j]
                ax.set_xticks([])
                ax.set_yticks([])
                for s in ax.spines.values():
                    s.set_visible(False)
                if j < len(imgs):
                    x = data[imgs[j]][0].detach().float()
                    x = (x - x.min()) / (x.max() - x.min() + 1e-8)
                    ax.imshow(x[0] if x.shape[0] == 1 else x.permute(1, 2, 0), cmap="gray")
            axes[k][0].set_ylabel(f"{k}: {name}\n({self.counts[name]})", rotation=0, ha="right", va="center", fontsize=8)
        fig.suptitle("images labelled with each layer (strongest activations)", fontsize=9)
        return fig


def _observed_modules(model: nn.Module, layers: list[str], where: str) -> list[str]:
    if where == "conv":
        return list(layers)
    if where != "activation":
        raise ValueError(f"where must be 'activation' or 'conv', not {where!r}")
    from .graph import default_observe

    observed = [default_observe(model, n) for n in layers]
    if len(set(observed)) != len(observed):
        raise ValueError(
            f"Several conv layers share one activation module ({observed}); its output cannot be told apart "
            "per layer: pass where='conv' to score the conv outputs"
        )
    return observed


def strongest_activation_labels(
    model: nn.Module,
    data: Dataset,
    *,
    layers: LayerSpec = None,
    feature_maps: int = 10,
    top: int = 10,
    where: str = "activation",
    batch_size: int = 256,
    progress: bool | None = None,
) -> LabelResult:
    """Label images by the conv layer where they give one of the strongest activations.

    For each of the first ``feature_maps`` maps of each layer, the ``top`` images with the highest
    mean absolute activation of that map are selected and labelled with the layer's index; an image
    selected by several layers gets the deepest one. Streams over batches keeping only a running
    top-``top`` per map; ties go to the earlier image.

    Args:
        model: a trained CNN (CNN 1); left unchanged.
        data: images to scan (data set of ``(image, label)``; the class labels are not used).
        layers: conv layers (names, globs or modules), in forward order; default all of them.
        feature_maps: how many maps per layer (the first ones) take part.
        top: images selected per feature map.
        where: ``"activation"`` (the paper's Keras layers output ``relu(conv(x))``: score the
            activation module after each conv) or ``"conv"`` (the conv output).

    Raises:
        ValueError: more feature maps than a layer has, ``top`` larger than the data, a layer whose
            output is not a feature map ``[B, C, H, W]``.

    Example:
        >>> from cnn_redundancy import get_model, load_dataset, subset
        >>> res = strongest_activation_labels(get_model("equal_width_cnn", channels=(4, 4, 4)),
        ...     subset(load_dataset("mnist5k", "test"), 50), feature_maps=2, top=3)
        >>> sum(res.counts.values()) == len(res.indices) <= 18
        True
    """
    names = resolve_layers(model, layers) if layers is not None else conv_layers(model)
    if feature_maps < 1 or top < 1:
        raise ValueError(f"feature_maps and top must be >= 1, got {feature_maps} and {top}")
    for n in names:
        c = model.get_submodule(n).out_channels
        if feature_maps > c:
            raise ValueError(f"feature_maps={feature_maps} but layer {n!r} has only {c} feature maps")
    n_images = len(data)  # type: ignore[arg-type]
    if top > n_images:
        raise ValueError(f"top={top} images per feature map but the data set has only {n_images} images")
    observed = _observed_modules(model, names, where)

    def reduce(name: str, t: torch.Tensor) -> torch.Tensor:
        if t.dim() != 4:
            raise ValueError(f"{name!r} outputs shape {tuple(t.shape)}, not a feature map [B, C, H, W]")
        return t[:, :feature_maps].abs().mean(dim=(2, 3))

    best_s = {n: torch.empty(0, feature_maps) for n in names}
    best_i = {n: torch.empty(0, feature_maps, dtype=torch.long) for n in names}
    loader = as_loader(data, batch_size)
    offset = 0
    bar = progress_bar(len(loader), "strongest activations", enabled=progress, unit="batch")
    try:
        with preserved(model), torch.no_grad(), capture(model, observed, fn=reduce) as store:
            model.eval()
            for x, _ in loader:
                store.clear()
                forward_checked(model, x)
                ids = torch.arange(offset, offset + len(x))[:, None].expand(len(x), feature_maps)
                for n, o in zip(names, observed):
                    s = torch.cat([best_s[n], store[o].float()])
                    i = torch.cat([best_i[n], ids])
                    order = torch.sort(s, dim=0, descending=True, stable=True).indices[:top]
                    best_s[n], best_i[n] = s.gather(0, order), i.gather(0, order)
                offset += len(x)
                bar.update(1)
    finally:
        bar.close()
    label_of: dict[int, int] = {}
    for k, n in enumerate(names):
        for i in best_i[n].flatten().tolist():
            label_of[i] = k  # later (deeper) layers overwrite: the deeper layer wins
    indices = sorted(label_of)
    labels = [label_of[i] for i in indices]
    return LabelResult(
        meta=make_meta("strongest_activation_labels", {"layers": names, "feature_maps": feature_maps, "top": top, "where": where}),
        layers=names,
        observed=observed,
        feature_maps=feature_maps,
        top=top,
        indices=indices,
        labels=labels,
        counts={n: labels.count(k) for k, n in enumerate(names)},
        selected_per_layer={n: len(set(best_i[n].flatten().tolist())) for n in names},
        top_images={n: best_i[n].T.tolist() for n in names},
        top_scores={n: best_s[n].T.tolist() for n in names},
        n_images=n_images,
    )


class RelabelledDataset(Dataset):
    """``(data[indices[i]][0], targets[i])``: a subset of ``data`` with new labels (e.g. layer labels)."""

    def __init__(self, data: Dataset, indices: Sequence[int], targets: Sequence[int]) -> None:
        if len(indices) != len(targets):
            raise ValueError(f"{len(indices)} indices but {len(targets)} targets")
        self.data, self.indices = data, [int(i) for i in indices]
        self.targets = torch.as_tensor(list(targets), dtype=torch.long)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i):
        return self.data[self.indices[i]][0], self.targets[i]


def _label_pairs(labels: LabelResult | tuple[Sequence[int], Sequence[int]]) -> tuple[list[int], list[int], int]:
    if isinstance(labels, LabelResult):
        return list(labels.indices), list(labels.labels), len(labels.layers)
    idx, lab = labels
    lab = [int(v) for v in lab]
    return [int(i) for i in idx], lab, max(lab) + 1 if lab else 0


def train_router(
    data: Dataset,
    labels: LabelResult | tuple[Sequence[int], Sequence[int]],
    *,
    model: nn.Module | None = None,
    n_exits: int | None = None,
    epochs: int = 20,
    lr: float = 1e-3,
    batch_size: int = 32,
    optimizer: str = "rmsprop",
    seed: int = 0,
    progress: bool | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Train CNN 2 to predict each labelled image's layer label (its exit).

    Args:
        data: the data set the labels index into.
        labels: a :class:`LabelResult` or ``(indices, labels)``.
        model: the router; default ``router_cnn`` sized for the data and the number of exits.
        n_exits: number of exits (default: the number of layers in ``labels``).

    Returns:
        ``(router, history)``; the router is in eval mode.
    """
    from .models import get_model

    idx, lab, n = _label_pairs(labels)
    if not idx:
        raise ValueError("No labelled images to train the router on")
    n_exits = n_exits or n
    if model is None:
        c, h, w = sample_shape(data)
        if h != w:
            raise ValueError(f"router_cnn needs square images, got {h}x{w}; pass model=")
        torch.manual_seed(seed)
        model = get_model("router_cnn", in_channels=c, num_classes=n_exits, input_size=h)
    hist = fit(model, RelabelledDataset(data, idx, lab), epochs=epochs, lr=lr, batch_size=batch_size,
               optimizer=optimizer, seed=seed, progress=progress)
    return model.eval(), hist


def predict_exits(router: nn.Module, data: Dataset, *, batch_size: int = 256) -> torch.Tensor:
    """The router's exit (argmax) for every image of ``data``, ``[N]`` long."""
    return torch.cat([out.argmax(1) for out, _ in predict_batches(router, data, batch_size=batch_size, progress=False)])


@dataclasses.dataclass
class LayerSkippingResult(Result):
    """Everything :func:`layer_skipping_experiment` measured (plain data; see ``docs/layer-skipping.md``).

    Attributes:
        config: the experiment's parameters.
        labels: the :class:`LabelResult` as a dict.
        paper: the paper's protocol on the held-out part of the labelled subset.
        end_to_end: one row per method on the real test set (accuracy, mean conv layers run,
            MACs per image with and without the router, measured latency per image).
        confidence: the confidence-based early exit, one row per threshold.
        router: held-out router accuracy, its majority-class baseline, exit histogram on the test set.
        exit_macs: MACs per image of each exit; router_macs: the router's.
        histories: training curves.
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
    from .models import get_model

    torch.manual_seed(seed)
    return get_model("equal_width_cnn", **model_kw)


def _row(method: str, acc: float, exits: torch.Tensor, exit_macs: list[int], router_macs: int, latency: float | None) -> dict[str, Any]:
    net = float(torch.tensor([exit_macs[int(e)] for e in exits.tolist()], dtype=torch.float64).mean())
    return {
        "method": method,
        "accuracy": acc,
        "mean_conv_layers": float(exits.double().mean()) + 1.0,
        "macs": net,
        "macs_with_router": net + router_macs,
        "latency_ms": None if latency is None else latency * 1e3,
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
    progress: bool | None = None,
) -> tuple[LayerSkippingResult, dict[str, Any]]:
    """The paper's experiment and its honest end-to-end check.

    Trains CNN 1 (``equal_width_cnn``) on ``train``; labels images of ``train`` by strongest
    activations; splits the labelled subset (``holdout`` held out, seeded, stratified by label);
    trains CNN 2 (router) and CNN 3 (skip network, fresh weights, routed training) on its training
    part. Reports the paper's protocol on the held-out part, then on the whole of ``test``: CNN 1;
    CNN 3 with the router's exits; CNN 3 trained on all of ``train`` (images never selected take
    the router's exit); and a jointly trained early-exit network at fixed exits and with a
    confidence threshold (swept).

    ``latency_repeats=0`` skips the timing (the JSON is then identical for the same seed).

    Returns:
        ``(result, artifacts)``; artifacts holds the trained models (``cnn1``, ``router``,
        ``skip_paper``, ``skip_full``, ``early_exit``) and the :class:`LabelResult` (``labels``).
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
    fit_kw = {"lr": lr, "batch_size": batch_size, "optimizer": optimizer, "progress": progress}

    cnn1 = _fresh_model(model_kw, seed)
    hist1 = fit(cnn1, train, epochs=epochs, seed=seed, **fit_kw)
    labels = strongest_activation_labels(cnn1, train, feature_maps=feature_maps, top=top, progress=progress)
    n_exits = len(labels.layers)
    idx_tr, lab_tr, idx_te, lab_te = _split_labelled(labels.indices, labels.labels, holdout, seed)

    router, hist_r = train_router(train, (idx_tr, lab_tr), n_exits=n_exits, epochs=router_epochs, lr=lr,
                                  optimizer=optimizer, seed=seed, progress=progress)
    skip_paper = SkipNetwork(_fresh_model(model_kw, seed + 1))
    hist_p = train_skip_network(skip_paper, ExitDataset(train, lab_tr, idx_tr), epochs=skip_epochs, lr=lr,
                                optimizer=optimizer, seed=seed, progress=progress)

    # The paper's protocol: held-out part of the labelled subset.
    x_ho, y_ho = stack_inputs(RelabelledDataset(train, idx_te, [int(train[i][1]) for i in idx_te]))
    e_ho = torch.tensor(lab_te, dtype=torch.long)
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
    exits_train = predict_exits(router, train)
    exits_train[torch.tensor(labels.indices, dtype=torch.long)] = torch.tensor(labels.labels, dtype=torch.long)
    skip_full = SkipNetwork(_fresh_model(model_kw, seed + 2))
    hist_f = train_skip_network(skip_full, ExitDataset(train, exits_train), epochs=epochs, lr=lr,
                                optimizer=optimizer, seed=seed, batch_size=batch_size, progress=progress)
    early = SkipNetwork(_fresh_model(model_kw, seed + 3))
    hist_e = train_skip_network(early, ExitDataset(train, torch.zeros(len(train), dtype=torch.long)), mode="all_exits",  # type: ignore[arg-type]
                                epochs=epochs, lr=lr, optimizer=optimizer, seed=seed, batch_size=batch_size, progress=progress)

    # End to end on the real test set.
    x, y = stack_inputs(test)
    exit_macs = skip_paper.exit_macs()
    router_macs = sum(count_macs(router, x[:1]).values())
    full_macs = sum(count_macs(cnn1, x[:1]).values())
    last = n_exits - 1

    def latency(fn) -> float | None:
        return measure_latency(fn, x, repeats=latency_repeats) if latency_repeats else None

    rows = []
    with preserved(cnn1), preserved(router), torch.no_grad():
        for m in (cnn1, router, skip_paper, skip_full, early):
            m.eval()
        r_test = router(x).argmax(1)
        everything = torch.full((len(x),), last, dtype=torch.long)
        rows.append(_row("CNN 1 (full)", _accuracy(cnn1(x), y), everything, [full_macs] * n_exits, 0,
                         latency(cnn1)))

        def routed(net: SkipNetwork):
            return lambda b: net(b, router(b).argmax(1))

        for name, net in (("CNN 3 (paper: labelled subset) + router", skip_paper),
                          ("CNN 3 (all training images) + router", skip_full)):
            rows.append(_row(name, _accuracy(net(x, r_test), y), r_test, exit_macs, router_macs,
                             latency(routed(net))))
        for k in range(n_exits):
            fixed = torch.full((len(x),), k, dtype=torch.long)
            rows.append(_row(f"early-exit net, always exit {k}", _accuracy(early(x, fixed), y), fixed, exit_macs, 0,
                             latency(lambda b, k=k: early(b, k))))
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
        meta=make_meta("layer_skipping_experiment", config, seed),
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
    artifacts = {"cnn1": cnn1, "router": router, "skip_paper": skip_paper, "skip_full": skip_full, "early_exit": early,
                 "labels": labels, "full_macs": full_macs}
    return result, artifacts
