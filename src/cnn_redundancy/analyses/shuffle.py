"""Channel-shuffle and pixel-shuffle probes (impulse-response paper, section 2).

For each input channel ``k`` of a conv layer, perturb channel ``k`` of the layer's input and
measure (1) the cosine similarity between the clean and perturbed maps of every output channel
``j`` of the observed activation, per sample, averaged over samples, and (2) the model's metric on
the whole data set with that channel perturbed.

- channel shuffle: channel ``k`` is permuted across the samples of each mini-batch;
- pixel shuffle: channel ``k``'s pixels are permuted spatially, independently in each sample.

Each (layer, repeat, channel) is one unit of :func:`cnn_redundancy.core.sweep.sweep`. On its fast
path a conv is linear in its input, so the perturbed layer output is the clean output plus the
conv of the change in channel ``k`` alone (one input channel, no bias), and only what lies
downstream is recomputed (for the cosine alone, only the path to the observed activation). The
naive engine recomputes the conv on the perturbed input in full forward passes: both give the
same numbers.
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..core.batches import SHARDS
from ..core.device import AMP_CHOICES, check_amp, to_device
from ..core.graph import Traced
from ..core.layers import LayerSpec, resolve_layers
from ..core.metrics import cosine_per_channel, get_metric, squared_norms
from ..core.observe import ObserveSpec, resolve_observe
from ..core.plotting import height_for, per_layer_boxes
from ..core.registry import analysis, option
from ..core.results import Result, make_meta
from ..core.resume import RESUME_OPTION, check_resume, state_path
from ..core.sweep import ENGINES, BatchContext, SweepState, Unit, sweep

__all__ = ["ShuffleResult", "channel_shuffle", "pixel_shuffle", "shuffle", "MODES"]

MODES = ("channel", "pixel")


@dataclasses.dataclass(eq=False)
class ShuffleResult(Result):
    """Result of a channel- or pixel-shuffle probe, per conv layer.

    Attributes:
        mode: ``"channel"`` or ``"pixel"``.
        layers: the probed conv layers; their input channels are perturbed.
        observed: layer -> the module whose output is compared (the layer's activation by default).
        channels: layer -> the perturbed input channels ``k``.
        cosine: ``cosine[layer][i][j]``: mean over samples (and repeats) of the cosine similarity of
            observed channel ``j`` when input channel ``channels[layer][i]`` is perturbed.
        mean_cosine: ``cosine[layer][i]`` averaged over ``j``.
        metric: layer -> the model's metric with each channel perturbed (mean over repeats); empty
            when ``metric=None``.
        metric_std: standard deviation over repeats (0 with one repeat).
        max_change: layer -> per channel, the largest absolute change of the model output (of the
            observation without a metric) on the first batch; 0 means the shuffle changed nothing.
        baseline: the unperturbed metric (``None`` when ``metric=None``).
        metric_name: e.g. ``"accuracy"``. samples: number of samples.
    """

    mode: str = "channel"
    layers: list[str] = dataclasses.field(default_factory=list)
    observed: dict[str, str] = dataclasses.field(default_factory=dict)
    channels: dict[str, list[int]] = dataclasses.field(default_factory=dict)
    cosine: dict[str, list[list[float]]] = dataclasses.field(default_factory=dict)
    mean_cosine: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    metric: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    metric_std: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    max_change: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    baseline: float | None = None
    metric_name: str | None = "accuracy"
    samples: int = 0

    def _layer(self, layer: str | None) -> str:
        if layer is None:
            if len(self.layers) != 1:
                raise ValueError(f"this result covers {len(self.layers)} layers; name one of {', '.join(self.layers)}")
            return self.layers[0]
        if layer not in self.layers:
            raise ValueError(f"no results for layer {layer!r}; layers: {', '.join(self.layers)}")
        return layer

    def metric_drop(self, layer: str | None = None) -> list[float]:
        """``baseline - metric[layer][i]`` per perturbed channel (empty without a metric)."""
        layer = self._layer(layer)
        if self.baseline is None:
            return []
        return [self.baseline - m for m in self.metric[layer]]

    def summary(self, layer: str | None = None) -> dict[str, float]:
        """Mean/min cosine and mean/max metric drop over the channels of one layer (those measured, in a
        partial result; empty where none is)."""
        layer = self._layer(layer)
        measured = self._measured
        mc = [v for v in self.mean_cosine.get(layer, []) if measured(v)]
        out = {"mean_cosine": sum(mc) / len(mc), "min_cosine": min(mc)} if mc else {}
        drops = [d for d in self.metric_drop(layer) if measured(d)] if self.metric.get(layer) else []
        if drops:
            out.update(mean_drop=sum(drops) / len(drops), max_drop=max(drops), baseline=float(self.baseline))
        return out

    def _measured(self, v: float) -> bool:
        """Whether a channel's value counts: every value of a complete result (a NaN there is a finding and
        shows), the measured ones of a partial result (NaN: not measured yet)."""
        return self.meta.get("complete", True) or not math.isnan(v)

    def headline(self) -> list[str]:
        """One line per layer: mean and least cosine, and the metric drop."""
        lines = []
        for layer in self.layers:
            s = self.summary(layer)
            if not s:
                lines.append(f"{layer}: {self.mode} shuffle, no channel measured yet")
                continue
            line = f"{layer}: {self.mode} shuffle"
            if "mean_cosine" in s:
                line += f", mean cosine {s['mean_cosine']:.4f} (min {s['min_cosine']:.4f})"
            if "baseline" in s:
                line += (f"; baseline {self.metric_name} {s['baseline']:.4f}, mean drop {s['mean_drop']:.4f}, "
                         f"max drop {s['max_drop']:.4f}")
            lines.append(line)
        return lines

    def plot(self, layer: str | None = None, *, title: str | None = None):
        """One layer: bars of the mean cosine and the metric per channel against the baseline (paper
        figs 5-6). Several layers: the spread of both per layer."""
        if layer is None and len(self.layers) > 1:
            return self._plot_layers(title)
        import matplotlib.pyplot as plt

        layer = self._layer(layer)
        mc, metric = self.mean_cosine[layer], self.metric.get(layer) or []
        panels = 2 if metric else 1
        fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 3.6), squeeze=False)
        x = list(range(len(mc)))
        labels = [str(c) for c in self.channels[layer]]
        step = max(1, len(x) // 20)
        ax = axes[0, 0]
        ax.bar(x, mc, color="#4a78b5")
        lo = min((v for v in mc if math.isfinite(v)), default=1.0)  # a partial result: NaN not measured yet
        ax.set_ylim(min(0.0, lo - 0.05) if lo < 0.5 else max(0.0, lo - 0.1), 1.0)
        ax.set_xlabel(f"perturbed input channel k of {layer}")
        ax.set_ylabel(f"mean cosine similarity of {self.observed[layer]}")
        ax.set_title(f"{self.mode} shuffle: cosine similarity")
        ax.set_xticks(x[::step], labels[::step])
        if metric:
            std = self.metric_std[layer]
            ax = axes[0, 1]
            ax.bar(x, metric, yerr=std if any(std) else None, color="#d08a3a")
            ax.axhline(self.baseline, color="green", lw=2)
            ax.set_xlabel(f"perturbed input channel k of {layer}")
            ax.set_ylabel(self.metric_name or "metric")
            # the baseline is named in the title: a legend inside the axes would cover bars, which fill them
            ax.set_title(f"{self.mode} shuffle: {self.metric_name} (green line: baseline {self.baseline:.4f})")
            err = [e if e is not None and math.isfinite(e) else 0.0 for e in std]
            shown = [(v, e) for v, e in zip(metric, err) if math.isfinite(v)]
            lo = min(min((v - e for v, e in shown), default=self.baseline), self.baseline)  # error bars included
            top = max(max((v + e for v, e in shown), default=self.baseline), self.baseline)
            ax.set_ylim(max(0.0, lo - 0.05), top + 0.02 * max(1.0, abs(top)))  # the line stays inside, at 1.0 too
            ax.set_xticks(x[::step], labels[::step])
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        return fig

    def _plot_layers(self, title: str | None):
        import matplotlib.pyplot as plt

        has_metric = any(self.metric.values())
        fig, axes = plt.subplots(1, 2 if has_metric else 1, figsize=(12 if has_metric else 7, height_for(len(self.layers))),
                                 squeeze=False)  # fmt: skip
        per_layer_boxes(self.layers, [self.mean_cosine.get(layer, []) for layer in self.layers], ax=axes[0, 0],
                        xlabel=f"mean cosine similarity of the observed activation ({self.mode} shuffle)",
                        title="each point: one shuffled input channel of the layer", line=1.0, line_label="unchanged")
        if has_metric:
            per_layer_boxes(self.layers, [self.metric_drop(layer) for layer in self.layers], ax=axes[0, 1],
                            xlabel=f"{self.metric_name} drop when the channel is shuffled", line=0.0, line_label="no drop",
                            title=f"baseline {self.metric_name} {self.baseline:.4f}")  # fmt: skip
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        return fig


def _batch_generator(seed: int, repeat: int, batch: int) -> torch.Generator:
    # a distinct, reproducible stream per (seed, repeat, batch), shared by both engines
    return torch.Generator().manual_seed((seed * 1_000_003 + repeat * 10_007 + batch) % (2**63))


def _permutations(mode: str, seed: int, repeat: int, batch: int, n_channels: int, shape: torch.Size) -> list[torch.Tensor]:
    """One permutation per channel: of the batch (channel mode) or of each sample's pixels (pixel mode)."""
    g = _batch_generator(seed, repeat, batch)
    n, hw = shape[0], shape[2] * shape[3]
    if mode == "channel" and n < 2:
        _one_sample(batch)
    if mode == "channel":
        return [torch.randperm(n, generator=g) for _ in range(n_channels)]
    return [torch.argsort(torch.rand(n, hw, generator=g), dim=1) for _ in range(n_channels)]


def _one_sample(batch: int) -> None:
    """A one-sample batch cannot be shuffled across samples: refuse it first, warn about a later one."""
    why = "channel shuffle permutes a channel across the samples of a batch, and a batch of one sample cannot change"
    if batch == 0:
        raise ValueError(f"{why}: every cosine would be 1.0 and no metric would drop. Use batch_size >= 2 and at least "
                         "two samples")
    warnings.warn(f"batch {batch} holds one sample: {why}, so it adds unperturbed samples (cosine 1.0) to the means; "
                  "choose a batch size that leaves no one-sample last batch (or drop_last=True)", stacklevel=2)


def _perturbed_channel(x: torch.Tensor, k: int, perm: torch.Tensor, mode: str) -> torch.Tensor:
    """Channel ``k`` of ``x`` after the perturbation ``perm`` (``[N, H, W]``)."""
    xk = x[:, k]
    if mode == "channel":
        return xk[perm]
    flat = xk.flatten(1)
    return torch.gather(flat, 1, perm).view_as(xk)


def _padded(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``x`` (``[N, C, H, W]``) padded as the conv pads its input (its padding and padding mode)."""
    if not any(conv._reversed_padding_repeated_twice):
        return x
    mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
    return F.pad(x, conv._reversed_padding_repeated_twice, mode=mode)


def _channel_delta(conv: nn.Conv2d, delta_k: torch.Tensor, k: int, size: torch.Size,
                   base: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """The conv's output change when only input channel ``k`` changes by ``delta_k`` (``[N, H, W]``,
    already padded as the conv pads), plus ``base`` where given (the clean output, channels-last).

    ``size``: the conv output's ``(H', W')``. One matrix product of the change's patches with channel
    ``k``'s kernels, laid out channels-last (``[N, C, H', W']`` in ``N, H', W', C`` memory): the
    per-map sums of the cosine then run over contiguous channel vectors, several times faster on
    small maps than an NCHW reduction over a few pixels, and a single-input-channel convolution
    costs more than the product. With ``base`` and one group, the addition is part of the product.
    """
    per_group = conv.in_channels // conv.groups
    g = k // per_group
    out_per_group = conv.out_channels // conv.groups
    rows = slice(g * out_per_group, (g + 1) * out_per_group)
    w = conv.weight[rows, k % per_group].reshape(out_per_group, -1)
    x = delta_k.contiguous()
    n, hp, wp = x.shape
    (kh, kw), (sh, sw), (dh, dw) = conv.kernel_size, conv.stride, conv.dilation
    patches = x.as_strided((n, *size, kh, kw), (hp * wp, sh * wp, sw, dh * wp, dw))  # [N, H', W', kh, kw], a view
    patches = patches.reshape(n * size[0] * size[1], kh * kw)
    if base is not None and conv.groups == 1:
        flat = base.permute(0, 2, 3, 1).reshape(patches.shape[0], conv.out_channels)  # a view of channels-last memory
        return torch.addmm(flat, patches, w.t()).view(n, *size, out_per_group).permute(0, 3, 1, 2)
    part = torch.matmul(patches, w.t()).view(n, *size, out_per_group).permute(0, 3, 1, 2)
    if conv.groups != 1:
        full = part.new_zeros(n, *size, conv.out_channels).permute(0, 3, 1, 2)
        full[:, rows] = part
        part = full
    return part if base is None else base + part


def _units(layers: list[str], chans: dict[str, list[int]], observed: dict[str, str], mode: str, repeats: int,
           seed: int, whole_model: bool, plain: set[str]) -> list[Unit]:  # fmt: skip
    """The sweep's units. ``whole_model``: the perturbed output runs on to the model output (for the
    metric), in the model's own (contiguous) layout; the cosine alone keeps the channels-last change.
    ``plain``: the layers computed by ``nn.Conv2d``'s own forward, whose change is linear in one input
    channel's change (the fast units); a subclass with a forward of its own (a nonlinearity or a weight
    transform built in) is run as it is."""
    units = []
    for layer in layers:
        n = len(chans[layer])

        def perm(ctx: BatchContext, inp: torch.Tensor, r: int, i: int, layer=layer, n=n) -> torch.Tensor:
            # drawn on the CPU (the same numbers on any device), copied to the device once per batch and repeat
            make = lambda: [to_device(p, inp.device) for p in _permutations(mode, seed, r, ctx.index, n, inp.shape)]  # noqa: E731
            return ctx.cached((layer, r), make)[i]

        for r in range(repeats):
            for i, k in enumerate(chans[layer]):

                def exact(ctx, conv, inp, out, r=r, i=i, k=k, perm=perm):
                    x = inp.clone()
                    x[:, k] = _perturbed_channel(inp, k, perm(ctx, inp, r, i), mode)
                    return conv.forward(x)

                def fast(ctx, conv, inp, out, r=r, i=i, k=k, perm=perm, layer=layer):
                    p = perm(ctx, inp, r, i)
                    if mode == "channel":  # the padded change is the change of the padded input, padded once per batch
                        xk = ctx.latest("padded input", layer, lambda: _padded(conv, inp))[:, k]
                        delta = xk[p] - xk
                    else:
                        delta = _padded(conv, (_perturbed_channel(inp, k, p, mode) - inp[:, k])[:, None])[:, 0]
                    if whole_model:
                        return out + _channel_delta(conv, delta, k, out.shape[2:]).contiguous()
                    clean = ctx.latest("clean output", layer, lambda: out.contiguous(memory_format=torch.channels_last))
                    return _channel_delta(conv, delta, k, out.shape[2:], base=clean)

                units.append(Unit((layer, r, i), {layer: exact}, fast=fast if layer in plain else None,
                                  observe=observed[layer], slot=(layer, i)))  # fmt: skip
    return units


def _check_channels(model: nn.Module, layers: list[str], channels) -> dict[str, list[int]]:
    """The input channels to perturb per layer: all, the same list for every layer, or ``{layer: list}``."""
    if isinstance(channels, Mapping):
        unknown = [k for k in channels if k not in layers]
        if unknown:
            raise ValueError(f"channels names layers that are not probed: {', '.join(map(str, unknown))}")
    out = {}
    for layer in layers:
        n_in = model.get_submodule(layer).in_channels
        chosen = channels.get(layer) if isinstance(channels, Mapping) else channels
        if chosen is None:
            out[layer] = list(range(n_in))
            continue
        chans = list(chosen)
        if not chans:
            raise ValueError("channels is empty")
        bad_type = [c for c in chans if isinstance(c, bool) or not isinstance(c, int)]
        if bad_type:
            raise ValueError(f"channels must be integer indices, got {bad_type}")
        bad = [c for c in chans if not 0 <= c < n_in]
        if bad:
            raise ValueError(f"channels {bad} out of range: {layer} has {n_in} input channels (0..{n_in - 1})")
        out[layer] = chans
    return out


class _Probe:
    """One probe run: its units, the running cosine sums, and the result at any moment."""

    def __init__(self, model, layers, observe, metric, channels, mode, repeats, seed, batch_size) -> None:
        self.names = resolve_layers(model, layers, types=(nn.Conv2d,))
        self.traced = Traced.maybe(model)  # one trace for the observe points and every split
        self.observed = resolve_observe(model, self.names, observe, traced=self.traced)
        self.chans = _check_channels(model, self.names, channels)
        self.metric_name = get_metric(metric).name if metric is not None else None
        self.mode, self.repeats, self.seed, self.batch_size = mode, repeats, seed, batch_size
        plain = {n for n in self.names if type(model.get_submodule(n)).forward is nn.Conv2d.forward}
        self.units = _units(self.names, self.chans, self.observed, mode, repeats, seed, metric is not None, plain)
        self.index = {u.key: i for i, u in enumerate(self.units)}
        self.amp: str | None = None
        self.shard = "batches"

    def cosine_sum(self, ctx: BatchContext, i: int, clean: torch.Tensor, pert: torch.Tensor) -> torch.Tensor:
        """The cosine per observed channel, summed over the batch (the clean norms computed once per batch)."""
        unit = self.units[i]
        layer = unit.key[0]
        clean = ctx.like(ctx.observation_key(unit), clean, pert)  # the three sums alike: cosine 1 is exact
        a_sq = ctx.cached(("clean norms", layer, clean.stride()), lambda: squared_norms(clean))
        return cosine_per_channel(clean, pert, a_sq=a_sq, sum_samples=True)

    def _units_of(self, layer: str, i: int) -> list[int]:
        return [self.index[(layer, r, i)] for r in range(self.repeats)]

    def result(self, state: SweepState) -> ShuffleResult:
        params = {"layers": self.names, "observe": self.observed, "mode": self.mode, "channels": self.chans,
                  "repeats": self.repeats, "batch_size": self.batch_size, "metric": self.metric_name,
                  "engine": "fast" if all(state.fast) else "naive", "amp": self.amp}  # fmt: skip
        meta = {**make_meta(f"{self.mode}_shuffle", params, self.seed), "complete": state.complete, "shard": self.shard}
        res = ShuffleResult(mode=self.mode, layers=self.names, observed=self.observed, channels=self.chans,
                            metric_name=self.metric_name, samples=state.n_seen, meta=meta)
        if state.baseline is not None and state.n_seen:
            res.baseline = state.baseline.compute()
        for layer in self.names:
            per_channel = [self._units_of(layer, i) for i in range(len(self.chans[layer]))]
            got = [state.observed.get((layer, i)) for i in range(len(per_channel))]
            width = next((g.numel() for g in got if g is not None), None)
            if width is not None:  # a partial result: a channel not measured yet has NaN cosines
                sums = torch.stack([g.cpu() if g is not None else torch.full((width,), math.nan, dtype=torch.float64)
                                    for g in got])  # fmt: skip
                seen = torch.tensor([sum(state.seen[u] for u in us) for us in per_channel], dtype=torch.float64)
                res.cosine[layer] = (sums / seen.clamp_min(1)[:, None]).tolist()
                res.mean_cosine[layer] = [sum(row) / len(row) for row in res.cosine[layer]]
            if state.metrics is not None:
                stats = [_mean_std([state.metrics[u].compute() for u in us if state.seen[u]]) for us in per_channel]
                res.metric[layer], res.metric_std[layer] = [m for m, _ in stats], [s for _, s in stats]
            if state.max_change:
                res.max_change[layer] = [max(state.max_change[u] for u in us) for us in per_channel]
        return res


def _mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    mu = sum(values) / len(values)
    return mu, math.sqrt(sum((v - mu) ** 2 for v in values) / len(values))


def shuffle(model: nn.Module, data: Dataset | DataLoader, layers: LayerSpec = None, *, mode: str = "channel",
            **kw) -> ShuffleResult:  # fmt: skip
    """Channel- or pixel-shuffle probe (``mode``): :func:`channel_shuffle` or :func:`pixel_shuffle`."""
    if mode not in MODES:
        raise ValueError(f"mode must be 'channel' or 'pixel', not {mode!r}")
    return (channel_shuffle if mode == "channel" else pixel_shuffle)(model, data, layers, **kw)


def _probe(mode: str, doc: str):
    """``channel_shuffle`` / ``pixel_shuffle``: one signature and body for both modes."""

    def probe(
        model: nn.Module,
        data: Dataset | DataLoader,
        layers: LayerSpec = None,
        *,
        observe: ObserveSpec = None,
        metric: str | None = "accuracy",
        channels: Sequence[int] | Mapping[str, Sequence[int]] | None = None,
        repeats: int = 1,
        engine: str = "auto",
        amp: str | None = None,
        shard: str = "batches",
        batch_size: int = 256,
        seed: int = 0,
        device: str | torch.device | None = None,
        progress: bool | None = None,
        partial: str | os.PathLike | None = None,
        resume: bool = False,
    ) -> ShuffleResult:
        check_resume(resume, partial)
        if engine not in ENGINES:
            raise ValueError(f"engine must be 'auto', 'fast' or 'naive', not {engine!r}")
        if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
            raise ValueError(f"repeats must be an integer >= 1, not {repeats!r}")
        run = _Probe(model, layers, observe, metric, channels, mode, repeats, seed,
                     data.batch_size if isinstance(data, DataLoader) else batch_size)
        check_amp(amp)
        run.amp, run.shard = amp, shard
        state = sweep(model, data, run.units, metric=metric, observe_sum=run.cosine_sum, batch_size=batch_size,
                      device=device, amp=amp, shard=shard, engine=engine, progress=progress, desc=f"{mode} shuffle",
                      traced=run.traced, partial=(lambda st: run.result(st).save(partial)) if partial is not None else None,
                      checkpoint=state_path(partial) if partial is not None else None, resume=resume,
                      settings={"analysis": f"{mode}_shuffle", "seed": seed, "channels": run.chans})  # fmt: skip
        return run.result(state)

    probe.__name__ = probe.__qualname__ = f"{mode}_shuffle"
    probe.__doc__ = doc
    options = [
        option("channels", "input channels to perturb (default all)", type=int, nargs="*"),
        option("repeats", "independent shuffles per channel; the metric is reported as mean and std"),
        option("engine", "computation: auto (fast where traceable), fast, naive", choices=ENGINES),
        option("amp", "forward passes in bfloat16 or float16 (torch.autocast); sums stay float64", choices=AMP_CHOICES),
        option("shard", "under torchrun: split the batches, or the channels (each process over all the data)",
               choices=SHARDS),
        RESUME_OPTION,
    ]
    return analysis(f"{mode}-shuffle", paper="impulse", result=ShuffleResult, options=options,
                    example={"repeats": 2})(probe)


channel_shuffle = _probe("channel", """Shuffle each input channel of conv layers across the samples of each mini-batch.

    For every input channel ``k`` of each conv layer, channel ``k`` of the layer's input is
    permuted across the samples of each mini-batch (a seeded permutation per batch, channel and
    repeat). Measured: the cosine similarity between the clean and perturbed maps of every channel
    ``j`` of the observed activation, per sample, averaged over samples (both norms zero: 1; one
    zero: 0), and the model's metric on the whole data set with channel ``k`` perturbed.

    Args:
        model: a trained network (left exactly as found).
        data: a Dataset or DataLoader of ``(input, label)`` pairs. With a Dataset, ``batch_size``
            sets the mini-batch within which channels are shuffled; a DataLoader's own batches are used.
        layers: the conv layers whose input is perturbed (names, globs or modules; default all).
        observe: module whose output is compared; default: each layer's activation after its
            nonlinearity where the model makes that identifiable
            (:func:`cnn_redundancy.core.graph.default_observe`), else the layer's output. One module
            for one layer, or a dict ``{layer: module}``.
        metric: ``"accuracy"``, ``"dice"``, or ``None`` for the cosine alone (fastest).
        channels: input channels to perturb (default: all); one list for every layer, or ``{layer: list}``.
        repeats: independent shuffles per channel; the metric is reported as mean and std.
        engine: ``"auto"`` (fast where the model is fx-traceable), ``"fast"`` or ``"naive"``.
        seed: seed of every permutation (same seed, same result).
        partial: a JSON path rewritten as the work goes (at least every 30 s, on an error or
            interrupt, and at the end) with the result so far: ``meta["complete"]`` is False and
            each channel's numbers cover the batches it has seen. The sweep's state at the last whole
            batch is kept beside it (``x.json`` -> ``x.state.pt``) until the run completes.
        resume: continue a stopped run from that state (with any number of processes): the result
            is the one an uninterrupted run gives. A state from another model, data or settings is
            refused; without one the run starts from the first batch.

    Returns:
        :class:`ShuffleResult`.

    Example:
        >>> from cnn_redundancy.testing import ignored_channel_net, random_images
        >>> res = channel_shuffle(ignored_channel_net(2), random_images(32), "conv2", metric=None)
        >>> round(res.mean_cosine["conv2"][2], 6)
        1.0
    """)

pixel_shuffle = _probe("pixel", """Permute the pixels of each input channel of conv layers, independently in each sample.

    Same arguments and measurements as :func:`channel_shuffle`; the perturbation of channel ``k`` is
    a seeded random spatial permutation of its pixels, drawn independently for every sample.

    Example:
        >>> from cnn_redundancy.testing import ignored_channel_net, random_images
        >>> res = pixel_shuffle(ignored_channel_net(1), random_images(16), "conv2", metric=None)
        >>> round(res.mean_cosine["conv2"][1], 6)
        1.0
    """)
