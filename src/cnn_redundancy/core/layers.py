"""Resolve layer names, fnmatch globs and module objects to dotted module names.

Every analysis accepts layers as a dotted name (``"layer1.0.conv1"``), an fnmatch glob
(``"layer*.conv*"``), a module object, or a list of those. Results store names only, so they
stay JSON. An unknown name is an error that lists the closest available names.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Iterable, Sequence

import torch
from torch import nn

LayerSpec = str | nn.Module | Sequence[str | nn.Module] | None

__all__ = ["conv_layers", "resolve_layers", "resolve_layer", "get_module", "module_name", "uncalled_layers", "called_by_default",
           "not_called"]  # fmt: skip

_GLOB_CHARS = set("*?[")


def _forward_order(model: nn.Module, names: list[str], example_input: torch.Tensor | None) -> list[str]:
    """Order ``names`` by first call in a forward pass when an input is given, else by registration."""
    if example_input is None:
        return names
    order: list[str] = []
    modules = dict(model.named_modules())
    from .hooks import capture_calls

    with capture_calls(model, [modules[n] for n in names], names) as called:
        with torch.no_grad():
            model(example_input)
    for n in called:
        if n not in order:
            order.append(n)
    return order + [n for n in names if n not in order]


def conv_layers(
    model: nn.Module,
    *,
    example_input: torch.Tensor | None = None,
    types: tuple[type[nn.Module], ...] = (nn.Conv2d,),
) -> list[str]:
    """Dotted names of every ``nn.Conv2d`` of ``model``, in forward order.

    Registration order is the forward order for the usual models (torchvision, the model zoo).
    Pass ``example_input`` to order by the first call in a real forward pass instead.

    Example:
        >>> from cnn_redundancy.models import get_model
        >>> conv_layers(get_model("lenet5"))
        ['conv1', 'conv2']
    """
    names = [n for n, m in model.named_modules() if isinstance(m, types)]
    return _forward_order(model, names, example_input)


def uncalled_layers(model: nn.Module, names: list[str], example_input: torch.Tensor) -> list[str]:
    """Which of ``names`` a forward pass in eval mode never calls (auxiliary heads that run in training only,
    as GoogLeNet's and Inception's): the conv layers without MACs (:func:`cnn_redundancy.core.cost.count_macs`
    counts only what the pass calls); the model is left as found."""
    from .cost import count_macs

    macs = count_macs(model, example_input)
    return [n for n in names if n not in macs]


def called_by_default(model: nn.Module, names: list[str], asked: LayerSpec,
                      example_input: torch.Tensor) -> tuple[list[str], list[str]]:  # fmt: skip
    """``(names to work on, names left out)``: when the user named no layers (``asked`` is ``None``), the convs
    a forward pass in eval mode never calls are left out (there is nothing to measure them on); layers the
    user named all stay. The first forward pass of ``analyze``, ``compress`` and ``prune``: a shape error
    says which input the model expects."""
    from .batches import explained

    with explained(model, example_input):
        gone = uncalled_layers(model, names, example_input) if asked is None else []
    if gone and len(gone) == len(names):
        raise ValueError(f"a forward pass in eval mode calls none of {type(model).__name__}'s conv layers")
    return [n for n in names if n not in gone], gone


def not_called(layers: list[str], observed: dict[str, str] | None = None) -> ValueError:
    """The error for layers whose activation a forward pass did not give: named, with the usual cause."""
    first = layers[0]
    via = f" (read at {observed[first]!r})" if observed and observed.get(first, first) != first else ""
    return ValueError(f"{', '.join(map(repr, layers))}{via}: no activation in the forward pass. A layer the forward "
                      "pass in eval mode never calls (a head used in training only, as GoogLeNet's and Inception's "
                      "auxiliary classifiers) cannot be measured: leave it out with layers= (analyze, compress and prune "
                      "leave such layers out by themselves)")


def module_name(model: nn.Module, module: nn.Module) -> str:
    """The dotted name of ``module`` inside ``model``; ``ValueError`` if it is not a submodule."""
    for n, m in model.named_modules():
        if m is module:
            return n
    raise ValueError(f"{type(module).__name__} object is not a submodule of the given {type(model).__name__}")


def _unknown(model: nn.Module, name: str, candidates: Iterable[str] | None = None) -> ValueError:
    available = list(candidates) if candidates is not None else [n for n, _ in model.named_modules() if n]
    close = difflib.get_close_matches(name, available, n=5, cutoff=0.4)
    hint = f" Closest: {', '.join(close)}." if close else ""
    shown = ", ".join(available[:40]) + (" ..." if len(available) > 40 else "")
    return ValueError(f"Unknown layer {name!r}.{hint} Available: {shown}")


def get_module(model: nn.Module, name: str) -> nn.Module:
    """``model.get_submodule(name)`` with an error that lists the closest available names."""
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise _unknown(model, name) from None


def _none_of(model: nn.Module, types: tuple[type[nn.Module], ...]) -> ValueError:
    """The error for a model without a layer of ``types``, naming the other convolutions it has."""
    kinds = " or ".join(t.__name__ for t in types)
    others: dict[str, int] = {}
    for m in model.modules():
        if isinstance(m, nn.modules.conv._ConvNd) and not isinstance(m, types):
            others[type(m).__name__] = others.get(type(m).__name__, 0) + 1
    has = ", ".join(f"{n} {t}" for t, n in others.items())
    why = f": it has {has}, and the toolkit analyses 2-D convolutions (nn.Conv2d) only" if others else ""
    return ValueError(f"{type(model).__name__} has no layers of type {kinds}{why}")


def resolve_layers(
    model: nn.Module,
    layers: LayerSpec = None,
    *,
    types: tuple[type[nn.Module], ...] | None = (nn.Conv2d,),
    default: str = "conv",
) -> list[str]:
    """Resolve a layer spec to a list of dotted names.

    Args:
        model: the network.
        layers: ``None`` (every layer of ``types``), a name, a glob, a module, or a list of those.
        types: required module types; a resolved layer of another type raises ``TypeError``.
            ``None`` accepts any module.
        default: what ``None`` means; only ``"conv"`` (all layers of ``types``) is defined.

    Raises:
        ValueError: unknown name, or a glob that matches nothing (the message lists candidates).
        TypeError: a layer that is not of the required type.

    Example:
        >>> from cnn_redundancy.models import get_model
        >>> resolve_layers(get_model("lenet5"), "conv*")
        ['conv1', 'conv2']
    """
    typed = [n for n, m in model.named_modules() if n and (types is None or isinstance(m, types))]
    if layers is None:
        if not typed:
            raise _none_of(model, types or ())
        return typed
    specs = [layers] if isinstance(layers, str | nn.Module) else list(layers)
    out: list[str] = []
    for spec in specs:
        if isinstance(spec, nn.Module):
            names = [module_name(model, spec)]
        elif not isinstance(spec, str):
            raise TypeError(f"A layer is a name, a glob or a module, not {type(spec).__name__}")
        elif _GLOB_CHARS & set(spec):
            names = [n for n in typed if fnmatch.fnmatchcase(n, spec)]
            if not names:
                raise _unknown(model, spec, typed)
        else:
            get_module(model, spec)
            names = [spec]
        for n in names:
            m = model.get_submodule(n)
            if types is not None and not isinstance(m, types):
                kinds = " or ".join(t.__name__ for t in types)
                choices = ", ".join(typed[:20])
                raise TypeError(f"Layer {n!r} is a {type(m).__name__}, not a {kinds}. Layers of that type: {choices}")
            if n not in out:
                out.append(n)
    return out


def resolve_layer(model: nn.Module, layer: str | nn.Module, **kw) -> str:
    """Resolve exactly one layer; a glob matching several is an error."""
    names = resolve_layers(model, layer, **kw)
    if len(names) != 1:
        raise ValueError(f"Expected one layer, {layer!r} matches {len(names)}: {', '.join(names)}")
    return names[0]
