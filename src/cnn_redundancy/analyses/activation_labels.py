"""Strongest-activation layer labels (the layer-skipping paper, step 1).

For the first ``feature_maps`` maps of every conv layer of a trained CNN 1, the ``top`` images with
the highest mean absolute activation; each selected image is labelled with the index of the layer
that selected it (the deeper layer wins on repetition). The router (CNN 2) and the skip network
(CNN 3) that use these labels live in :mod:`cnn_redundancy.compression.skipnet`; the paper's whole
experiment in :mod:`cnn_redundancy.experiments.layer_skipping`.
"""

from __future__ import annotations

import dataclasses
import os

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, SequentialSampler

from ..core.batches import BatchLoop, as_loader, forward_checked, resolve_device
from ..core.device import AMP_CHOICES, autocast, check_amp, full_precision, placed, wants_channels_last
from ..core.hooks import capture_after, preserved
from ..core.layers import LayerSpec, resolve_layers
from ..core.observe import ObserveSpec, resolve_observe
from ..core.progress import progress_bar
from ..core.registry import analysis, option
from ..core.results import Partials, Result, make_meta

__all__ = ["LabelResult", "strongest_activation_labels", "WHERE"]

WHERE = ("activation", "conv")


@dataclasses.dataclass(eq=False)
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

    def headline(self) -> list[str]:
        return ["images labelled per layer: " + ", ".join(f"{k}={v}" for k, v in self.counts.items())]

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


def _labels(best_s, best_i, names, observed, params, n_images, seed, complete) -> LabelResult:
    label_of: dict[int, int] = {}
    for k, n in enumerate(names):
        for i in best_i[n].flatten().tolist():
            label_of[i] = k  # later (deeper) layers overwrite: the deeper layer wins
    indices = sorted(label_of)
    labels = [label_of[i] for i in indices]
    meta = make_meta("strongest_activation_labels", params, seed)
    meta["complete"] = complete
    return LabelResult(
        meta=meta,
        layers=names,
        observed=[observed[n] for n in names],
        feature_maps=params["feature_maps"],
        top=params["top"],
        indices=indices,
        labels=labels,
        counts={n: labels.count(k) for k, n in enumerate(names)},
        selected_per_layer={n: len(set(best_i[n].flatten().tolist())) for n in names},
        top_images={n: best_i[n].T.tolist() for n in names},
        top_scores={n: best_s[n].T.tolist() for n in names},
        n_images=n_images,
    )


def _check(model: nn.Module, names: list[str], data, feature_maps: int, top: int, where: str) -> int:
    """Validate the arguments; the number of images."""
    if where not in WHERE:
        raise ValueError(f"where must be 'activation' or 'conv', not {where!r}")
    for v, what in ((feature_maps, "feature_maps"), (top, "top")):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{what} must be an integer >= 1, got {v!r}")
    for n in names:
        c = model.get_submodule(n).out_channels
        if feature_maps > c:
            raise ValueError(f"feature_maps={feature_maps} but layer {n!r} has only {c} feature maps")
    if isinstance(data, DataLoader) and not isinstance(data.sampler, SequentialSampler):
        raise ValueError("the labels name images by their index in the data set: pass the Dataset or a DataLoader "
                         "that does not shuffle (shuffle=False, no sampler)")
    n_images = len(data.dataset if isinstance(data, DataLoader) else data)  # type: ignore[arg-type]
    if top > n_images:
        raise ValueError(f"top={top} images per feature map but the data set has only {n_images} images")
    return n_images


@analysis("strongest-activations", paper="skipping", result=LabelResult, options=[
    option("feature_maps", "first feature maps per layer that take part"),
    option("top", "images selected per feature map"),
    option("where", "score each layer's activation (the paper) or its conv output", choices=WHERE),
    option("amp", "forward pass in bfloat16 or float16 (torch.autocast); scores in float32", choices=AMP_CHOICES),
], example={"feature_maps": 2, "top": 3})  # fmt: skip
def strongest_activation_labels(
    model: nn.Module,
    data: Dataset | DataLoader,
    layers: LayerSpec = None,
    *,
    observe: ObserveSpec = None,
    feature_maps: int = 10,
    top: int = 10,
    where: str = "activation",
    amp: str | None = None,
    batch_size: int = 256,
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool | None = None,
    partial: str | os.PathLike | None = None,
) -> LabelResult:
    """Label images by the conv layer where they give one of the strongest activations.

    For each of the first ``feature_maps`` maps of each layer, the ``top`` images with the highest
    mean absolute activation of that map are selected and labelled with the layer's index; an image
    selected by several layers gets the deepest one. Streams over batches keeping only a running
    top-``top`` per map; ties go to the earlier image.

    Args:
        model: a trained CNN (CNN 1); left unchanged.
        data: images to scan (``(image, label)`` pairs; the class labels are not used). A DataLoader
            must not shuffle: the result names images by their index in the data set.
        layers: conv layers (names, globs or modules), in forward order; default all of them.
        observe: the module scored for each layer (default: per ``where``).
        feature_maps: how many maps per layer (the first ones) take part.
        top: images selected per feature map.
        where: ``"activation"`` (the paper's Keras layers output ``relu(conv(x))``: score the
            activation module after each conv) or ``"conv"`` (the conv output).
        amp: ``"bf16"`` or ``"fp16"``: the forward pass under ``torch.autocast`` (scores in float32);
            near-ties between images may then rank differently.
        seed: recorded in the result (nothing is drawn at random).
        partial: a JSON path rewritten as the work goes with the labels over the images seen so far.

    Raises:
        ValueError: more feature maps than a layer has, ``top`` larger than the data, a shuffling
            DataLoader, a layer whose output is not a feature map ``[B, C, H, W]``.

    Example:
        >>> from cnn_redundancy import get_model, load_dataset, subset
        >>> res = strongest_activation_labels(get_model("equal_width_cnn", channels=(4, 4, 4)),
        ...     subset(load_dataset("mnist5k", "test"), 50), feature_maps=2, top=3)
        >>> sum(res.counts.values()) == len(res.indices) <= 18
        True
    """
    names = resolve_layers(model, layers)
    n_images = _check(model, names, data, feature_maps, top, where)
    observed = resolve_observe(model, names, observe) if where == "activation" or observe is not None else {n: n for n in names}

    def reduce(name: str, t: torch.Tensor) -> torch.Tensor:
        if t.dim() != 4:
            raise ValueError(f"{name!r} outputs shape {tuple(t.shape)}, not a feature map [B, C, H, W]")
        return full_precision(t[:, :feature_maps]).abs().mean(dim=(2, 3)).float()

    check_amp(amp)
    loader = as_loader(data, batch_size)
    dev = resolve_device(device, model)
    best_s = {n: torch.empty(0, feature_maps, device=dev) for n in names}
    best_i = {n: torch.empty(0, feature_maps, dtype=torch.long, device=dev) for n in names}
    done = [False]

    def result() -> LabelResult:
        params = {"layers": names, "feature_maps": feature_maps, "top": top, "where": where, "amp": amp}
        return _labels(best_s, best_i, names, observed, params, n_images, seed, done[0])

    def merge(batch: dict) -> None:
        """Keep the ``top`` best of the running top and this batch's images (ties: the earlier image)."""
        ids = torch.arange(batch["offset"], batch["offset"] + batch["n"], device=dev)[:, None].expand(batch["n"], feature_maps)
        for n in names:
            s = torch.cat([best_s[n], batch["scores"][n]])
            i = torch.cat([best_i[n], ids])
            order = torch.sort(s, dim=0, descending=True, stable=True).indices[:top]
            best_s[n], best_i[n] = s.gather(0, order), i.gather(0, order)

    loop = BatchLoop(loader, dev, merge, model=model, channels_last=wants_channels_last(dev, amp))
    with preserved(model), torch.no_grad(), placed(model, dev, channels_last=loop.channels_last), \
            capture_after(model, observed, fn=reduce) as store, \
            progress_bar(len(loop), "strongest activations", enabled=progress, unit="batch") as bar, \
            Partials((lambda: result().save(partial)) if partial is not None else None) as partials:  # fmt: skip
        model.eval()
        for b in loop:
            store.clear()
            with autocast(dev, amp):
                forward_checked(model, b.x)
            loop.add({"offset": b.offset, "n": len(b.x), "scores": {n: store[n] for n in names}})
            bar.update(1)
            partials.started = True
            partials.maybe()
        done[0] = True
    return result()
