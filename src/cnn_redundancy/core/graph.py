"""Trace a model once with ``torch.fx`` and split it at any layer: upstream once, downstream only.

Perturbation sweeps change one layer's output and need the model output many times for the same
batch. :class:`Traced` traces the model **once per analysis** (never per layer or per unit) and
hands out, for any layer called exactly once,

- a :class:`Split`: every node that depends on the layer (its *downstream*) as a module taking
  the layer's output plus every other value the downstream part needs (e.g. a residual shortcut
  taken before the layer: the *frontier*), returning the model output and observed activations;
  an *observe-only* variant computes just the observed activations;
- a *recorder*: the whole forward pass returning the output and the values of chosen nodes (a
  split's frontier, the layer's input and output, observed activations), so that one clean pass
  per batch feeds every split;
- :meth:`Traced.default_observe`: the activation module after a conv.

This works for any fx-traceable model (``nn.Sequential`` or not, residual, multi-branch). Tracing
never changes the user's modules: attributes a ``forward`` writes while it is traced (a cached
tensor, a call counter) are restored. Models that cannot be traced raise
:class:`SplitUnavailable`; the sweep engine then falls back to full forward passes with hooks.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.fx as fx
from torch import nn

__all__ = ["Traced", "Split", "SplitState", "SplitUnavailable", "trace", "default_observe", "ACTIVATIONS", "Activation"]

ACTIVATIONS: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Tanh, nn.Sigmoid, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softplus, nn.Tanhshrink,
)  # fmt: skip
# modules whose output channel c comes from input channel c (a group or instance norm also reads the others'
# statistics, yet channel c stays channel c)
CHANNELWISE = (nn.BatchNorm2d, nn.GroupNorm, nn.InstanceNorm2d, nn.Identity, nn.Dropout, nn.Dropout2d)
_INPLACE_FUNCS = {operator.iadd, operator.isub, operator.imul, operator.itruediv}
# operations whose result may share memory with their first argument (a view, or the argument itself): an
# in-place operation on the result changes the argument too
_VIEW_METHODS = frozenset({
    "view", "view_as", "reshape", "reshape_as", "flatten", "unflatten", "transpose", "t", "permute", "squeeze",
    "unsqueeze", "expand", "expand_as", "narrow", "select", "unfold", "as_strided", "chunk", "split",
    "tensor_split", "unbind", "detach", "contiguous", "movedim", "moveaxis", "swapaxes", "swapdims", "diagonal",
    "__getitem__", "to", "type", "type_as", "float", "double", "half", "bfloat16", "real", "imag",
})  # fmt: skip
_VIEW_FUNCTIONS = frozenset({
    operator.getitem, getattr, torch.flatten, torch.reshape, torch.transpose, torch.permute, torch.squeeze,
    torch.unsqueeze, torch.narrow, torch.select, torch.chunk, torch.split, torch.tensor_split, torch.unbind,
    torch.t, torch.movedim, torch.moveaxis, torch.swapaxes, torch.swapdims, torch.diagonal, torch.detach,
    torch.real, torch.imag, torch.nn.functional.dropout, torch.nn.functional.dropout1d,
    torch.nn.functional.dropout2d, torch.nn.functional.dropout3d, torch.nn.functional.alpha_dropout,
    torch.nn.functional.feature_alpha_dropout,
})  # fmt: skip
_ALIAS_MODULES = (nn.Identity, nn.Flatten, nn.Unflatten, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
                  nn.AlphaDropout, nn.FeatureAlphaDropout)  # dropout in eval mode returns its input itself


_F = torch.nn.functional
# activations a model may apply as functions (no module to hook): pointwise, channel c stays channel c
_ACTIVATION_FUNCTIONS = frozenset({
    torch.relu, torch.relu_, torch.sigmoid, torch.tanh, _F.relu, _F.relu_, _F.relu6, _F.leaky_relu, _F.elu,
    _F.selu, _F.celu, _F.gelu, _F.silu, _F.mish, _F.hardtanh, _F.hardswish, _F.hardsigmoid, _F.softplus,
    _F.sigmoid, _F.tanh,
})  # fmt: skip
_ACTIVATION_METHODS = frozenset({"relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_"})
_OUT_OF_PLACE = {torch.relu_: torch.relu, _F.relu_: _F.relu}


class Activation(str):
    """Where a layer's activation is read when the model applies its nonlinearity as a function
    (``F.relu(self.bn1(self.conv1(x)))``, ``x.relu()``): the output of the module the string names (the
    conv, or the batch norm after it), then that function, applied again out of place to what is read.

    The string is that module's name, so hooks attach to it as to any observed module; splits and
    masks read the function's node, found in any trace of the model as that function applied to the
    module's call (not by its node name, which another trace may number otherwise); ``label`` is how
    results name it (``"relu(bn1)"``). It equals only an :class:`Activation` of the same module and function.
    """

    label: str

    def __new__(cls, module: str, node: fx.Node) -> Activation:
        self = super().__new__(cls, module)
        self.op, self.target = node.op, node.target
        name = node.target if isinstance(node.target, str) else node.target.__name__
        self.label = f"{name.rstrip('_')}({module})"
        if node.op == "call_method":
            self._fn, self._args, self._kwargs = getattr(torch.Tensor, node.target.rstrip("_")), (), {}
        else:
            self._fn = _OUT_OF_PLACE.get(node.target, node.target)
            self._args = _without_inplace(self._fn, tuple(node.args[1:]))
            self._kwargs = {k: v for k, v in node.kwargs.items() if k != "inplace"}
        return self

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        """The activation, from the module's output ``t`` (never changed)."""
        return self._fn(t, *self._args, **self._kwargs)

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Activation) and str.__eq__(self, other)
                and (self.op, self.target) == (other.op, other.target))  # fmt: skip

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __hash__(self) -> int:
        return hash((str.__str__(self), self.op, self.target))

    def computed_by(self, n: fx.Node) -> bool:
        """Whether node ``n`` of a trace of the model computes this activation: the function applied to the
        output of the module's call."""
        first = n.args[0] if n.args else None
        return ((n.op, n.target) == (self.op, self.target) and isinstance(first, fx.Node)
                and first.op == "call_module" and first.target == str.__str__(self))  # fmt: skip

    def __repr__(self) -> str:
        return repr(self.label)

    def __format__(self, spec: str) -> str:  # messages and figure labels name the activation
        return format(self.label, spec)

    def __reduce__(self):  # copied or pickled: its label (the traced node is not kept), which no module has
        return str, (self.label,)


def _without_inplace(fn, args: tuple) -> tuple:
    """``args`` (after the input) with a positional ``inplace`` set to False."""
    import inspect

    try:
        names = list(inspect.signature(fn).parameters)[1:]
    except (TypeError, ValueError):  # a builtin without a signature (torch.relu): no inplace argument
        return args
    return tuple(False if n == "inplace" else a for n, a in zip(names, args))


def applies_activation(node: fx.Node) -> bool:
    """Whether ``node`` calls a pointwise activation function or method (``F.relu``, ``x.relu()``, ...)."""
    return (node.op == "call_function" and node.target in _ACTIVATION_FUNCTIONS
            or node.op == "call_method" and node.target in _ACTIVATION_METHODS)  # fmt: skip


def _activation_function(node: fx.Node, of: fx.Node) -> bool:
    """Whether ``node`` applies a pointwise activation to ``of`` alone (its other arguments are constants)."""
    rest = [*node.args[1:], *node.kwargs.values()]
    return (applies_activation(node) and bool(node.args) and node.args[0] is of
            and not any(isinstance(a, fx.Node) for a in rest))  # fmt: skip


class SplitUnavailable(RuntimeError):
    """The model cannot be split at this layer (not fx-traceable, or the layer is called twice)."""


class _Tracer(fx.Tracer):
    def __init__(self, leaves: set[str]):
        super().__init__()
        self.leaves = leaves

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return qualname in self.leaves or super().is_leaf_module(m, qualname)


def _module_states(model: nn.Module) -> list[tuple[nn.Module, dict, dict, dict, dict]]:
    return [(m, dict(m.__dict__), dict(m._parameters), dict(m._buffers), dict(m._modules)) for m in model.modules()]


def _restore_states(states) -> None:
    for m, attrs, params, buffers, modules in states:
        m.__dict__.clear()
        m.__dict__.update(attrs)
        for d, saved in ((m._parameters, params), (m._buffers, buffers), (m._modules, modules)):
            d.clear()
            d.update(saved)


def _graph_module(root: nn.Module, graph: fx.Graph) -> fx.GraphModule:
    try:
        return fx.GraphModule(root, graph)
    except Exception as e:  # code generation fails on odd module names (a quote, say)
        raise SplitUnavailable(f"fx cannot generate code for this model: {type(e).__name__}: {e}") from e


def trace(model: nn.Module, leaves: Iterable[str] = ()) -> fx.GraphModule:
    """Symbolically trace ``model`` (sharing its modules and weights), keeping ``leaves`` as calls.

    The model is left exactly as found: attributes its ``forward`` writes during tracing are restored.
    """
    tracer = _Tracer(set(leaves))
    states = _module_states(model)
    try:
        graph = tracer.trace(model)
    except Exception as e:  # fx raises many types for untraceable code
        raise SplitUnavailable(f"{type(model).__name__} is not fx-traceable: {type(e).__name__}: {e}") from e
    finally:
        _restore_states(states)
    return _graph_module(tracer.root, graph)


def _kind(gm: fx.GraphModule, n: fx.Node) -> tuple[bool, bool]:
    """``(in place, aliases)``: whether node ``n`` changes its first argument in place, and whether its value
    may share memory with its first argument (a view of it, or it itself). Kept in the node's ``meta``."""
    kind = n.meta.get("cnn_redundancy_kind")
    if kind is None:
        mod = gm.get_submodule(n.target) if n.op == "call_module" else None
        if n.op == "call_module":
            inplace = bool(getattr(mod, "inplace", False))
        elif n.op == "call_function":
            inplace = n.target in _INPLACE_FUNCS or getattr(n.target, "__name__", "").endswith("_") or bool(n.kwargs.get("inplace"))
        else:
            inplace = n.op == "call_method" and str(n.target).endswith("_")
        aliases = inplace or (
            (n.op == "call_method" and n.target in _VIEW_METHODS)
            or (n.op == "call_function" and n.target in _VIEW_FUNCTIONS)
            or isinstance(mod, _ALIAS_MODULES)
        )
        kind = n.meta["cnn_redundancy_kind"] = (inplace, aliases)
    return kind


def _is_inplace(gm: fx.GraphModule, n: fx.Node) -> bool:
    return _kind(gm, n)[0]


def _aliases(gm: fx.GraphModule, n: fx.Node) -> bool:
    return _kind(gm, n)[1]


def _changed(gm: fx.GraphModule, n: fx.Node) -> fx.Node | None:
    """The node whose value node ``n`` changes in place (its first argument), or ``None``."""
    a = n.args[0] if n.args else None
    return a if isinstance(a, fx.Node) and _is_inplace(gm, n) else None


def _alias_set(gm: fx.GraphModule, n: fx.Node) -> set[fx.Node]:
    """``n`` and every node that may share its memory through a chain of views or in-place operations."""
    out, stack = {n}, [n]
    while stack:
        a = stack.pop()
        for u in a.users:
            if u.args and u.args[0] is a and u not in out and _aliases(gm, u):
                out.add(u)
                stack.append(u)
    return out


def _base(gm: fx.GraphModule, n: fx.Node) -> fx.Node:
    """The node whose memory ``n`` shares through a chain of views or in-place operations (``n`` itself if none)."""
    while n.args and isinstance(n.args[0], fx.Node) and _aliases(gm, n):
        n = n.args[0]
    return n


def _memory(gm: fx.GraphModule, n: fx.Node) -> set[fx.Node]:
    """Every node that may share ``n``'s memory: its base, and every view or alias of the base."""
    return _alias_set(gm, _base(gm, n))


def _mutators(gm: fx.GraphModule, n: fx.Node, pos: dict[fx.Node, int]) -> list[fx.Node]:
    """The nodes after ``n`` that change its value in place: ``relu_``, ``+=`` or
    ``nn.ReLU(inplace=True)`` on it, or on any view or alias of its memory (``n.view(...).relu_()``)."""
    return sorted({u for a in _memory(gm, n) for u in a.users if pos[u] > pos[n] and _changed(gm, u) is a},
                  key=pos.__getitem__)  # fmt: skip


def _downstream(gm: fx.GraphModule, order: list[fx.Node], pos: dict[fx.Node, int], t: fx.Node) -> set[fx.Node]:
    """The nodes whose value depends on node ``t``: through their inputs, or by reading memory that a node
    depending on ``t`` changed in place before them."""
    down, dirty = {t}, set()
    for n in order[pos[t] + 1 :]:
        if any(a in down or a in dirty for a in n.all_input_nodes):
            down.add(n)
            if (target := _changed(gm, n)) is not None:
                dirty |= _memory(gm, target)
    return down


def _eliminate_dead_code(gm: fx.GraphModule, g: fx.Graph) -> None:
    """Remove the nodes of ``g`` that nothing needs: neither the output nor a later read of a value that an
    in-place operation changes (``torch.fx``'s own pass counts ``x.view(...).relu_()`` and
    ``nn.ReLU(inplace=True)`` with an unused result as dead)."""
    nodes = list(g.nodes)
    pos = {n: i for i, n in enumerate(nodes)}
    live: set[fx.Node] = set()
    for n in reversed(nodes):
        if n.op in ("output", "placeholder") or n.is_impure() or any(u in live for u in n.users):
            live.add(n)
        elif (target := _changed(gm, n)) is not None:
            if any(u in live and pos[u] > pos[n] for a in _memory(gm, target) for u in a.users):
                live.add(n)
    for n in reversed(nodes):
        if n not in live:
            g.erase_node(n)


def _keep(v):
    """A recorded value, safe from in-place ops later in the forward pass (tensors are cloned)."""
    return v.clone() if isinstance(v, torch.Tensor) else v


#: where a recorder takes a value: ``(node name, name of the node right after which it is cloned)``
Point = tuple[str, str]


class Traced:
    """A model traced once; splits, recorders and observe points all reuse the one graph.

    Args:
        model: the network (shared, not copied: weight changes are seen by every split).
        leaves: module names kept as single calls in the graph (e.g. residual blocks that are split
            points); ``torch.nn`` layers are always kept.

    Raises:
        SplitUnavailable: the model is not fx-traceable.
    """

    def __init__(self, model: nn.Module, leaves: Iterable[str] = ()) -> None:
        self.model = model
        self.gm = trace(model, leaves)
        self.order = list(self.gm.graph.nodes)
        self.pos = {n: i for i, n in enumerate(self.order)}
        self._splits: dict[tuple[str, tuple[str, ...]], Split] = {}

    @classmethod
    def maybe(cls, model: nn.Module) -> Traced | None:
        """The traced model, or ``None`` when it is not traceable."""
        try:
            return cls(model)
        except SplitUnavailable:
            return None

    def calls(self, names: Iterable[str]) -> bool:
        """Whether every named module is a single call in this graph (so splits at it can reuse it)."""
        called = {n.target for n in self.order if n.op == "call_module"}
        return all(str.__str__(n) in called for n in names)  # an Activation: its module

    def node(self, name: str) -> fx.Node:
        """The graph node calling module ``name`` (called exactly once), or ``"@<node name>"``: any node
        of the graph by its fx name (e.g. ``"@add_3"``, a residual addition)."""
        if name.startswith("@"):
            found = [n for n in self.order if n.name == name[1:]]
            if not found:
                raise SplitUnavailable(f"the traced graph has no node {name[1:]!r}")
            return found[0]
        nodes = [n for n in self.order if n.op == "call_module" and n.target == name]
        if len(nodes) != 1:
            raise SplitUnavailable(f"layer {name!r} is called {len(nodes)} times in the traced graph (need exactly once)")
        return nodes[0]

    def default_observe(self, layer: str) -> str:
        """Where the layer's activation ``f(conv(x))`` is read: its activation module, an :class:`Activation`
        for a nonlinearity applied as a function, or the layer itself.

        Follows the layer's output through modules used by nothing else (batch, group or instance norm,
        dropout, identity) to the first activation, a module (ReLU, Tanh, ...) or a function (``F.relu``,
        ``torch.sigmoid``, ``x.relu()``). If the path branches or meets another function (e.g. a residual
        addition), the layer output itself is observed.
        """
        try:
            node = self.node(layer)
        except SplitUnavailable:
            return layer
        module = layer
        while len(node.users) == 1:
            user = next(iter(node.users))
            if _activation_function(user, node):
                return Activation(module, user)
            if user.op != "call_module":
                break
            mod = self.gm.get_submodule(user.target)
            if isinstance(mod, ACTIVATIONS):
                return str(user.target)
            if not isinstance(mod, CHANNELWISE):
                break
            node, module = user, str(user.target)
        return layer

    def observe_node(self, layer: str, observe: str) -> fx.Node:
        """The node whose value is the layer's observed activation: the first call of module ``observe``
        that depends on the layer (or the layer's own node when ``observe == layer``)."""
        t = self.node(layer)
        if observe == layer:
            return t
        down = _downstream(self.gm, self.order, self.pos, t)
        for n in self.order[self.pos[t] + 1 :]:
            if n in down and _is_observed(n, observe):
                return n
        raise ValueError(f"observe={observe!r} is not computed after layer {layer!r}")

    def masked(self, points: dict[str, str]) -> tuple[fx.GraphModule, dict[str, torch.Tensor]]:
        """The forward pass with each layer's observed activation multiplied by a per-channel mask.

        ``points``: layer -> observed module. Returns the module (sharing the model's weights) and
        ``{layer: mask [1, C, 1, 1]}``, all ones: set entries to zero to remove channels, evaluate,
        set them back; nothing is traced again.
        """
        g = fx.Graph()  # owned by the module built below, which holds the masks
        env: dict[fx.Node, fx.Node] = {}
        at = {self.observe_node(layer, obs): layer for layer, obs in points.items()}
        masks: dict[str, torch.Tensor] = {}
        holder = nn.Module()
        for n in self.order:
            if n.op == "output":
                g.output(fx.map_arg(n.args[0], lambda a: env[a]))
                continue
            env[n] = g.node_copy(n, lambda a: env[a])
            if n in at:
                layer = at[n]
                key = f"mask_{len(masks)}"
                mod = self.model.get_submodule(layer)
                masks[layer] = torch.ones(1, mod.out_channels, 1, 1, dtype=mod.weight.dtype, device=mod.weight.device)
                holder.register_buffer(key, masks[layer])
                env[n] = g.call_function(torch.mul, (env[n], g.get_attr(f"_cnn_redundancy_masks.{key}")))
        root = nn.Module()
        root._cnn_redundancy_masks = holder
        for name, mod in self.gm.named_children():
            root.add_module(name, mod)
        for n in self.order:  # parameters and buffers of the model itself (a ViT's class token), shared too
            atom = str(n.target).split(".")[0] if n.op == "get_attr" else None
            if atom is not None and not hasattr(root, atom):
                setattr(root, atom, getattr(self.gm, atom))
        return _graph_module(root, g), masks

    def split(self, layer: str, observe: Sequence[str] = ()) -> Split:
        """The :class:`Split` at ``layer`` (built once per layer and observe list)."""
        key = (layer, tuple(observe))
        if key not in self._splits:
            self._splits[key] = Split(self, layer, observe)
        return self._splits[key]

    def recorder(self, points: Sequence[Point], *, output: bool = True) -> fx.GraphModule:
        """The forward pass returning ``(output, (value of each point, ...))``.

        A point ``(name, at)`` is node ``name``'s value cloned right after node ``at`` runs (``at`` is
        ``name`` itself, or an in-place operation on it): the value as it was then, whatever later
        in-place operations do to the tensor. ``output=False``: the pass stops after the last point
        and returns ``None`` for the output.
        """
        nodes = {n.name: n for n in self.order}
        missing = [name for p in points for name in p if name not in nodes]
        if missing:
            raise SplitUnavailable(f"recorded graph lacks nodes {missing[:3]}")
        after: dict[fx.Node, list[int]] = {}
        for i, (_, at) in enumerate(points):
            after.setdefault(nodes[at], []).append(i)
        stop = max((self.pos[nodes[at]] for _, at in points), default=-1) if not output else len(self.order)
        g = fx.Graph(owning_module=self.gm)
        env: dict[fx.Node, fx.Node] = {}
        kept: list[fx.Node | None] = [None] * len(points)
        result = None
        for n in self.order:
            if self.pos[n] > stop:
                break
            if n.op == "output":
                result = fx.map_arg(n.args[0], lambda a: env[a])
                break
            env[n] = g.node_copy(n, lambda a: env[a])
            for i in after.get(n, ()):
                kept[i] = g.call_function(_keep, (env[nodes[points[i][0]]],))
        g.output((result, tuple(kept)))
        return _graph_module(self.gm, g)


def _is_observed(n: fx.Node, observe: str) -> bool:
    """Whether node ``n`` computes the observed value: a call of module ``observe``, or its :class:`Activation`."""
    if isinstance(observe, Activation):
        return observe.computed_by(n)
    return n.op == "call_module" and n.target == observe


def default_observe(model: nn.Module, layer: str) -> str:
    """The activation module after ``layer`` (see :meth:`Traced.default_observe`); the layer itself
    when the model is not traceable."""
    try:
        return Traced(model).default_observe(layer)
    except SplitUnavailable:
        return layer


@dataclass
class SplitState:
    """Upstream values for one batch: the frontier and the layer's input."""

    frontier: tuple
    layer_input: torch.Tensor


class Split:
    """A model split at ``layer`` (see the module docstring).

    Args:
        model: the network, or a :class:`Traced` of it (the trace is then reused).
        layer: dotted name of a module called exactly once per forward pass, or ``"@<node name>"``
            for any node of the traced graph (its output is then replaced; :attr:`module` is ``None``).
        observe: module names whose output (first call after the layer) the downstream part
            returns; ``layer`` itself may be listed (its output is then the given layer output).

    Attributes:
        frontier_points, input_points, output_point, observe_points: the frontier values, the
        tensors the layer or node takes (the first is the layer's input), its output and the
        observed values, each as a :data:`Point` ``(node name, where it is taken)`` of a recorder
        of the full forward pass (:meth:`Traced.recorder`), so that one recorded pass can feed the
        downstream part without running :meth:`upstream`. In-place operations are respected: the
        layer's output and observed values are taken as they are computed, before a later
        ``ReLU(inplace=True)`` changes them; a frontier value after the in-place operations upstream
        of the layer that run before its first use downstream. A frontier value that such an
        operation changes between two of its uses downstream cannot be split (:class:`SplitUnavailable`).
        An operation on a view or alias (``x.view(n, -1).relu_()``, ``x[:, :4].zero_()``, through
        ``nn.Identity`` or dropout in eval mode) changes the tensor it shares memory with, and counts
        as such; two frontier values sharing memory that the downstream part changes cannot be split.

    Example:
        >>> from cnn_redundancy.models import get_model
        >>> m = get_model("lenet5").eval()
        >>> s = Split(m, "conv2", observe=["act2"])
        >>> x = torch.randn(2, 1, 28, 28)
        >>> st = s.upstream(x)
        >>> out, (act,) = s.downstream(st, s.layer_forward(st.layer_input))
        >>> torch.allclose(out, m(x), atol=1e-6)
        True
    """

    def __init__(self, model: nn.Module | Traced, layer: str, observe: Sequence[str] = ()) -> None:
        traced = model if isinstance(model, Traced) else Traced(model, {layer, *observe})
        self.layer = layer
        self.observe = list(observe)
        gm, order, pos = traced.gm, traced.order, traced.pos
        t = traced.node(layer)
        self.module = traced.model.get_submodule(layer) if not layer.startswith("@") else None
        inputs = [a for a in t.args if isinstance(a, fx.Node)]
        if self.module is not None and (t.kwargs or len(t.args) != 1 or not inputs):
            raise SplitUnavailable(f"layer {layer!r} must be called with one tensor argument")
        if not inputs:
            raise SplitUnavailable(f"node {layer!r} takes no tensor input")
        down = _downstream(gm, order, pos, t)
        out_node = order[-1]
        if out_node.op != "output" or out_node not in down:
            raise SplitUnavailable(f"the model output does not depend on layer {layer!r}")
        obs_nodes: list[fx.Node] = []
        for name in self.observe:
            if name == layer:
                obs_nodes.append(t)
                continue
            cands = [n for n in order if _is_observed(n, name) and n in down]
            if not cands:
                raise ValueError(f"observe={name!r} is not computed after layer {layer!r}; observe a module downstream of it")
            obs_nodes.append(cands[0])
        frontier: list[fx.Node] = []
        for n in order:
            if n in down and n is not t:
                for a in n.all_input_nodes:
                    if a not in down and a not in frontier:
                        frontier.append(a)
        layer_in = inputs[0]

        mutators = {n: _mutators(gm, n, pos) for n in (*frontier, *inputs, *obs_nodes, t)}

        def before(n: fx.Node, first: int) -> fx.Node:
            # the value downstream reads: after the in-place operations upstream of the layer that run before
            # position ``first`` (its first downstream use); those downstream are replayed on it
            muts = [u for u in mutators[n] if u not in down and pos[u] < first]
            return max(muts, key=pos.__getitem__) if muts else n

        frontier_at = []
        for f in frontier:
            uses = sorted(pos[u] for u in f.users if u in down and u is not t)
            if any(uses[0] < pos[u] < uses[-1] for u in mutators[f] if u not in down):
                raise SplitUnavailable(f"an in-place operation changes {f.name!r} between two of its uses downstream "
                                       f"of {layer!r}")  # fmt: skip
            frontier_at.append(before(f, uses[0]))
        mutated = {f: [u for u in mutators[f] if u in down] for f in frontier}
        shared = [f for f in frontier if mutated[f] and len(_memory(gm, f).intersection(frontier)) > 1]
        if shared:
            # the recorder copies each frontier value on its own: a change made downstream through one of two
            # values sharing memory would no longer reach the other
            raise SplitUnavailable(f"{shared[0].name!r} shares memory with another value downstream of {layer!r} "
                                   "and is changed in place there")  # fmt: skip
        obs_changed = {o for o in obs_nodes if mutators[o]}
        #: where a recorder of the whole pass (:meth:`Traced.recorder`) takes each value the split needs
        self.frontier_points: tuple[Point, ...] = tuple((f.name, a.name) for f, a in zip(frontier, frontier_at))
        self.input_points: tuple[Point, ...] = tuple((a.name, before(a, pos[t]).name) for a in inputs)
        self.output_point: Point = (t.name, t.name)
        self.observe_points: tuple[Point, ...] = tuple((o.name, o.name) for o in obs_nodes)
        # frontier values that a downstream in-place op would overwrite are cloned per call
        self._clone = [bool(mutated[f]) for f in frontier]
        self._clone_layer_out = bool(mutators[t])
        self._parts = (gm, order, down, t, frontier, layer_in, out_node, obs_nodes, obs_changed)
        self._built: dict[str, fx.GraphModule] = {}
        self.n_frontier = len(frontier)

    def _module(self, which: str) -> fx.GraphModule:
        """The upstream, downstream or observe-only module, generated on first use."""
        if which not in self._built:
            gm, order, down, t, frontier, layer_in, out_node, obs_nodes, obs_changed = self._parts
            g = fx.Graph(owning_module=gm)
            env: dict[fx.Node, fx.Node] = {}
            if which == "up":
                for n in order:
                    if n not in down and n.op != "output":
                        env[n] = g.node_copy(n, lambda a: env[a])
                g.output((tuple(env[f] for f in frontier), env[layer_in]))
            else:
                for i, f in enumerate(frontier):
                    env[f] = g.placeholder(f"frontier_{i}")
                env[t] = g.placeholder("layer_out")
                seen: dict[fx.Node, fx.Node] = {}  # an observed value that a later in-place op changes: cloned first
                if t in obs_changed:
                    seen[t] = g.call_function(_keep, (env[t],))
                for n in order:
                    if n in down and n is not t and n.op != "output":
                        env[n] = g.node_copy(n, lambda a: env[a])
                        if n in obs_changed:
                            seen[n] = g.call_function(_keep, (env[n],))
                observed = tuple(seen.get(o, env[o]) for o in obs_nodes)
                g.output((fx.map_arg(out_node.args[0], lambda a: env[a]), observed) if which == "down" else observed)
            _eliminate_dead_code(gm, g)
            self._built[which] = _graph_module(gm, g)
        return self._built[which]

    def upstream(self, x: torch.Tensor) -> SplitState:
        """Run everything that does not depend on the layer, once per batch."""
        frontier, layer_in = self._module("up")(x)
        return SplitState(tuple(frontier), layer_in)

    def layer_forward(self, layer_input: torch.Tensor) -> torch.Tensor:
        """The layer's own output for a given input."""
        return self.module(layer_input)

    def _frontier(self, state: SplitState) -> tuple:
        return tuple(v.clone() if c else v for v, c in zip(state.frontier, self._clone))

    def downstream(self, state: SplitState, layer_out: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """Model output and observed activations, given the layer's output (never modified)."""
        if self._clone_layer_out:
            layer_out = layer_out.clone()
        return self._module("down")(*self._frontier(state), layer_out)

    def observed(self, state: SplitState, layer_out: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Only the observed activations (computes no more of the graph than they need)."""
        if self._clone_layer_out:
            layer_out = layer_out.clone()
        return self._module("obs")(*self._frontier(state), layer_out)
