"""Physical removal of conv kernels through Torch-Pruning's ``DependencyGraph``, and its replay on load.

The dependency graph keeps residual, grouped and depthwise couplings consistent; in a grouped
(non-depthwise) conv, and in a group norm of several channels a group, one kernel is removed at the same
position of every group. Every removal is
recorded, and :func:`cnn_redundancy.checkpoint.load_checkpoint` replays the recorded removals
(surgery kind ``prune-channels``) on a freshly built model, after checking every layer name and
kernel index. Frozen parameters (``requires_grad=False``, as in transfer learning) are pruned like
any other and stay frozen. Weight reparametrizations (``weight_norm``, ``spectral_norm``, any
``torch.nn.utils.parametrize``) are folded into plain weights first (:func:`fold_parametrizations`,
surgery kind ``fold-parametrizations``): Torch-Pruning cannot cut a weight computed from others.
"""

from __future__ import annotations

import contextlib
import math
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...checkpoint import CheckpointError, _is_int, check_input_shape, register_surgery
from ...core.hooks import preserved
from ...core.metrics import select_output
from ...models import append_surgery

__all__ = ["Surgeon", "SURGERY_KIND", "FOLD_KIND", "fold_parametrizations", "kernels", "trainable"]

SURGERY_KIND = "prune-channels"
FOLD_KIND = "fold-parametrizations"
OUTPUT_LAYERS = "the conv layers whose kernels are the model's output channels (each a class)"
FOLDED = ("reparametrized weights made plain (the same outputs in eval mode; weight_norm and spectral_norm no longer "
          "act on them in training)")


class Surgeon:
    """A model, its dependency graph (built once) and the bookkeeping of removed kernels.

    Attributes:
        model: the model being pruned (changed in place).
        original: ``conv name -> original index`` of each of its current kernels.
        removals: ``[[layer, [indices]], ...]`` in the order applied (indices at that time).
        folded: the reparametrized weights (``weight_norm``, ``spectral_norm``) made plain on construction.
    """

    def __init__(self, model: nn.Module, example_inputs: torch.Tensor, output: str | int | None = None) -> None:
        import torch_pruning as tp

        self.tp = tp
        self.model = model
        self.example, self.output = example_inputs, output
        self.folded = fold_parametrizations(model)  # reparametrized weights, now plain ones
        if self.folded:
            append_surgery(model, {"kind": FOLD_KIND})
        self._runs: set[str] = set()  # layers after whose first removal the model was seen to run
        self.frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
        with torch.enable_grad(), trainable(model), torch_pruning_explained(model):  # traced through autograd: frozen layers too
            self.dg = tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs, verbose=False,
                                                            output_transform=output_transform(output))
        self.original = {n: list(range(m.out_channels)) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
        self.removals: list[list[Any]] = []
        self._groups: dict[str, int] = {}
        self._removable: dict[str, bool] = {}
        self._room: dict[str, int] = {}

    def module(self, layer: str) -> nn.Conv2d:
        return self.model.get_submodule(layer)  # type: ignore[return-value]

    def group(self, layer: str, idxs: list[int]):
        return self.dg.get_pruning_group(self.module(layer), self.tp.prune_conv_out_channels, idxs)

    def _aligned_groups(self, layer: str) -> int:
        """Number of channel groups the layer's kernels must be removed in (grouped convs, and group norms of
        several channels a group: each group keeps as many channels, as Torch-Pruning's own pruners cut them);
        cached until a removal."""
        if layer not in self._groups:
            g = 1
            for dep, _ in self.group(layer, [0]):
                m = dep.target.module
                groups = _channel_groups(m)
                if 1 < groups:
                    g = g * groups // math.gcd(g, groups)
            self._groups[layer] = g
        return self._groups[layer]

    def aligned(self, layer: str, idx: int) -> list[int]:
        """``idx`` and its partners at the same position of every group of a grouped conv."""
        k = self.module(layer).out_channels
        g = self._aligned_groups(layer)
        if g == 1:
            return [idx]
        if k % g:
            raise ValueError(f"{layer!r} has {k} kernels, not a multiple of its {g} coupled conv groups")
        per = k // g
        return [idx % per + q * per for q in range(g)]

    def room(self, layer: str) -> int:
        """How many more kernels of ``layer`` can go: it keeps one, a grouped conv whose kernels go with
        them keeps two per group (with one per group Torch-Pruning takes it for a depthwise conv, whose
        inputs go with its outputs, and cuts it wrong), and none goes from a conv whose kernels are the
        model's output channels (a classifier conv, as SqueezeNet's, or a segmentation head's: each is a
        class); cached until a removal."""
        if layer not in self._room:
            idxs = self.aligned(layer, 0)
            room = self.module(layer).out_channels - 1
            for dep, dep_idxs in self.group(layer, idxs):
                if self._is_output(dep):  # its kernels are the model's output channels
                    room = 0
                    break
                m = dep.target.module
                if isinstance(m, nn.Conv2d) and m.groups > 1 and dep.handler == self.tp.prune_conv_out_channels:  # not depthwise
                    room = min(room, (m.out_channels - 2 * m.groups) // len(dep_idxs) * len(idxs))
                elif isinstance(m, nn.GroupNorm) and _channel_groups(m) > 1:  # a group norm keeps a channel per group
                    room = min(room, (m.num_channels - m.num_groups) // len(dep_idxs) * len(idxs))
            self._room[layer] = max(0, room)
        return self._room[layer]

    def output_layers(self, layers: list[str]) -> list[str]:
        """Those of ``layers`` whose kernels are the model's output channels (nothing of theirs can go)."""
        return [n for n in layers if any(self._is_output(dep) for dep, _ in self.group(n, self.aligned(n, 0)))]

    def _is_output(self, dep) -> bool:
        """Whether a dependency reaches the model's output channels: Torch-Pruning's output node (after an
        interpolation, a pooling, ...), or a conv's own output when the model returns it as it is (its node
        then has no outputs, and no output node follows it)."""
        t = dep.target
        if t.type == self.tp.ops.OPTYPE.OUTPUT:
            return True
        return isinstance(t.module, nn.Conv2d) and self.dg.is_out_channel_pruning_fn(dep.handler) and not t.outputs

    def can_remove(self, layer: str) -> bool:
        """Whether one kernel (with its aligned partners) can go, leaving every coupled layer a kernel (two per
        group in a grouped conv); cached until a removal."""
        if layer not in self._removable:
            idxs = self.aligned(layer, 0)
            self._removable[layer] = self.room(layer) >= len(idxs) and bool(self.dg.check_pruning_group(self.group(layer, idxs)))
        return self._removable[layer]

    def remove(self, layer: str, idxs: list[int]) -> dict[str, list[int]]:
        """Remove kernels ``idxs`` of ``layer`` and every coupled channel; returns original indices removed per conv."""
        if len(idxs) > self.room(layer):
            raise ValueError(f"{len(idxs)} kernel(s) of {layer!r} cannot go: at most {self.room(layer)} can (it keeps one, "
                             "and a grouped conv whose kernels go with them keeps two per group)")
        group = self.group(layer, sorted(idxs))
        removed: dict[str, list[int]] = {}
        name_of = self.dg._module2name
        for dep, dep_idxs in group:
            m = dep.target.module
            depthwise = isinstance(m, nn.Conv2d) and m.groups == m.out_channels > 1
            if isinstance(m, nn.Conv2d) and (depthwise or self.dg.is_out_channel_pruning_fn(dep.handler)):
                n = name_of[m]
                if n in removed:
                    continue
                removed[n] = [self.original[n][i] for i in sorted(dep_idxs)]
                drop = set(dep_idxs)
                self.original[n] = [o for i, o in enumerate(self.original[n]) if i not in drop]
        _prune(group)
        for n, p in self.model.named_parameters():  # Torch-Pruning makes new, trainable parameters
            if n in self.frozen:
                p.requires_grad_(False)
        self._removable.clear()
        self._room.clear()
        self._groups.clear()  # a group norm's groups of two channels are groups of one after a cut
        self.removals.append([layer, sorted(int(i) for i in idxs)])
        if layer not in self._runs:
            self._check_runs(layer)
        return removed

    def _check_runs(self, layer: str) -> None:
        """The model still runs after a removal in ``layer`` (checked once per layer: a channel mapping Torch-Pruning
        got wrong, such as a channel shuffle's reshape, breaks it at the first removal)."""
        try:
            with preserved(self.model), torch.no_grad():  # in eval mode: batch norm statistics stay as they are
                self.model.eval()
                self.model(self.example)
        except RuntimeError as e:
            raise ValueError(f"removing kernels of {layer!r} left {type(self.model).__name__} unable to run ({e}): "
                             "Torch-Pruning did not carry the removal through one of its operations (a reshape of "
                             "channels, such as a channel shuffle?), so compress and prune cannot run on this model; "
                             "analyze and every lens can") from e
        self._runs.add(layer)

    def consumers(self, layer: str, idx: int) -> list[tuple[nn.Module, list[int]]]:
        """Modules reading channel ``idx`` of ``layer`` (conv / linear inputs) with the input indices it maps to."""
        fns = (self.tp.prune_conv_in_channels, self.tp.prune_linear_in_channels)
        return [(dep.target.module, sorted(ix)) for dep, ix in self.group(layer, [idx]) if dep.handler in fns]


def _channel_groups(m: nn.Module) -> int:
    """The channel groups whose channels must go evenly: a grouped, not depthwise, conv's groups; a group norm's
    groups of several channels each; 1 otherwise."""
    if isinstance(m, nn.Conv2d) and 1 < m.groups < m.out_channels:
        return m.groups
    if isinstance(m, nn.GroupNorm) and 1 < m.num_groups < m.num_channels:
        return m.num_groups
    return 1


def _prune(group) -> None:
    """Cut a Torch-Pruning group; a group norm of one channel a group stays so (Torch-Pruning keeps its
    ``num_groups``, which then no longer divides its channels)."""
    per_channel = {id(m): m for dep, _ in group if isinstance(m := dep.target.module, nn.GroupNorm)
                   and m.num_groups == m.num_channels}  # fmt: skip
    group.prune()
    for m in per_channel.values():
        m.num_groups = m.num_channels


@contextlib.contextmanager
def torch_pruning_explained(model: nn.Module) -> Iterator[None]:
    """An error raised inside Torch-Pruning's tracing (an operation it cannot map, such as ShuffleNet's channel
    shuffle: reshape, transpose, reshape) as one line that says what it stops; the model's own errors pass."""
    try:
        yield
    except Exception as e:
        inside = in_torch_pruning(e)
        if inside is None:
            raise
        raise ValueError(f"Torch-Pruning cannot trace which channels of {type(model).__name__} depend on each other "
                         f"({inside}): removing kernels needs that, so compress and prune cannot run on this model; "
                         "analyze and every lens can") from e


def in_torch_pruning(e: BaseException) -> str | None:
    """``"<Error> in its <file>, <function>: <message>"`` for an error raised inside Torch-Pruning, else ``None``."""
    frames = traceback.extract_tb(e.__traceback__)
    if not frames or "torch_pruning" not in frames[-1].filename:
        return None
    return f"{type(e).__name__} in its {Path(frames[-1].filename).name}, {frames[-1].name}: {e}"


def output_transform(output: str | int | None) -> Callable[[Any], torch.Tensor] | None:
    """For Torch-Pruning's graph: the model output the metric reads (``output``: its key or index in a dict or
    tuple output). Traced with every output, a tuple ``(features, logits)`` made it prune the classifier's
    inputs wrongly; an embedding returned beside the logits is then pruned with its conv, as it should be."""
    return None if output is None else (lambda out: select_output(out, output, "the dependency graph"))


@contextlib.contextmanager
def trainable(model: nn.Module) -> Iterator[None]:
    """Every parameter of ``model`` requires grad inside the block; the flags are restored after it."""
    frozen = [p for p in model.parameters() if not p.requires_grad]
    for p in frozen:
        p.requires_grad_(True)
    try:
        yield
    finally:
        for p in frozen:
            p.requires_grad_(False)


def _check_step(step: dict[str, Any]) -> None:
    """A ``prune-channels`` record's fields, before any model is built."""
    check_input_shape(step.get("input_shape"))
    out = step.get("output")
    if out is not None and not isinstance(out, str) and not _is_int(out):
        raise CheckpointError(f"output must be a key or an index of the model's output, not {out!r}")
    removals = step.get("removals")
    ok = isinstance(removals, list) and all(
        isinstance(r, list) and len(r) == 2 and isinstance(r[0], str) and isinstance(r[1], list) and r[1]
        and all(_is_int(i) for i in r[1]) for r in removals)  # fmt: skip
    if not ok:
        raise CheckpointError("removals must be a list of [conv layer name, [kernel indices >= 0]]")


@register_surgery(SURGERY_KIND, check=_check_step)
def _replay(model: nn.Module, step: dict[str, Any]) -> nn.Module:
    """Repeat recorded kernel removals on a freshly built model (used by ``load_checkpoint``)."""
    convs = set(kernels(model))
    unknown = [layer for layer, _ in step["removals"] if layer not in convs]
    if unknown:
        raise CheckpointError(f"the model has no conv layer {unknown[0]!r}")
    surgeon = Surgeon(model, torch.zeros(step["input_shape"]), step.get("output"))
    for layer, idxs in step["removals"]:
        k = surgeon.module(layer).out_channels
        if len(set(idxs)) != len(idxs) or max(idxs) >= k or len(idxs) >= k:
            raise CheckpointError(f"kernels {idxs} of {layer!r} do not fit: it has {k} kernels at that step")
        _prune(surgeon.group(layer, idxs))
    return model


def fold_parametrizations(model: nn.Module) -> list[str]:
    """Replace every reparametrized weight of ``model`` (``torch.nn.utils.parametrizations.weight_norm`` or
    ``spectral_norm``, any ``torch.nn.utils.parametrize`` parametrization, and the older hook-based
    ``weight_norm`` and ``spectral_norm``) by a plain parameter holding its value, in place; returns the
    folded tensors' names. The value is taken in eval mode (spectral norm does no power iteration), so the
    model in eval mode computes what it computed before; a parameter stays trainable or frozen as its
    originals were. Training modes are left as they were.
    """
    from torch.nn.utils import parametrize
    from torch.nn.utils.spectral_norm import SpectralNorm, remove_spectral_norm
    from torch.nn.utils.weight_norm import WeightNorm, remove_weight_norm

    folded: list[str] = []
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        for prefix, m in list(model.named_modules()):
            for hook in list(m._forward_pre_hooks.values()):
                if isinstance(hook, (WeightNorm, SpectralNorm)):
                    (remove_weight_norm if isinstance(hook, WeightNorm) else remove_spectral_norm)(m, hook.name)
                    for k, h in list(m._load_state_dict_pre_hooks.items()):  # torch leaves this one behind
                        fn = getattr(getattr(h, "hook", h), "fn", None)
                        if isinstance(fn, SpectralNorm) and fn.name == hook.name:
                            del m._load_state_dict_pre_hooks[k]
                    folded.append(f"{prefix}.{hook.name}" if prefix else hook.name)
            if not parametrize.is_parametrized(m):
                continue
            # by hand: torch's remove_parametrizations deletes the property from the parametrized class, which a
            # deepcopy shares with the module it was copied from (the user's model would lose its weight)
            values = {}
            for name, plist in m.parametrizations.items():
                originals = [*plist.parameters(recurse=False), *plist.buffers(recurse=False)]
                with torch.no_grad():
                    values[name] = (getattr(m, name).detach().clone(), any(isinstance(t, nn.Parameter) for t in originals),
                                    any(t.requires_grad for t in originals))
            plain = parametrize.type_before_parametrizations(m)
            del m._modules["parametrizations"]
            m.__class__ = plain
            for name, (value, is_param, trains) in values.items():
                if is_param:
                    m.register_parameter(name, nn.Parameter(value, requires_grad=trains))
                else:
                    m.register_buffer(name, value)
            folded += [f"{prefix}.{name}" if prefix else name for name in values]
    finally:
        for m, training in modes.items():
            m.training = training
    return folded


@register_surgery(FOLD_KIND)
def _replay_fold(model: nn.Module, step: dict[str, Any]) -> nn.Module:
    """Fold the reparametrized weights of a freshly built model (used by ``load_checkpoint``)."""
    fold_parametrizations(model)
    return model


def kernels(model: nn.Module) -> dict[str, int]:
    """Number of kernels of every conv layer."""
    return {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
