"""The only place where hooks are registered.

Every helper is a context manager that removes its hooks in ``finally``. :func:`preserved` also
restores every module's train/eval flag and plain attributes (a tensor a ``forward`` caches on
itself, a call counter), removes any hook left behind by code inside it, and (optionally) restores
the weights bit for bit, also when the block raises or is interrupted.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .device import to_the_end

__all__ = [
    "preserved",
    "copy_of",
    "eval_mode",
    "capture",
    "replace_output",
    "replace_input",
    "replacing",
    "capture_calls",
    "count_calls",
    "capture_after",
    "hook_count",
]

_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_state_dict_hooks",
    "_load_state_dict_pre_hooks",
)


def hook_count(model: nn.Module) -> int:
    """Number of hooks registered on ``model`` and all its submodules."""
    return sum(len(getattr(m, d, {}) or {}) for m in model.modules() for d in _HOOK_DICTS)


def _hook_keys(model: nn.Module) -> dict[int, dict[str, set]]:
    return {id(m): {d: set((getattr(m, d, None) or {}).keys()) for d in _HOOK_DICTS} for m in model.modules()}


_STRUCTURE = {"_parameters", "_buffers", "_modules", *_HOOK_DICTS}


def _attributes(model: nn.Module) -> list[tuple[nn.Module, dict]]:
    return [(m, {k: v for k, v in m.__dict__.items() if k not in _STRUCTURE}) for m in model.modules()]


def _restore_attributes(saved: list[tuple[nn.Module, dict]]) -> None:
    for m, attrs in saved:
        d = m.__dict__
        for k in [k for k in d if k not in _STRUCTURE and k not in attrs]:
            del d[k]
        for k, v in attrs.items():
            if d.get(k, _MISSING) is not v:
                d[k] = v


_MISSING = object()


@contextlib.contextmanager
def preserved(model: nn.Module, *, weights: bool = False) -> Iterator[nn.Module]:
    """Leave ``model`` exactly as found: train/eval flags, attributes, hooks and (``weights=True``) its state.

    On exit (normal, exception or ``KeyboardInterrupt``) every module's plain attributes (its
    ``training`` flag, values a ``forward`` stores on the module) are restored, hooks added inside
    the block are removed, and with ``weights=True`` every parameter and buffer is copied back
    from a snapshot taken on entry.
    """
    attributes = _attributes(model)
    before = _hook_keys(model)
    snapshot = {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()} if weights else None
    def restore() -> None:
        _restore_attributes(attributes)
        for m in model.modules():
            known = before.get(id(m), {})
            for d in _HOOK_DICTS:
                hd = getattr(m, d, None)
                if not hd:
                    continue
                for key in list(hd.keys()):
                    if key not in known.get(d, set()):
                        del hd[key]
        if snapshot is not None:
            with torch.no_grad():
                current = model.state_dict(keep_vars=True)
                for k, v in snapshot.items():
                    if k in current and current[k].shape == v.shape:
                        current[k].copy_(v)
                    else:  # a module was replaced: fall back to load_state_dict
                        model.load_state_dict(snapshot, strict=False)
                        break

    try:
        yield model
    finally:
        to_the_end(restore)


def copy_of(model: nn.Module, what: str = "this") -> nn.Module:
    """A deep copy of ``model``, which is left as found; a clear error where none can be made.

    A tensor that a forward pass computed and left on a module (the older hook-based
    ``torch.nn.utils.weight_norm`` and ``spectral_norm`` keep their weight so, as part of the pass's
    graph) cannot be deep-copied: the copy gets it detached, and recomputes it on its first pass.
    ``what`` names the work that needs the copy, for the error.
    """
    memo: dict[int, Any] = {}
    for m in model.modules():
        for v in vars(m).values():
            if isinstance(v, torch.Tensor) and not v.is_leaf:
                memo[id(v)] = v.detach().clone()
    with preserved(model):
        try:
            return copy.deepcopy(model, memo)
        except Exception as e:
            raise ValueError(f"{type(model).__name__} cannot be copied (copy.deepcopy failed: {type(e).__name__}: {e}); "
                             f"{what} works on a copy so that the original stays intact: make the model deep-copyable "
                             "(no open files, locks or generators held as attributes)") from None


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model.eval()`` inside the block; every module's flag restored on exit."""
    with preserved(model):
        model.eval()
        yield model


@contextlib.contextmanager
def _registered(handles: list) -> Iterator[None]:
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def capture(
    model: nn.Module,
    names: Sequence[str],
    *,
    what: str = "output",
    detach: bool = True,
    fn: Callable[[str, torch.Tensor], object] | None = None,
) -> Iterator[dict[str, object]]:
    """Capture the input or output of named modules on each forward pass.

    Args:
        model: the network.
        names: dotted module names (see :func:`cnn_redundancy.layers.resolve_layers`).
        what: ``"output"`` or ``"input"`` (the first positional input).
        detach: detach captured tensors from the graph.
        fn: if given, store ``fn(name, tensor)`` instead of the tensor (e.g. a reduction, so that
            only what an analysis needs is kept).

    Yields:
        A dict, filled on every forward pass, from name to the captured value of the last call.
    """
    if what not in ("output", "input"):
        raise ValueError(f"what must be 'output' or 'input', not {what!r}")
    store: dict[str, object] = {}
    handles = []

    def make(name: str):
        def keep(t):
            if isinstance(t, tuple | list):
                t = t[0]
            if detach and isinstance(t, torch.Tensor):
                t = t.detach()
            store[name] = fn(name, t) if fn is not None else t

        if what == "output":
            return lambda mod, args, out: keep(out)
        return lambda mod, args: keep(args)

    try:
        for n in names:
            m = model.get_submodule(n)
            if what == "output":
                handles.append(m.register_forward_hook(make(n)))
            else:
                handles.append(m.register_forward_pre_hook(make(n)))
        yield store
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def replace_output(model: nn.Module, name: str, fn: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """Replace the output of module ``name`` by ``fn(output)`` on each forward pass."""
    handle = model.get_submodule(name).register_forward_hook(lambda mod, args, out: fn(out))
    with _registered([handle]):
        yield


@contextlib.contextmanager
def replace_input(model: nn.Module, name: str, fn: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """Replace the first positional input of module ``name`` by ``fn(input)`` on each forward pass."""

    def pre(mod, args):
        return (fn(args[0]), *args[1:])

    handle = model.get_submodule(name).register_forward_pre_hook(pre)
    with _registered([handle]):
        yield


@contextlib.contextmanager
def replacing(
    model: nn.Module, fns: Mapping[str, Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]]
) -> Iterator[None]:
    """Replace the output of each named module by ``fn(module, input, output)`` on each forward pass
    (``input`` is the module's first positional input)."""
    handles = [
        model.get_submodule(name).register_forward_hook(lambda mod, args, out, fn=fn: fn(mod, args[0], out))
        for name, fn in fns.items()
    ]
    with _registered(handles):
        yield


@contextlib.contextmanager
def capture_calls(model: nn.Module, modules: Sequence[nn.Module], names: Sequence[str]) -> Iterator[list[str]]:
    """Record the names of ``modules`` in the order they are called."""
    calls: list[str] = []
    handles = [
        m.register_forward_pre_hook(lambda mod, args, n=n: calls.append(n)) for m, n in zip(modules, names)
    ]
    with _registered(handles):
        yield calls


@contextlib.contextmanager
def count_calls(model: nn.Module, names: Sequence[str]) -> Iterator[dict[str, int]]:
    """Count forward calls of the named modules."""
    counts = {n: 0 for n in names}

    def make(n):
        def pre(mod, args):
            counts[n] += 1

        return pre

    handles = [model.get_submodule(n).register_forward_pre_hook(make(n)) for n in names]
    with _registered(handles):
        yield counts


@contextlib.contextmanager
def capture_after(
    model: nn.Module,
    pairs: Mapping[str, str],
    *,
    fn: Callable[[str, torch.Tensor], object] | None = None,
) -> Iterator[dict[str, object]]:
    """For each ``layer: observe`` pair, keep the first output of ``observe`` after ``layer`` is called.

    A module used several times in a forward pass (a shared ReLU, say) is read at its first call
    after each layer; ``observe == layer`` keeps the layer's own output, as it was when computed (a
    copy, which later in-place operations leave alone). With ``fn``, the value kept is
    ``fn(observe, output)``, computed when the module returns, once however many layers wait for it. An
    ``observe`` that is a :class:`cnn_redundancy.core.graph.Activation` reads its module's output through
    its function (``F.relu`` applied by the model, which no hook sees).

    Yields:
        A dict from layer name to the kept value; a layer's entry is dropped when it is called again.
    """
    store: dict[str, object] = {}
    pending: dict[str, dict[str, None]] = {}

    def arm(layer: str):
        def pre(mod, args):
            store.pop(layer, None)
            pending.setdefault(pairs[layer], {})[layer] = None

        return pre

    def keep(observe: str):
        def hook(mod, args, out):
            waiting = pending.pop(observe, None)
            if waiting:
                t = out[0] if isinstance(out, tuple | list) else out
                if callable(observe):  # an activation the model applies as a function (core.graph.Activation)
                    t = observe(t.detach())  # a new tensor
                # without ``fn`` a copy: an in-place op later in the pass (``ReLU(inplace=True)``) would change it
                value = fn(observe, t.detach()) if fn is not None else t.detach().clone()
                for layer in waiting:
                    store[layer] = value

        return hook

    handles = [model.get_submodule(layer).register_forward_pre_hook(arm(layer)) for layer in pairs]
    handles += [model.get_submodule(o).register_forward_hook(keep(o)) for o in dict.fromkeys(pairs.values())]
    with _registered(handles):
        yield store
