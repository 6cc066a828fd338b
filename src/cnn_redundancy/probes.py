"""Channel-shuffle and pixel-shuffle probes (impulse-response paper, section 2).

For each input channel ``k`` of a conv layer, perturb channel ``k`` of the layer's input and
measure (1) the cosine similarity between the clean and perturbed maps of every output channel
``j`` of the observed activation, per sample, averaged over samples, and (2) the model's metric on
the whole data set with that channel perturbed.

- channel shuffle: channel ``k`` is permuted across the samples of each mini-batch;
- pixel shuffle: channel ``k``'s pixels are permuted spatially, independently in each sample.

Two engines give the same numbers:

- ``"fast"`` (default where the model is fx-traceable): the part of the model upstream of the layer
  runs once per batch (:class:`cnn_redundancy.graph.Split`); a conv is linear in its input, so the
  perturbed layer output is the clean output plus the conv of the change in channel ``k`` alone
  (one input channel, no bias); only what lies downstream is recomputed, and for the cosine alone
  only the path from the layer to the observed activation.
- ``"naive"``: one full forward pass per channel with an input-permuting pre-hook.
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .data import as_loader
from .graph import Split, SplitUnavailable, default_observe
from .hooks import capture_after, preserved, replace_input
from .layers import resolve_layer
from .metrics import cosine_per_channel, get_metric
from .progress import progress_bar
from .results import Result, make_meta
from .training import forward_checked

__all__ = ["ProbeResult", "channel_shuffle", "pixel_shuffle", "probe"]

MODES = ("channel", "pixel")


@dataclasses.dataclass(eq=False)
class ProbeResult(Result):
    """Result of a channel- or pixel-shuffle probe of one conv layer.

    Attributes:
        layer: the probed conv layer; its input channels are perturbed.
        observe: the module whose output is compared (the layer's activation by default).
        mode: ``"channel"`` or ``"pixel"``.
        channels: the perturbed input channels ``k``.
        cosine: ``cosine[i][j]``: mean over samples (and repeats) of the cosine similarity of
            observed channel ``j`` when input channel ``channels[i]`` is perturbed.
        mean_cosine: ``cosine[i]`` averaged over ``j``.
        metric: the model's metric with channel ``channels[i]`` perturbed (mean over repeats);
            empty when ``metric=None``.
        metric_std: standard deviation over repeats (0 with one repeat).
        baseline: the unperturbed metric (``None`` when ``metric=None``).
        metric_name: e.g. ``"accuracy"``.
        samples: number of samples.
    """

    layer: str = ""
    observe: str = ""
    mode: str = "channel"
    channels: list[int] = dataclasses.field(default_factory=list)
    cosine: list[list[float]] = dataclasses.field(default_factory=list)
    mean_cosine: list[float] = dataclasses.field(default_factory=list)
    metric: list[float] = dataclasses.field(default_factory=list)
    metric_std: list[float] = dataclasses.field(default_factory=list)
    baseline: float | None = None
    metric_name: str | None = "accuracy"
    samples: int = 0

    @property
    def metric_drop(self) -> list[float]:
        """``baseline - metric[i]`` per perturbed channel."""
        if self.baseline is None:
            return []
        return [self.baseline - m for m in self.metric]

    def summary(self) -> dict[str, float]:
        """Mean/min cosine and mean/max metric drop over channels."""
        out = {"mean_cosine": sum(self.mean_cosine) / len(self.mean_cosine), "min_cosine": min(self.mean_cosine)}
        if self.metric:
            drops = self.metric_drop
            out.update(mean_drop=sum(drops) / len(drops), max_drop=max(drops), baseline=float(self.baseline))
        return out

    def plot(self, *, title: str | None = None):
        """Bars of the mean cosine per channel and the metric per channel against the baseline (paper figs 5-6)."""
        import matplotlib.pyplot as plt

        panels = 2 if self.metric else 1
        fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 3.6), squeeze=False)
        x = list(range(len(self.channels)))
        labels = [str(c) for c in self.channels]
        step = max(1, len(x) // 20)
        ax = axes[0, 0]
        ax.bar(x, self.mean_cosine, color="#4a78b5")
        lo = min(self.mean_cosine)
        ax.set_ylim(min(0.0, lo - 0.05) if lo < 0.5 else max(0.0, lo - 0.1), 1.0)
        ax.set_xlabel(f"perturbed input channel k of {self.layer}")
        ax.set_ylabel(f"mean cosine similarity of {self.observe}")
        ax.set_title(f"{self.mode} shuffle: cosine similarity")
        ax.set_xticks(x[::step], labels[::step])
        if self.metric:
            ax = axes[0, 1]
            ax.bar(x, self.metric, yerr=self.metric_std if any(self.metric_std) else None, color="#d08a3a")
            ax.axhline(self.baseline, color="green", lw=2, label=f"baseline {self.baseline:.4f}")
            ax.set_xlabel(f"perturbed input channel k of {self.layer}")
            ax.set_ylabel(self.metric_name or "metric")
            ax.set_title(f"{self.mode} shuffle: {self.metric_name}")
            lo = min(min(self.metric), self.baseline)
            ax.set_ylim(max(0.0, lo - 0.05), min(1.0, max(max(self.metric), self.baseline) + 0.02) if self.metric_name == "accuracy" else None)
            ax.set_xticks(x[::step], labels[::step])
            ax.legend(loc="lower right")
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        return fig


def _batch_generator(seed: int, repeat: int, batch: int) -> torch.Generator:
    # a distinct, reproducible stream per (seed, repeat, batch), shared by both engines
    return torch.Generator().manual_seed((seed * 1_000_003 + repeat * 10_007 + batch) % (2**63))


def _permutations(mode: str, seed: int, repeat: int, batch: int, channels: Sequence[int], shape: torch.Size) -> list[torch.Tensor]:
    """One permutation per channel: of the batch (channel mode) or of each sample's pixels (pixel mode)."""
    g = _batch_generator(seed, repeat, batch)
    n, hw = shape[0], shape[2] * shape[3]
    if mode == "channel":
        return [torch.randperm(n, generator=g) for _ in channels]
    return [torch.argsort(torch.rand(n, hw, generator=g), dim=1) for _ in channels]


def _perturbed_channel(x: torch.Tensor, k: int, perm: torch.Tensor, mode: str) -> torch.Tensor:
    """Channel ``k`` of ``x`` after the perturbation ``perm`` (``[N, H, W]``)."""
    xk = x[:, k]
    if mode == "channel":
        return xk[perm.to(x.device)]
    flat = xk.flatten(1)
    return torch.gather(flat, 1, perm.to(x.device)).view_as(xk)


def _perturb(x: torch.Tensor, k: int, perm: torch.Tensor, mode: str) -> torch.Tensor:
    out = x.clone()
    out[:, k] = _perturbed_channel(x, k, perm, mode)
    return out


def _channel_delta(conv: nn.Conv2d, delta_k: torch.Tensor, k: int) -> torch.Tensor:
    """The conv's output change when only input channel ``k`` changes by ``delta_k`` (``[N, H, W]``)."""
    per_group = conv.in_channels // conv.groups
    g = k // per_group
    out_per_group = conv.out_channels // conv.groups
    rows = slice(g * out_per_group, (g + 1) * out_per_group)
    w = conv.weight[rows, k % per_group : k % per_group + 1]
    x = delta_k[:, None]
    if conv.padding_mode != "zeros":
        x = F.pad(x, conv._reversed_padding_repeated_twice, mode=conv.padding_mode)
        part = F.conv2d(x, w, None, conv.stride, 0, conv.dilation)
    else:
        part = F.conv2d(x, w, None, conv.stride, conv.padding, conv.dilation)
    if conv.groups == 1:
        return part
    full = part.new_zeros(part.shape[0], conv.out_channels, *part.shape[2:])
    full[:, rows] = part
    return full


class _Accumulator:
    """Running sums for the cosine matrix and one metric object per (repeat, channel)."""

    def __init__(self, n_channels: int, repeats: int, metric) -> None:
        self.n_channels = n_channels
        self.cos_sum: torch.Tensor | None = None
        self.count = 0
        self.metrics = [[get_metric(metric) for _ in range(n_channels)] for _ in range(repeats)] if metric else None

    def add_cosine(self, i: int, clean: torch.Tensor, pert: torch.Tensor) -> None:
        cos = cosine_per_channel(clean, pert).sum(0)
        if self.cos_sum is None:
            self.cos_sum = torch.zeros(self.n_channels, cos.numel(), dtype=torch.float64)
        self.cos_sum[i] += cos


def probe(
    model: nn.Module,
    data: Dataset | DataLoader,
    layer: str | nn.Module,
    *,
    mode: str = "channel",
    observe: str | nn.Module | None = None,
    channels: Sequence[int] | None = None,
    repeats: int = 1,
    batch_size: int = 256,
    seed: int = 0,
    metric: str | None = "accuracy",
    engine: str = "auto",
    device: str | torch.device | None = None,
    progress: bool | None = None,
    partial: str | os.PathLike | None = None,
) -> ProbeResult:
    """Channel- or pixel-shuffle probe of ``layer``'s input channels (see :func:`channel_shuffle`)."""
    if mode not in MODES:
        raise ValueError(f"mode must be 'channel' or 'pixel', not {mode!r}")
    if engine not in ("auto", "fast", "naive"):
        raise ValueError(f"engine must be 'auto', 'fast' or 'naive', not {engine!r}")
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    name = resolve_layer(model, layer, types=(nn.Conv2d,))
    conv: nn.Conv2d = model.get_submodule(name)  # type: ignore[assignment]
    obs = resolve_layer(model, observe, types=None) if observe is not None else default_observe(model, name)
    chans = list(range(conv.in_channels)) if channels is None else [int(c) for c in channels]
    if not chans:
        raise ValueError("channels is empty")
    bad = [c for c in chans if not 0 <= c < conv.in_channels]
    if bad:
        raise ValueError(f"channels {bad} out of range: {name} has {conv.in_channels} input channels (0..{conv.in_channels - 1})")
    loader = as_loader(data, batch_size)
    dev = torch.device(device) if device is not None else next(iter(model.parameters())).device

    split = None
    if engine in ("auto", "fast"):
        try:
            split = Split(model, name, observe=[obs])
        except SplitUnavailable as e:
            if engine == "fast":
                raise
            warnings.warn(f"{e}; falling back to the naive engine (one full forward pass per channel)")
    used = "fast" if split is not None else "naive"

    acc = _Accumulator(len(chans), repeats, metric)
    base = get_metric(metric) if metric else None
    n_seen = 0
    bar = progress_bar(len(loader) * repeats * len(chans), f"{mode} shuffle {name}", enabled=progress, unit="ch")
    with preserved(model), torch.no_grad():
        model.eval()
        try:
            for b, (x, y) in enumerate(loader):
                x, y = x.to(dev), y.to(dev)
                if used == "fast":
                    _fast_batch(split, conv, x, y, b, chans, mode, repeats, seed, acc, base, bar)
                else:
                    _naive_batch(model, name, obs, x, y, b, chans, mode, repeats, seed, acc, base, bar)
                n_seen += len(x)
                if partial is not None:
                    _result(acc, base, name, obs, mode, chans, repeats, loader.batch_size, metric, used, seed, n_seen,
                            complete=False).save(partial)  # fmt: skip
        finally:
            bar.close()
    return _result(acc, base, name, obs, mode, chans, repeats, loader.batch_size, metric, used, seed, n_seen, complete=True)


def _result(acc: _Accumulator, base, name, obs, mode, chans, repeats, batch_size, metric, used, seed, n_seen, *, complete) -> ProbeResult:
    """A ProbeResult from the running sums (``complete=False``: over the first ``n_seen`` samples only)."""
    assert acc.cos_sum is not None
    cos = (acc.cos_sum / (n_seen * repeats)).tolist()
    metric_mean: list[float] = []
    metric_std: list[float] = []
    if acc.metrics is not None:
        for i in range(len(chans)):
            vals = [acc.metrics[r][i].compute() for r in range(repeats)]
            mu = sum(vals) / repeats
            metric_mean.append(mu)
            metric_std.append(math.sqrt(sum((v - mu) ** 2 for v in vals) / repeats))
    params = {"layer": name, "observe": obs, "mode": mode, "channels": chans, "repeats": repeats,
              "batch_size": batch_size, "metric": metric, "engine": used}  # fmt: skip
    meta = make_meta(f"{mode}_shuffle", params, seed)
    meta["complete"] = complete
    return ProbeResult(
        meta=meta,
        layer=name,
        observe=obs,
        mode=mode,
        channels=chans,
        cosine=cos,
        mean_cosine=[sum(r) / len(r) for r in cos],
        metric=metric_mean,
        metric_std=metric_std,
        baseline=base.compute() if base is not None else None,
        metric_name=metric,
        samples=n_seen,
    )


def _fast_batch(split: Split, conv, x, y, b, chans, mode, repeats, seed, acc: _Accumulator, base, bar) -> None:
    state = split.upstream(x)
    inp = state.layer_input
    clean_out = split.layer_forward(inp)
    if base is not None or acc.metrics is not None:
        out, (clean_obs,) = split.downstream(state, clean_out)
        if base is not None:
            base.update(out, y)
    else:
        (clean_obs,) = split.observed(state, clean_out)
    for r in range(repeats):
        perms = _permutations(mode, seed, r, b, chans, inp.shape)
        for i, (k, perm) in enumerate(zip(chans, perms)):
            delta = _perturbed_channel(inp, k, perm, mode) - inp[:, k]
            layer_out = clean_out + _channel_delta(conv, delta, k)
            if acc.metrics is not None:
                out, (obs,) = split.downstream(state, layer_out)
                acc.metrics[r][i].update(out, y)
            else:
                (obs,) = split.observed(state, layer_out)
            acc.add_cosine(i, clean_obs, obs)
            bar.update(1)


def _naive_batch(model, name, obs_name, x, y, b, chans, mode, repeats, seed, acc: _Accumulator, base, bar) -> None:
    with capture_after(model, {name: obs_name}) as store:
        out = forward_checked(model, x)
        if name not in store:
            raise ValueError(f"observe={obs_name!r} was not called after {name!r}")
        clean_obs = store[name]
        if base is not None:
            base.update(out, y)
        for r in range(repeats):
            cache: dict[str, list[torch.Tensor]] = {}
            for i, k in enumerate(chans):

                def perturb(t, k=k, i=i, r=r, cache=cache):
                    if "perms" not in cache:
                        cache["perms"] = _permutations(mode, seed, r, b, chans, t.shape)
                    return _perturb(t, k, cache["perms"][i], mode)

                with replace_input(model, name, perturb):
                    out = model(x)
                if acc.metrics is not None:
                    acc.metrics[r][i].update(out, y)
                acc.add_cosine(i, clean_obs, store[name])
                bar.update(1)


def channel_shuffle(
    model: nn.Module,
    data: Dataset | DataLoader,
    layer: str | nn.Module,
    *,
    observe: str | nn.Module | None = None,
    channels: Sequence[int] | None = None,
    repeats: int = 1,
    batch_size: int = 256,
    seed: int = 0,
    metric: str | None = "accuracy",
    engine: str = "auto",
    device=None,
    progress: bool | None = None,
    partial: str | os.PathLike | None = None,
) -> ProbeResult:
    """Shuffle each input channel of ``layer`` across the samples of each mini-batch.

    For every input channel ``k`` of the conv ``layer``, channel ``k`` of the layer's input is
    permuted across the samples of each mini-batch (a seeded permutation per batch, channel and
    repeat). Measured: the cosine similarity between the clean and perturbed maps of every channel
    ``j`` of the observed activation, per sample, averaged over samples (both norms zero: 1; one
    zero: 0), and the model's metric on the whole data set with channel ``k`` perturbed.

    Args:
        model: a trained network (left exactly as found).
        data: a Dataset or DataLoader of ``(input, label)`` pairs. With a Dataset, ``batch_size``
            sets the mini-batch within which channels are shuffled; a DataLoader's own batches are used.
        layer: the conv layer whose input is perturbed (name, glob matching one layer, or module).
        observe: module whose output is compared; default: the layer's activation after its
            nonlinearity where the model makes that identifiable (:func:`cnn_redundancy.graph.default_observe`),
            else the layer's output.
        channels: input channels to perturb (default: all).
        repeats: independent shuffles per channel; the metric is reported as mean and std.
        seed: seed of every permutation (same seed, same result).
        metric: ``"accuracy"``, ``"dice"``, or ``None`` for the cosine alone (fastest).
        engine: ``"auto"`` (fast where the model is fx-traceable), ``"fast"`` or ``"naive"``.
        partial: a JSON path rewritten after every batch with the result so far
            (``meta["complete"]`` is False and ``samples`` counts the samples seen), so an
            interrupted run keeps what it measured.

    Returns:
        :class:`ProbeResult`.

    Example:
        >>> from cnn_redundancy.testing import ignored_channel_net, random_images
        >>> res = channel_shuffle(ignored_channel_net(2), random_images(32), "conv2", metric=None)
        >>> round(res.mean_cosine[2], 6)
        1.0
    """
    return probe(model, data, layer, mode="channel", observe=observe, channels=channels, repeats=repeats,
                 batch_size=batch_size, seed=seed, metric=metric, engine=engine, device=device, progress=progress, partial=partial)  # fmt: skip


def pixel_shuffle(
    model: nn.Module,
    data: Dataset | DataLoader,
    layer: str | nn.Module,
    *,
    observe: str | nn.Module | None = None,
    channels: Sequence[int] | None = None,
    repeats: int = 1,
    batch_size: int = 256,
    seed: int = 0,
    metric: str | None = "accuracy",
    engine: str = "auto",
    device=None,
    progress: bool | None = None,
    partial: str | os.PathLike | None = None,
) -> ProbeResult:
    """Permute the pixels of each input channel of ``layer``, independently in each sample.

    Same arguments and measurements as :func:`channel_shuffle`; the perturbation of channel ``k`` is
    a seeded random spatial permutation of its pixels, drawn independently for every sample.

    Example:
        >>> from cnn_redundancy.testing import ignored_channel_net, random_images
        >>> res = pixel_shuffle(ignored_channel_net(1), random_images(16), "conv2", metric=None)
        >>> round(res.mean_cosine[1], 6)
        1.0
    """
    return probe(model, data, layer, mode="pixel", observe=observe, channels=channels, repeats=repeats,
                 batch_size=batch_size, seed=seed, metric=metric, engine=engine, device=device, progress=progress, partial=partial)  # fmt: skip
