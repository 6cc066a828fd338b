"""Split a model at a layer with ``torch.fx``: compute the upstream part once, recompute only downstream.

Perturbation sweeps (channel/pixel shuffles, zero-ablations) change one layer's input or output and
need the model output many times for the same batch. :class:`Split` traces the model, finds every
node that depends on the layer (its *downstream*), and builds

- an *upstream* module returning the layer's input and every other value the downstream part
  needs (e.g. a residual shortcut taken before the layer: the *frontier*);
- a *downstream* module that takes those values plus the layer's output and returns the model
  output and any observed activations;
- an *observe-only* module computing just the observed activations from the layer output.

This works for any fx-traceable model (``nn.Sequential`` or not, residual, multi-branch).
Models that cannot be traced raise :class:`SplitUnavailable`; callers fall back to full forward
passes with hooks and say so in the result's metadata.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
import torch.fx as fx
from torch import nn

__all__ = ["Split", "SplitState", "SplitUnavailable", "trace", "default_observe", "ACTIVATIONS"]

ACTIVATIONS: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Tanh, nn.Sigmoid, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softplus, nn.Tanhshrink,
)  # fmt: skip
_CHANNELWISE = (nn.BatchNorm2d, nn.Identity, nn.Dropout, nn.Dropout2d)
_INPLACE_FUNCS = {operator.iadd, operator.isub, operator.imul, operator.itruediv}


class SplitUnavailable(RuntimeError):
    """The model cannot be split at this layer (not fx-traceable, or the layer is called twice)."""


class _Tracer(fx.Tracer):
    def __init__(self, leaves: set[str]):
        super().__init__()
        self.leaves = leaves

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return qualname in self.leaves or super().is_leaf_module(m, qualname)


def trace(model: nn.Module, leaves: set[str] | frozenset[str] = frozenset()) -> fx.GraphModule:
    """Symbolically trace ``model`` (sharing its modules and weights), keeping ``leaves`` as calls."""
    tracer = _Tracer(set(leaves))
    try:
        graph = tracer.trace(model)
    except Exception as e:  # fx raises many types for untraceable code
        raise SplitUnavailable(f"{type(model).__name__} is not fx-traceable: {type(e).__name__}: {e}") from e
    return fx.GraphModule(tracer.root, graph)


def _layer_node(gm: fx.GraphModule, name: str) -> fx.Node:
    nodes = [n for n in gm.graph.nodes if n.op == "call_module" and n.target == name]
    if len(nodes) != 1:
        raise SplitUnavailable(f"layer {name!r} is called {len(nodes)} times in the traced graph (need exactly once)")
    return nodes[0]


def _is_inplace(gm: fx.GraphModule, n: fx.Node) -> bool:
    if n.op == "call_module":
        return bool(getattr(gm.get_submodule(n.target), "inplace", False))
    if n.op == "call_function":
        return n.target in _INPLACE_FUNCS or getattr(n.target, "__name__", "").endswith("_") or bool(n.kwargs.get("inplace"))
    if n.op == "call_method":
        return str(n.target).endswith("_")
    return False


def default_observe(model: nn.Module, layer: str) -> str:
    """The module holding the layer's activation ``f(conv(x))``, or the layer itself.

    Follows the layer's output through modules used by nothing else (batch norm, dropout,
    identity) to the first activation module (ReLU, Tanh, ...). If the path branches, meets a
    function (e.g. a residual addition) or the model is not traceable, the layer output itself
    is observed.
    """
    try:
        gm = trace(model, {layer})
        node = _layer_node(gm, layer)
    except SplitUnavailable:
        return layer
    while len(node.users) == 1:
        user = next(iter(node.users))
        if user.op != "call_module":
            break
        mod = gm.get_submodule(user.target)
        if isinstance(mod, ACTIVATIONS):
            return str(user.target)
        if not isinstance(mod, _CHANNELWISE):
            break
        node = user
    return layer


@dataclass
class SplitState:
    """Upstream values for one batch: the frontier and the layer's input."""

    frontier: tuple
    layer_input: torch.Tensor


class Split:
    """A model split at ``layer`` (see the module docstring).

    Args:
        model: the network (shared, not copied: weight changes are seen by the split).
        layer: dotted name of a module called exactly once per forward pass.
        observe: module names whose output (first call after the layer) the downstream part
            returns; ``layer`` itself may be listed (its output is then the given layer output).

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

    def __init__(self, model: nn.Module, layer: str, observe: list[str] | tuple[str, ...] = ()) -> None:
        self.layer = layer
        self.observe = list(observe)
        self.module = model.get_submodule(layer)
        gm = trace(model, {layer, *self.observe})
        t = _layer_node(gm, layer)
        if t.kwargs or len(t.args) != 1 or not isinstance(t.args[0], fx.Node):
            raise SplitUnavailable(f"layer {layer!r} must be called with one tensor argument")
        order = list(gm.graph.nodes)
        pos = {n: i for i, n in enumerate(order)}
        down = {t}
        for n in order[pos[t] + 1 :]:
            if any(a in down for a in n.all_input_nodes):
                down.add(n)
        out_node = order[-1]
        if out_node.op != "output" or out_node not in down:
            raise SplitUnavailable(f"the model output does not depend on layer {layer!r}")
        obs_nodes: list[fx.Node] = []
        for name in self.observe:
            if name == layer:
                obs_nodes.append(t)
                continue
            cands = [n for n in order if n.op == "call_module" and n.target == name and n in down]
            if not cands:
                raise ValueError(f"observe={name!r} is not computed after layer {layer!r}; observe a module downstream of it")
            obs_nodes.append(cands[0])
        frontier: list[fx.Node] = []
        for n in order:
            if n in down and n is not t:
                for a in n.all_input_nodes:
                    if a not in down and a not in frontier:
                        frontier.append(a)
        layer_in = t.args[0]
        # frontier values that a downstream in-place op would overwrite are cloned per call
        self._clone = [
            any(_is_inplace(gm, u) and u.args and u.args[0] is f for u in f.users if u in down) for f in frontier
        ]
        self._clone_layer_out = any(_is_inplace(gm, u) and u.args and u.args[0] is t for u in t.users)

        ug = fx.Graph(owning_module=gm)
        env: dict[fx.Node, fx.Node] = {}
        for n in order:
            if n in down or n.op == "output":
                continue
            env[n] = ug.node_copy(n, lambda a: env[a])
        ug.output((tuple(env[f] for f in frontier), env[layer_in]))
        ug.eliminate_dead_code()
        self._up = fx.GraphModule(gm, ug)

        def build(full: bool) -> fx.GraphModule:
            g = fx.Graph(owning_module=gm)
            env2: dict[fx.Node, fx.Node] = {}
            for i, f in enumerate(frontier):
                env2[f] = g.placeholder(f"frontier_{i}")
            env2[t] = g.placeholder("layer_out")
            for n in order:
                if n in down and n is not t and n.op != "output":
                    env2[n] = g.node_copy(n, lambda a: env2[a])
            observed = tuple(env2[o] for o in obs_nodes)
            if full:
                g.output((fx.map_arg(out_node.args[0], lambda a: env2[a]), observed))
            else:
                g.output(observed)
            g.eliminate_dead_code()
            return fx.GraphModule(gm, g)

        self._down = build(True)
        self._obs = build(False)
        self.n_frontier = len(frontier)
        # node names in the traced graph: callers that record a full forward pass can feed the
        # downstream part from it instead of running upstream() again
        self.frontier_names = tuple(f.name for f in frontier)
        self.layer_input_name = layer_in.name

    def upstream(self, x: torch.Tensor) -> SplitState:
        """Run everything that does not depend on the layer, once per batch."""
        frontier, layer_in = self._up(x)
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
        return self._down(*self._frontier(state), layer_out)

    def observed(self, state: SplitState, layer_out: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Only the observed activations (computes no more of the graph than they need)."""
        if self._clone_layer_out:
            layer_out = layer_out.clone()
        return self._obs(*self._frontier(state), layer_out)
