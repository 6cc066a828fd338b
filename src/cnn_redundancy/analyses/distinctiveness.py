"""Distinctiveness of conv kernels: angles between per-kernel activation vectors.

Gedeon and Harris measured how distinct two hidden units are by the angle between their
activation vectors over the training set. The distinctiveness-pruning paper extends this to conv
kernels: component ``n`` of kernel ``k``'s activation vector is the Frobenius norm of ``k``'s
activation map for sample ``n``. Two kernels of the same layer are as distinct as the angle
between their vectors (degrees).

Everything is streamed: per batch only the ``[B, K]`` norms are formed, and the Gram matrix,
sums, minima and maxima are accumulated in float64, so memory does not grow with the data set.
Centering (``"mean"`` or ``"minmax"``) is applied to the accumulated statistics afterwards: both
are affine maps of each vector, so no second pass is needed.

Example:
    >>> import cnn_redundancy as cr
    >>> from cnn_redundancy.testing import duplicated_kernels_net, random_images
    >>> res = cr.distinctiveness(duplicated_kernels_net(), random_images(32))
    >>> res.pairs(1)[0]["layer"], res.pairs(1)[0]["i"], res.pairs(1)[0]["j"]
    ('conv1', 0, 1)
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..core.batches import BatchLoop, as_loader, forward_checked, resolve_device
from ..core.device import AMP_CHOICES, autocast, check_amp, full_precision, placed, wants_channels_last
from ..core.hooks import capture_after, preserved
from ..core.layers import LayerSpec, not_called, resolve_layers
from ..core.observe import ObserveSpec, resolve_observe
from ..core.plotting import height_for, per_layer_boxes
from ..core.progress import progress_bar
from ..core.registry import analysis, option
from ..core.results import Partials, Result, make_meta

__all__ = ["DistinctivenessResult", "distinctiveness", "activation_stats", "ActivationStats", "CENTERINGS"]

CENTERINGS = (None, "mean", "minmax")

CHUNK_ROWS = 256
"""Batches are added to the Gram matrices in chunks of at least this many samples (see :meth:`ActivationStats.add`)."""


@dataclasses.dataclass
class ActivationStats:
    """Streamed statistics of one layer's activation vectors (one vector per kernel, length N).

    Attributes:
        gram: ``[K, K]`` float64, ``sum_n u_n u_n^T`` over samples.
        sums, mins, maxs: ``[K]`` float64 per-kernel sum, minimum and maximum of the vector.
        act_sum: ``[K]`` float64 sum over samples of the spatial mean of each activation map
            (only accumulated with ``activation_stats(..., means=True)``).
        n: number of samples.
        pending: batches given to :meth:`add` and not yet in the sums (:meth:`settled` adds them).
    """

    gram: torch.Tensor
    sums: torch.Tensor
    mins: torch.Tensor
    maxs: torch.Tensor
    act_sum: torch.Tensor
    n: int = 0
    pending: list[tuple[torch.Tensor, torch.Tensor | None]] = dataclasses.field(default_factory=list, repr=False)

    @classmethod
    def empty(cls, k: int, device: torch.device | str = "cpu") -> ActivationStats:
        f = dict(dtype=torch.float64, device=device)
        return cls(torch.zeros(k, k, **f), torch.zeros(k, **f), torch.full((k,), math.inf, **f),
                   torch.full((k,), -math.inf, **f), torch.zeros(k, **f))

    def update(self, norms: torch.Tensor, means: torch.Tensor | None = None) -> None:
        """Add one batch: ``norms`` and ``means`` ``[B, K]`` in any floating type (converted to float64 here)."""
        norms = norms.double()
        self.gram.addmm_(norms.T, norms)
        self.sums += norms.sum(0)
        lo, hi = torch.aminmax(norms, dim=0)
        torch.minimum(self.mins, lo, out=self.mins)
        torch.maximum(self.maxs, hi, out=self.maxs)
        if means is not None:
            self.act_sum += means.double().sum(0)
        self.n += norms.shape[0]

    def add(self, norms: torch.Tensor, means: torch.Tensor | None = None) -> None:
        """Add one batch in the data's order, held until :data:`CHUNK_ROWS` samples are pending and then
        added as one :meth:`update`: one ``[K, K]`` product over hundreds of samples instead of one per
        small batch (resnet18, batches of 32: half the time). Where the chunks end depends only on the
        batch sizes in order, so the sums are the same for any number of processes; :meth:`settled`
        gives the statistics with what is pending added."""
        self.pending.append((norms, means))
        if sum(len(x) for x, _ in self.pending) >= CHUNK_ROWS:
            self.update(*self._pending_batch())
            self.pending = []

    def _pending_batch(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The pending batches as one: ``(norms, means)``."""
        norms, means = zip(*self.pending)
        return torch.cat(norms), None if means[0] is None else torch.cat(means)

    def settled(self) -> ActivationStats:
        """These statistics with the pending batches added: ``self`` when none is pending, otherwise a copy
        (what is pending stays pending, so a partial result read mid-way leaves the sums unchanged)."""
        if not self.pending:
            return self
        copy = dataclasses.replace(self, gram=self.gram.clone(), sums=self.sums.clone(), mins=self.mins.clone(),
                                   maxs=self.maxs.clone(), act_sum=self.act_sum.clone(), pending=[])
        copy.update(*self._pending_batch())
        return copy

    def centered_gram(self, center: str | None) -> torch.Tensor:
        """The Gram matrix of the centered vectors ``v' = a v + b`` (exact, from the sums)."""
        if center is None:
            return self.gram.clone()
        if center == "mean":
            a = torch.ones_like(self.sums)
            b = -self.sums / self.n
        elif center == "minmax":
            span = self.maxs - self.mins
            a = torch.where(span > 0, 1.0 / span.clamp_min(1e-300), torch.zeros_like(span))
            b = torch.where(span > 0, -self.mins * a - 0.5, torch.zeros_like(span))
        else:
            raise ValueError(f"center must be one of {CENTERINGS}, not {center!r}")
        s = self.sums
        return (a[:, None] * a[None, :] * self.gram
                + (a * s)[:, None] * b[None, :] + b[:, None] * (a * s)[None, :] + self.n * b[:, None] * b[None, :])

    def cosines(self, center: str | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(cosines [K, K], degenerate mask [K], norms [K])`` of the (centered) vectors."""
        g = self.gram if center is None else self.centered_gram(center)  # read only: no copy needed
        diag = g.diagonal().clamp_min(0.0)
        norms = diag.sqrt()
        tol = 1e-12 * float(diag.max()) if diag.numel() else 0.0
        dead = diag <= tol
        safe = torch.where(dead, torch.ones_like(norms), norms)
        cos = safe[:, None] * safe[None, :]
        torch.div(g, cos, out=cos)  # K x K buffers are large: one for the products, the quotient and the angles
        return cos.clamp_(-1.0, 1.0), dead, norms

    def angles(self, center: str | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(angles [K, K] in degrees, norms [K])``; rows/columns of zero-norm vectors are NaN.

        The diagonal is 0, except for a zero-norm (degenerate) vector, whose diagonal entry is NaN too.
        """
        ang, dead, norms = self.cosines(center)
        ang.arccos_().rad2deg_()
        ang[dead, :] = math.nan
        ang[:, dead] = math.nan
        ang.fill_diagonal_(0.0)
        ang[dead, dead] = math.nan
        return ang, norms

    def least_distinct(self, center: str | None) -> tuple[float, int, int] | None:
        """``(angle, i, j)`` of the pair with the smallest angle (degenerate kernels left out), or ``None``."""
        cos, dead, _ = self.cosines(center)
        k = cos.shape[0]
        if k < 2:
            return None
        masked = cos.masked_fill(~torch.ones(k, k, dtype=torch.bool).triu(1), -math.inf)
        masked[dead, :] = -math.inf
        masked[:, dead] = -math.inf
        flat = int(torch.argmax(masked))
        i, j = divmod(flat, k)
        if masked[i, j] == -math.inf:
            return None
        return math.degrees(math.acos(float(cos[i, j]))), i, j


def _reduce(t: torch.Tensor, means: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-sample, per-channel Frobenius norm (and mean, if asked) of an activation ``[B, K, ...]``, in its
    precision (float32 at least): exchanged between processes at half the bytes of float64, and made
    float64 (exactly) where they are added up."""
    if t.dim() < 2:
        raise ValueError(f"observed activation must be [batch, channels, ...], got shape {tuple(t.shape)}")
    flat = full_precision(t.detach()).reshape(t.shape[0], t.shape[1], -1)
    return torch.linalg.vector_norm(flat, dim=2), flat.mean(2) if means else None


def _add(model: nn.Module, stats: dict[str, ActivationStats], obs: dict[str, str], reduced: dict) -> None:
    """Add one batch's norms (and means) to every layer's statistics, in the global batch order."""
    for layer, (norms, mean) in reduced.items():
        if layer not in stats:
            k = getattr(model.get_submodule(layer), "out_channels", norms.shape[1])
            stats[layer] = ActivationStats.empty(k, norms.device)
        if norms.shape[1] != stats[layer].gram.shape[0]:
            raise ValueError(f"{obs[layer]!r} has {norms.shape[1]} channels, not the {stats[layer].gram.shape[0]} of {layer!r}")
        stats[layer].add(norms, mean)


def activation_stats(
    model: nn.Module,
    data: Dataset | DataLoader,
    layers: LayerSpec = None,
    *,
    observe: ObserveSpec = None,
    means: bool = False,
    amp: str | None = None,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    progress: bool | None = None,
    on_batch: Callable[[dict[str, ActivationStats]], None] | None = None,
) -> dict[str, ActivationStats]:
    """Stream the data once and accumulate each layer's :class:`ActivationStats`.

    Only the observed module's first call after each layer's call is reduced (a ReLU module shared
    by several calls, as in torchvision's ``BasicBlock``, is reduced once, at the right call).
    Under ``torchrun`` the batches are shared among the processes and every process adds every
    batch's norms in the global batch order: the statistics are the same for any world size.

    Args:
        observe: where each layer's activation is read (see :func:`cnn_redundancy.core.observe.resolve_observe`).
        means: also accumulate each map's mean value (``act_sum``; the Gedeon-Harris fold needs it).
        amp: ``"bf16"`` or ``"fp16"``: the forward pass under ``torch.autocast``; norms are taken in
            float32 and accumulated in float64.
        on_batch: called with the statistics so far after every batch (the last batches may be
            pending: read them through :meth:`ActivationStats.settled`).

    Returns:
        Statistics by layer. The model is left as found.
    """
    names = resolve_layers(model, layers)
    obs = resolve_observe(model, names, observe)
    check_amp(amp)
    loader = as_loader(data, batch_size)
    dev = resolve_device(device, model)
    stats: dict[str, ActivationStats] = {}

    def apply(reduced: dict) -> None:
        _add(model, stats, obs, reduced)
        if on_batch is not None:
            on_batch(stats)

    loop = BatchLoop(loader, dev, apply, model=model, channels_last=wants_channels_last(dev, amp))
    with preserved(model), torch.no_grad(), placed(model, dev, channels_last=loop.channels_last), \
            capture_after(model, obs, fn=lambda _, t: _reduce(t, means)) as results, \
            progress_bar(len(loop), "activation vectors", enabled=progress, unit="batch") as bar:  # fmt: skip
        model.eval()
        for b in loop:
            results.clear()
            with autocast(dev, amp):
                forward_checked(model, b.x)
            missing = [layer for layer in names if layer not in results]
            if missing:
                raise not_called(missing, obs)
            loop.add({layer: results[layer] for layer in names})
            bar.update(1)
    return {layer: st.settled() for layer, st in stats.items()}


@dataclasses.dataclass(eq=False)
class DistinctivenessResult(Result):
    """Angles between the activation vectors of every pair of kernels, per layer.

    Attributes:
        layers: analysed conv layers. observed: the module whose output gave each layer's vectors.
        center: ``None``, ``"mean"`` or ``"minmax"``. n_samples: length of every vector.
        angles: ``layer -> [K, K]`` float64 tensor of angles in degrees (diagonal 0; NaN row, column
            and diagonal entry for a kernel whose (centered) vector is zero: it is listed in
            ``degenerate``). A tensor, not nested lists: resnet50 has 28 M of them.
        norms: ``layer -> [K]`` norm of each (centered) vector.
        mean_norm: ``layer -> [K]`` mean Frobenius norm of each kernel's activation map.
        degenerate: ``layer -> kernel indices`` whose (centered) vector is zero.
        dead: ``layer -> kernel indices`` whose activation is zero on every sample (their vectors are
            zero: they are degenerate too, and no angle says anything about them).
    """

    layers: list[str] = dataclasses.field(default_factory=list)
    observed: dict[str, str] = dataclasses.field(default_factory=dict)
    center: str | None = None
    n_samples: int = 0
    angles: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)
    norms: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    mean_norm: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    degenerate: dict[str, list[int]] = dataclasses.field(default_factory=dict)
    dead: dict[str, list[int]] = dataclasses.field(default_factory=dict)
    kind = "distinctiveness"

    def nearest(self, layer: str) -> tuple[list[float], list[int | None]]:
        """Per kernel, the smallest angle to another kernel of the layer and that kernel (NaN / ``None``
        for a degenerate kernel). With centering, a complementary pair (near 180 degrees) counts as near:
        the angle is folded to ``min(a, 180 - a)``."""
        a = self.angles[layer].clone()
        if self.center is not None:
            a = torch.minimum(a, 180.0 - a)
        a.fill_diagonal_(math.inf)
        a = torch.where(torch.isnan(a), math.inf, a)
        values, idx = a.min(1) if a.numel() else (a.new_zeros(0), a.new_zeros(0, dtype=torch.long))
        ok = torch.isfinite(values)
        return ([float(v) if o else math.nan for v, o in zip(values.tolist(), ok.tolist())],
                [int(i) if o else None for i, o in zip(idx.tolist(), ok.tolist())])

    def pairs(self, limit: int | None = None, *, layer: str | None = None, descending: bool = False) -> list[dict[str, Any]]:
        """Kernel pairs ``{layer, i, j, angle}`` of the same layer sorted by angle (least distinct first).

        Pairs with an undefined angle (a degenerate kernel) are left out.
        """
        out = []
        for name in [layer] if layer is not None else self.layers:
            if name not in self.angles:
                raise ValueError(f"no angles for layer {name!r}; layers: {', '.join(self.layers)}")
            a = self.angles[name]
            i, j = torch.triu_indices(a.shape[0], a.shape[0], offset=1)
            vals = a[i, j]
            ok = ~torch.isnan(vals)
            i, j, vals = i[ok], j[ok], vals[ok]
            # (i, j) come in row order, so a stable sort keeps ties in (i, j) order: the first ``limit``
            # of each layer are the only candidates for the first ``limit`` overall
            order = torch.sort(vals, descending=descending, stable=True).indices[:limit]
            out += [{"layer": name, "i": int(p), "j": int(q), "angle": float(v)}
                    for p, q, v in zip(i[order].tolist(), j[order].tolist(), vals[order].tolist())]
        out.sort(key=lambda d: (-d["angle"] if descending else d["angle"], d["layer"], d["i"], d["j"]))
        return out[:limit] if limit is not None else out

    def headline(self, top: int = 10) -> list[str]:
        """The least distinct pairs, and the kernels whose activation vector is zero."""
        lines = [f"{p['layer']}: kernels {p['i']} and {p['j']} at {p['angle']:.2f} degrees" for p in self.pairs(top)]
        lines += [f"{layer}: {len(d)} dead kernel(s) (zero on every sample): {d}" for layer, d in self.dead.items() if d]
        lines += [f"{layer}: {len(d) - len(self.dead.get(layer, []))} more kernel(s) with a zero centered vector "
                  "(the same activation norm on every sample)" for layer, d in self.degenerate.items()
                  if len(d) > len(self.dead.get(layer, []))]  # fmt: skip
        return lines

    def plot(self, layer: str | None = None):
        """Heatmap of a layer's angle matrix (default the last) beside each layer's nearest angles, one row
        per layer (dead kernels, which have no angle, left out)."""
        import matplotlib.pyplot as plt

        layer = layer or self.layers[-1]
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, max(4.0, height_for(len(self.layers)))),
                                       gridspec_kw={"width_ratios": [1, 1.2]})  # fmt: skip
        im = ax1.imshow(self.angles[layer], cmap="viridis", vmin=0, vmax=180 if self.center else 90)
        ax1.set_title(f"{layer}: angle between kernels (degrees; white: dead)", fontsize=9)
        ax1.set_xlabel("kernel")
        ax1.set_ylabel("kernel")
        fig.colorbar(im, ax=ax1, fraction=0.046, pad=0.04, label="degrees")
        per_layer_boxes(self.layers, [self.nearest(x)[0] for x in self.layers], ax=ax2, line=15.0,
                        line_label="15 degrees (Gedeon-Harris 'similar')",
                        xlabel="angle to the nearest other kernel (degrees" + (", folded to 0-90)" if self.center else ")"),
                        title=f"distinctiveness, center={self.center}: each point a kernel")  # fmt: skip
        return fig


def result_from_stats(stats: dict[str, ActivationStats], obs: dict[str, str], center: str | None,
                      params: dict[str, Any], seed: int | None = None, complete: bool = True) -> DistinctivenessResult:
    """Build a :class:`DistinctivenessResult` from accumulated statistics."""
    meta = make_meta("distinctiveness", params, seed)
    meta["complete"] = complete
    res = DistinctivenessResult(meta=meta, layers=list(stats), observed={n: obs[n] for n in stats}, center=center)
    for name, st in stats.items():
        st = st.settled()
        ang, norms = st.angles(center)
        res.n_samples = st.n
        res.angles[name] = ang.to("cpu", torch.float64)
        res.norms[name] = norms.tolist()
        res.mean_norm[name] = (st.sums / st.n).tolist()
        res.degenerate[name] = torch.nonzero(torch.isnan(ang.diagonal())).flatten().tolist()
        res.dead[name] = torch.nonzero(st.maxs <= 0).flatten().tolist()
    return res


@analysis("distinctiveness", paper="distinctiveness", result=DistinctivenessResult, options=[
    option("center", "center the activation vectors (lets complementary pairs appear)", choices=CENTERINGS),
    option("amp", "forward pass in bfloat16 or float16 (torch.autocast); norms and Gram matrices stay float64",
           choices=AMP_CHOICES),
])  # fmt: skip
def distinctiveness(
    model: nn.Module,
    data: Dataset | DataLoader,
    layers: LayerSpec = None,
    *,
    observe: ObserveSpec = None,
    center: str | None = None,
    amp: str | None = None,
    batch_size: int = 256,
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool | None = None,
    partial: str | os.PathLike | None = None,
) -> DistinctivenessResult:
    """Distinctiveness (angle in degrees) between every pair of kernels of each conv layer.

    Args:
        model: the network (left as found: weights, hooks, attributes, train/eval flags).
        data: Dataset or DataLoader of ``(input, label)``; one pass, streamed.
        layers: conv layers (names, globs, modules); default every ``nn.Conv2d``.
        observe: the module whose output is the kernel's activation: default the activation after
            the conv (:func:`cnn_redundancy.core.graph.default_observe`); one module name (single layer) or
            a dict ``{layer: module}``.
        center: ``None`` (plain angles, 0-90 degrees since norms are non-negative), ``"mean"``
            (subtract each vector's mean) or ``"minmax"`` (scale to [0, 1] and subtract 0.5, as Gedeon
            and Harris did with sigmoid units); centered angles span 0-180 degrees.
        amp: ``"bf16"`` or ``"fp16"``: the forward pass under ``torch.autocast`` (norms in float32,
            statistics in float64); ``None``: full precision.
        seed: recorded in the result (nothing is drawn at random).
        partial: a JSON path rewritten as the work goes with the angles over the batches seen so far.

    Returns:
        A :class:`DistinctivenessResult`.

    Example:
        >>> from cnn_redundancy.testing import duplicated_kernels_net, random_images
        >>> r = distinctiveness(duplicated_kernels_net(), random_images(16), "conv1")
        >>> round(r.angles["conv1"][0, 1].item(), 3)
        0.0
    """
    if center not in CENTERINGS:
        raise ValueError(f"center must be None, 'mean' or 'minmax', not {center!r}")
    names = resolve_layers(model, layers)
    obs = resolve_observe(model, names, observe)
    params = {"layers": names, "observe": obs, "center": center, "amp": amp}
    seen: dict[str, ActivationStats] = {}
    done = [False]

    def write() -> None:
        result_from_stats(seen, obs, center, params, seed, complete=done[0]).save(partial)  # type: ignore[arg-type]

    with Partials(write if partial is not None else None) as partials:

        def on_batch(stats: dict[str, ActivationStats]) -> None:
            seen.update(stats)
            partials.started = True
            partials.maybe()

        stats = activation_stats(model, data, names, observe=obs, amp=amp, batch_size=batch_size, device=device,
                                 progress=progress, on_batch=on_batch)
        done[0] = True
    return result_from_stats(stats, obs, center, params, seed)
