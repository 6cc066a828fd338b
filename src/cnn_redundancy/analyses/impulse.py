"""Unit impulse responses of conv kernels and their normalized cross-correlation (impulse paper, section 3).

A unit impulse (1 at the centre pixel of one input channel, 0 elsewhere; one impulse per input
channel) is passed through the trained network, and the output of every conv layer is kept: the
*response* of each kernel (output channel). Kernels whose responses are highly correlated, within
a layer or across depth, are redundant. For a single conv the response is its kernel rotated by
180 degrees (PyTorch convolutions are cross-correlations).

``mode="network"`` uses the network as trained (biases and nonlinearities included).
``mode="linear"`` uses its linear part: biases and BN shifts set to zero, activation functions
replaced by the identity and max pooling by average pooling, so each response is the effective
cascaded kernel of the convolutions up to that layer. ``mode="both"`` keeps both.
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
from functools import cached_property

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..core.batches import expected_input_shape, forward_checked, model_dtype, resolve_device, sample_shape
from ..core.device import placed
from ..core.graph import ACTIVATIONS, SplitUnavailable, trace
from ..core.hooks import capture, copy_of, preserved
from ..core.layers import LayerSpec, not_called, resolve_layers
from ..core.metrics import check_max_lag, ncc_matrix, normalize_responses
from ..core.plotting import per_layer_boxes
from ..core.progress import progress_bar
from ..core.registry import analysis, option
from ..core.results import Partials, Result, make_meta
from ..models import copy_spec

__all__ = ["ImpulseResult", "impulse_response", "linearized"]

MODES = ("network", "linear", "both")


@dataclasses.dataclass(eq=False)
class ImpulseResult(Result):
    """Impulse responses of every kernel of the analysed conv layers.

    Attributes:
        layers: analysed conv layers, in forward order.
        input_shape: ``(C, H, W)`` of the impulse input; one impulse per input channel.
        mode: ``"network"``, ``"linear"`` or ``"both"``.
        responses: ``responses[layer][i][k]`` is the ``H' x W'`` response of kernel ``k`` to the
            impulse in input channel ``i`` (the network's, or the linear part's for ``mode="linear"``).
        linear_responses: the linear part's responses with ``mode="both"`` (else empty).
        lag: default NCC lag (``"max"`` over spatial shifts, or ``"zero"``); ``max_lag`` bounds shifts.
        max_ncc_values: ``max_ncc_values[layer][k]``: highest NCC of kernel ``k`` with any other kernel
            of its layer (itself excluded); the paper's figure 9.
        max_ncc_partner: ``max_ncc_partner[layer][k]``: that other kernel (``None`` in a one-kernel layer).
        small_maps: layers whose responses are 4x4 pixels or less: an NCC over so few pixels says little
            (a few values correlate by chance), so :meth:`redundant_fraction` gives NaN for them.
        constant: kernels whose response is constant (no spatial structure; NCC 0 with everything).
    """

    layers: list[str] = dataclasses.field(default_factory=list)
    input_shape: list[int] = dataclasses.field(default_factory=list)
    mode: str = "network"
    responses: dict[str, list] = dataclasses.field(default_factory=dict)
    linear_responses: dict[str, list] = dataclasses.field(default_factory=dict)
    lag: str = "max"
    max_lag: int | None = None
    max_ncc_values: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    max_ncc_partner: dict[str, list[int | None]] = dataclasses.field(default_factory=dict)
    constant: dict[str, list[int]] = dataclasses.field(default_factory=dict)
    small_maps: list[str] = dataclasses.field(default_factory=list)

    @cached_property
    def _tensors(self) -> dict[str, torch.Tensor]:
        return {k: torch.tensor(v, dtype=torch.float64) for k, v in self.responses.items()}

    @cached_property
    def _ncc_cache(self) -> dict[tuple, torch.Tensor]:
        return {}

    @cached_property
    def _linear_tensors(self) -> dict[str, torch.Tensor]:
        return {k: torch.tensor(v, dtype=torch.float64) for k, v in self.linear_responses.items()}

    def _check(self, layer: str) -> None:
        if layer not in self.responses:
            raise ValueError(f"No responses for layer {layer!r}; analysed layers: {', '.join(self.layers)}")

    def response(self, layer: str, *, linear: bool = False) -> torch.Tensor:
        """Responses of ``layer`` as a tensor ``[kernels, impulses, H, W]``."""
        self._check(layer)
        src = self._linear_tensors if linear and self.mode == "both" else self._tensors
        if linear and self.mode == "network":
            raise ValueError("this result holds network responses only; run with mode='linear' or 'both'")
        return src[layer].transpose(0, 1)

    def ncc(self, layer_a: str, layer_b: str | None = None, *, lag: str | None = None,
            max_lag: int | None = None, linear: bool = False) -> torch.Tensor:  # fmt: skip
        """NCC matrix between the kernels of ``layer_a`` and of ``layer_b`` (default: ``layer_a``).

        Zero-mean normalized cross-correlation of the responses (:func:`cnn_redundancy.metrics.ncc_matrix`),
        the maximum over spatial shifts by default. Across depth, responses of different sizes are
        compared at every relative placement (``lag="max"``) or centres aligned (``lag="zero"``);
        no rescaling is applied for pooling between the layers.
        """
        lag = lag or self.lag
        max_lag = self.max_lag if max_lag is None else max_lag
        layer_b = None if layer_b == layer_a else layer_b
        key = (layer_a, layer_b, lag, max_lag, linear)
        if key not in self._ncc_cache:
            a = self.response(layer_a, linear=linear)
            b = None if layer_b is None else self.response(layer_b, linear=linear)
            self._ncc_cache[key] = ncc_matrix(a, b, lag=lag, max_lag=max_lag)
        return self._ncc_cache[key].clone()

    def max_ncc(self, layer: str, **kw) -> list[float]:
        """One-vs-all maximum NCC per kernel of ``layer``, itself excluded (the paper's figure 9)."""
        if not kw and layer in self.max_ncc_values:
            return list(self.max_ncc_values[layer])
        m = self.ncc(layer, **kw)
        return _max_offdiag(m)[0]

    def redundant_fraction(self, threshold: float = 0.9) -> dict[str, float]:
        """Per layer, the fraction of kernels with a partner of NCC at least ``threshold`` (NaN for
        layers in :attr:`small_maps`)."""
        out = {}
        for layer in self.layers:
            vals = self.max_ncc(layer)
            out[layer] = math.nan if layer in self.small_maps else sum(v >= threshold for v in vals) / len(vals) if vals else 0.0
        return out

    def headline(self, threshold: float = 0.9) -> list[str]:
        """Per layer, the fraction of kernels whose response has a near-copy (NCC >= ``threshold``)."""
        return [f"{layer}: {frac:.1%} of kernels have a partner with NCC >= {threshold}" if not math.isnan(frac)
                else f"{layer}: responses of 4x4 pixels or less, NCC not meaningful"
                for layer, frac in self.redundant_fraction(threshold).items()]

    def cross_depth(self, layer_a: str, layer_b: str, **kw) -> list[float]:
        """For each kernel of ``layer_b``, its highest NCC with any kernel of ``layer_a``."""
        return self.ncc(layer_a, layer_b, **kw).amax(0).tolist()

    def plot(self, layer: str | None = None, *, kind: str = "responses", impulse: int = 0, max_kernels: int = 64, title: str | None = None):
        """``kind="responses"``: grid of kernel responses (paper fig. 8); ``"ncc"``: NCC heatmap (fig. 9);
        ``"max_ncc"``: one-vs-all maximum NCC per kernel. Without a layer, when there are several: the
        one-vs-all maximum NCC of every layer's kernels, one row per layer."""
        import matplotlib.pyplot as plt

        if layer is None and len(self.layers) > 1:
            return per_layer_boxes(self.layers, [[math.nan] * len(self.max_ncc(x)) if x in self.small_maps
                                                 else self.max_ncc(x) for x in self.layers],
                                   xlabel="max NCC of a kernel's impulse response with another kernel's", line=0.9,
                                   line_label="0.9 (the paper's threshold)", xlim=(-1.0, 1.0),
                                   title=title or "impulse responses: one-vs-all maximum NCC per kernel")  # fmt: skip
        layer = layer or self.layers[0]
        self._check(layer)
        if kind == "responses":
            r = self.response(layer)[:, impulse]
            n = min(len(r), max_kernels)
            cols = min(n, 10 if n > 16 else 8)
            rows = math.ceil(n / cols)
            h, w = r.shape[-2:]
            pad = max(1, h // 10)
            # one mosaic image (fast to draw): each tile scaled to its own range, NaN gaps between tiles
            mosaic = torch.full((rows * (h + pad) - pad, cols * (w + pad) - pad), float("nan"), dtype=torch.float64)
            for i in range(n):
                t = r[i]
                lo, hi = t.min(), t.max()
                t = (t - lo) / (hi - lo) if hi > lo else torch.zeros_like(t)
                y, x = divmod(i, cols)
                mosaic[y * (h + pad) : y * (h + pad) + h, x * (w + pad) : x * (w + pad) + w] = t
            fig, ax = plt.subplots(figsize=(min(12, 1.2 * cols + 0.6), 1.2 * rows + 0.6))
            cmap = plt.get_cmap("gray").with_extremes(bad="white")
            ax.imshow(mosaic.numpy(), cmap=cmap, interpolation="nearest")
            ax.set_xticks([(w + pad) * c + w / 2 - 0.5 for c in range(cols)], [str(c) for c in range(cols)], fontsize=7)
            ax.set_yticks([(h + pad) * rr + h / 2 - 0.5 for rr in range(rows)], [str(rr * cols) for rr in range(rows)], fontsize=7)
            ax.set_xlabel("kernel index (row start + column)", fontsize=8)
            ax.tick_params(length=0)
            for spine in ax.spines.values():
                spine.set_visible(False)
            more = f" (first {n} of {len(r)})" if n < len(r) else ""
            ax.set_title(title or f"Impulse responses of {layer} kernels{more}, impulse in input channel {impulse}", fontsize=9)
            fig.tight_layout()
            return fig
        if kind == "ncc":
            m = self.ncc(layer).numpy()
            fig, ax = plt.subplots(figsize=(4.8, 4.0))
            im = ax.imshow(m, vmin=-1, vmax=1, cmap="RdBu_r")
            fig.colorbar(im, ax=ax, label=f"NCC ({self.lag} lag)")
            ax.set_xlabel(f"kernel of {layer}")
            ax.set_ylabel(f"kernel of {layer}")
            ax.set_title(title or f"NCC between impulse responses, {layer}")
            return fig
        if kind == "max_ncc":
            v = self.max_ncc(layer)
            fig, ax = plt.subplots(figsize=(5.5, 3.2))
            ax.bar(range(len(v)), v, color="#4a78b5")
            ax.axhline(0.9, color="red", ls="--", lw=1, label="0.9")
            ax.set_ylim(min(0, min(v)), 1.0)
            ax.set_xlabel(f"kernel of {layer}")
            ax.set_ylabel("max NCC with another kernel")
            ax.set_title(title or f"One-vs-all maximum NCC, {layer}")
            ax.legend()
            return fig
        raise ValueError(f"kind must be 'responses', 'ncc' or 'max_ncc', not {kind!r}")


def _max_offdiag(m: torch.Tensor) -> tuple[list[float], list[int | None]]:
    """Per row, the largest value off the diagonal and its column."""
    if m.shape[0] < 2:
        return [float("nan")] * m.shape[0], [None] * m.shape[0]
    m = m.clone()
    m.fill_diagonal_(-torch.inf)
    values, idx = m.max(1)
    return values.tolist(), idx.tolist()


_LINEAR_FUNCS = {F.relu, torch.relu, F.relu6, F.leaky_relu, F.elu, F.gelu, F.silu, F.mish, F.hardswish, F.hardtanh,
                 F.tanh, torch.tanh, F.sigmoid, torch.sigmoid, F.softplus, F.selu, F.celu}  # fmt: skip
_LINEAR_METHODS = {"relu", "relu_", "tanh", "tanh_", "sigmoid", "sigmoid_"}


def linearized(model: nn.Module) -> nn.Module:
    """A copy of ``model`` reduced to its linear part (the input model is not touched).

    Conv/linear biases and BN shifts become zero (BN keeps its per-channel scale
    ``weight / sqrt(running_var + eps)``), activations become the identity, max pooling becomes
    average pooling of the same size. Functional activations are removed too where the model is
    fx-traceable; otherwise only activation modules are replaced (with a warning).
    """
    m = copy_of(model, "the linearized model").eval()
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.Conv2d | nn.Linear | nn.ConvTranspose2d) and mod.bias is not None:
                mod.bias.zero_()
            if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                if mod.running_mean is not None:
                    mod.running_mean.zero_()
                if mod.bias is not None:
                    mod.bias.zero_()

    def swap(parent: nn.Module) -> None:
        for name, child in parent.named_children():
            if isinstance(child, ACTIVATIONS):
                setattr(parent, name, nn.Identity())
            elif isinstance(child, nn.MaxPool2d):
                setattr(parent, name, nn.AvgPool2d(child.kernel_size, child.stride, child.padding, child.ceil_mode, count_include_pad=True))
            elif isinstance(child, nn.AdaptiveMaxPool2d):
                setattr(parent, name, nn.AdaptiveAvgPool2d(child.output_size))
            else:
                swap(child)

    swap(m)
    try:
        gm = trace(m)
    except SplitUnavailable as e:
        warnings.warn(f"{e}; only activation modules were linearized, functional activations remain")
        return m
    changed = False
    for node in list(gm.graph.nodes):
        if (node.op == "call_function" and node.target in _LINEAR_FUNCS) or (
            node.op == "call_method" and node.target in _LINEAR_METHODS
        ):
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
            changed = True
        elif node.op == "call_function" and node.target in (F.max_pool2d, torch.max_pool2d):
            args = list(node.args) + [None] * 4
            ks = node.kwargs.get("kernel_size", args[1])
            stride = node.kwargs.get("stride", args[2])
            pad = node.kwargs.get("padding", args[3] if args[3] is not None else 0)
            with gm.graph.inserting_after(node):
                new = gm.graph.call_function(F.avg_pool2d, (node.args[0], ks, stride, pad))
            node.replace_all_uses_with(new)
            gm.graph.erase_node(node)
            changed = True
    if not changed:
        return m
    gm.recompile()
    return copy_spec(m, gm)


@analysis("impulse", paper="impulse", result=ImpulseResult, needs_data=False, options=[
    option("input_shape", "C H W of the model input (default: what the data or the model declares)", type=int, nargs=3),
    option("mode", "network (as trained), linear (the cascaded kernels) or both", choices=MODES),
    option("lag", "NCC at the best spatial shift (max) or at zero shift", choices=("max", "zero")),
])  # fmt: skip
def impulse_response(
    model: nn.Module,
    data: Dataset | DataLoader | None = None,
    layers: LayerSpec = None,
    *,
    input_shape: tuple[int, int, int] | None = None,
    mode: str = "network",
    lag: str = "max",
    max_lag: int | None = None,
    amplitude: float = 1.0,
    batch_size: int = 256,
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool | None = None,
    partial: str | os.PathLike | None = None,
) -> ImpulseResult:
    """Unit impulse responses of every kernel of the conv layers, and their NCC.

    Args:
        model: a trained network (left exactly as found).
        data: optional; only its input shape is used (when ``input_shape`` is not given).
        layers: conv layers to keep (names, globs or modules; default all).
        input_shape: ``(C, H, W)`` of the model's input; default: the shape of ``data``'s inputs, or
            ``model.input_shape`` where the model declares it. One impulse per input channel, at the
            centre pixel ``(H // 2, W // 2)``.
        mode: ``"network"`` (as trained), ``"linear"`` (bias-free, nonlinearity-free composition:
            the effective cascaded kernel), or ``"both"``.
        lag: NCC over the maximum of spatial shifts (``"max"``, default) or at zero lag.
        max_lag: bound on the shifts for ``lag="max"``.
        amplitude: the impulse's value (1 for a unit impulse).
        batch_size, seed: accepted for the shared shape; the ``C`` impulses form one batch and
            nothing is drawn at random.
        progress: a bar over the layers' NCC computations.
        partial: a JSON path rewritten as the NCC of each layer is done.

    Returns:
        :class:`ImpulseResult`.

    Example:
        >>> import torch
        >>> from cnn_redundancy.testing import single_conv
        >>> k = torch.arange(9.0).reshape(1, 1, 3, 3)
        >>> res = impulse_response(single_conv(k), input_shape=(1, 5, 5))
        >>> torch.equal(res.response("conv")[0, 0, 1:4, 1:4], torch.rot90(k[0, 0], 2).double())
        True
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    if lag not in ("max", "zero"):
        raise ValueError(f"lag must be 'max' or 'zero', not {lag!r}")
    check_max_lag(max_lag)
    names = resolve_layers(model, layers, types=(nn.Conv2d,))
    shape = _input_shape(model, data, input_shape)
    dev = resolve_device(device, model)
    impulses = _impulses(model, shape, dev, amplitude)
    network = _responses(model, names, impulses) if mode in ("network", "both") else {}
    linear = _responses(linearized(model), names, impulses) if mode in ("linear", "both") else {}
    params = {"layers": names, "input_shape": list(shape), "mode": mode, "lag": lag, "max_lag": max_lag, "amplitude": amplitude}
    res = ImpulseResult(meta={**make_meta("impulse_response", params, seed), "complete": False}, layers=names,
                        input_shape=list(shape), mode=mode, responses=linear if mode == "linear" else network,
                        linear_responses=linear if mode == "both" else {}, lag=lag, max_lag=max_lag)  # fmt: skip
    with Partials((lambda: res.save(partial)) if partial is not None else None) as partials, \
            progress_bar(len(names), "impulse NCC", enabled=progress, unit="layer") as bar:  # fmt: skip
        for n in names:
            r = res.response(n)
            res.max_ncc_values[n], res.max_ncc_partner[n] = _max_offdiag(ncc_matrix(r.to(dev), lag=lag, max_lag=max_lag))
            res.constant[n] = torch.nonzero(normalize_responses(r)[1]).flatten().tolist()
            if r.shape[-1] * r.shape[-2] <= 16:
                res.small_maps.append(n)
            partials.started = True
            bar.update(1)
            partials.maybe()
        res.meta["complete"] = True
    if res.small_maps:
        warnings.warn(f"impulse responses of {', '.join(res.small_maps)} are 4x4 pixels or less: their NCC is not "
                      "meaningful (redundant_fraction gives NaN there); use a larger input_shape", stacklevel=2)
    return res


def _input_shape(model: nn.Module, data, input_shape) -> tuple[int, int, int]:
    """``input_shape``, else the data's input shape, else what the model declares."""
    if input_shape is not None:
        shape = tuple(input_shape)
    elif data is not None:
        shape = sample_shape(data)
    else:
        shape = expected_input_shape(model)
    if shape is None:
        raise ValueError("pass input_shape=(C, H, W) or data: the model does not declare its input shape")
    if len(shape) != 3 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape):
        raise ValueError(f"input_shape must be (C, H, W) with positive integers, got {shape}")
    return shape  # type: ignore[return-value]


def _impulses(model: nn.Module, shape: tuple[int, int, int], device: torch.device, amplitude: float) -> torch.Tensor:
    """One impulse per input channel, at the centre pixel, in the model's floating-point type."""
    c, h, w = shape
    dtype = model_dtype(model) or torch.float32
    impulses = torch.zeros(c, c, h, w, device=device, dtype=dtype)
    for i in range(c):
        impulses[i, i, h // 2, w // 2] = amplitude
    return impulses


def _responses(model: nn.Module, names: list[str], impulses: torch.Tensor) -> dict[str, list]:
    """Every named layer's output for the impulses (model left as found, on its own device)."""
    with preserved(model), torch.no_grad(), placed(model, impulses.device), capture(model, names) as store:
        model.eval()
        forward_checked(model, impulses)
    missing = [n for n in names if n not in store]
    if missing:
        raise not_called(missing)
    return {n: store[n].detach().cpu().double().tolist() for n in names}
