"""Where an analysis reads a layer's activation: the ``observe=`` argument, resolved once per analysis.

Every analysis that reads activations takes ``observe``: ``None`` (each layer's activation after its
nonlinearity where the model makes that identifiable, a module or a function such as ``F.relu``
(:class:`cnn_redundancy.core.graph.Activation`), else the layer's output), one module (for a
single layer), or a dict ``{layer: module}`` (layers left out take the default). The model is
traced once for all layers; the value read is the observed module's first output after the
layer's call (:func:`cnn_redundancy.core.hooks.capture_after`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import nn

from .graph import Traced
from .layers import resolve_layer

__all__ = ["ObserveSpec", "resolve_observe"]

ObserveSpec = str | nn.Module | Mapping[str, str | nn.Module] | None


def resolve_observe(model: nn.Module, layers: Sequence[str], observe: ObserveSpec = None, *,
                    traced: Traced | None = None) -> dict[str, str]:  # fmt: skip
    """``{layer: observed module name}`` for every layer (see the module docstring).

    ``traced``: the model's trace where the caller has one (it is not traced again).

    Example:
        >>> from cnn_redundancy.models import get_model
        >>> resolve_observe(get_model("lenet5"), ["conv1", "conv2"])
        {'conv1': 'act1', 'conv2': 'act2'}
    """
    names = list(layers)
    if observe is not None and not isinstance(observe, Mapping):
        if len(names) != 1:
            raise ValueError("observe= as one module needs exactly one layer; pass a dict {layer: module} for several")
        return {names[0]: resolve_layer(model, observe, types=None)}
    given = dict(observe or {})
    unknown = [k for k in given if k not in names]
    if unknown:
        raise ValueError(f"observe names layers that are not analysed: {', '.join(map(str, unknown))}")
    out = {n: resolve_layer(model, given[n], types=None) for n in names if n in given}
    rest = [n for n in names if n not in out]
    if rest:
        traced = traced if traced is not None else Traced.maybe(model)
        out.update({n: traced.default_observe(n) if traced is not None else n for n in rest})
    return {n: out[n] for n in names}
