"""The one perturbation engine: every perturbation analysis is a list of units handed to :func:`sweep`.

A *unit* replaces the output of one or more modules during the forward pass (a shuffled input
channel, a zeroed conv, a removed residual branch) and the engine measures, per unit, the model's
metric over the data and (optionally) an observed activation against its clean value. What every
analysis gets for free:

- **the fast path**: the model is traced once (:class:`~cnn_redundancy.core.graph.Traced`); one
  recorded clean forward pass per batch feeds every unit, and each unit recomputes only what lies
  downstream of its module (:class:`~cnn_redundancy.core.graph.Split`). Units that touch several
  modules, modules called twice and untraceable models fall back to full forward passes with
  output-replacing hooks (``engine="naive"`` forces that path; ``"fast"`` refuses the fallback);
- **the change check**: on the first batch, the largest change of the model output (or of the
  observation, without a metric) each unit caused, so that "no effect" is never reported for a
  perturbation that changed nothing;
- **metric streaming** over batches (memory flat in the data size), the device, mixed precision
  (``amp=``), one progress bar, and **partial results** written at least every ``partial_every``
  seconds of work, when the run raises or is interrupted, and at its end;
- **many processes** under ``torchrun``: ``shard="batches"`` (batch ``i`` on rank ``i mod
  world_size``) or ``shard="units"`` (the units split among the processes, each over all the
  data), with the same result as one process, bit for bit.

Every unit's counts are kept apart (``seen``), so a partial result is consistent at any moment.
Per batch, each unit's metric state and observation sum (``observe_sum``) are measured first and
added to the running state afterwards, in the global batch order
(:class:`~cnn_redundancy.core.batches.BatchLoop`), so that every unit covers the baseline's batches;
one exception: on rank 0, which writes, the first batch's units join one by one as they are
measured, so that a partial result written within it (the first batch of a sweep over thousands of
channels can take hours) holds every unit measured so far, with one process or many. Each sum grows
in the same order either way: the same result for any world size.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import gc
import math
import os
import warnings
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import torch
from torch import nn

from .batches import SHARDS, Batch, BatchLoop, as_loader, explained, resolve_device
from .device import autocast, check_amp, full_precision, placed, wants_channels_last
from .distributed import is_main, rank, world_size
from .graph import SplitState, SplitUnavailable, Traced
from .hooks import capture_after, preserved, replacing
from .layers import not_called
from .metrics import Metric, get_metric
from .progress import progress_bar
from .results import PARTIAL_EVERY, Partials
from .resume import Checkpoint, load_metric_state, metric_state, unordered

__all__ = ["Unit", "BatchContext", "SweepState", "sweep", "ENGINES", "PARTIAL_EVERY", "SHARDS"]

ENGINES = ("auto", "fast", "naive")

Replace = Callable[["BatchContext", nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclasses.dataclass
class Unit:
    """One perturbation of a sweep.

    Attributes:
        key: the analysis' name for the unit (a layer, a ``(layer, repeat, channel)`` tuple, ...).
        replace: module name -> ``fn(ctx, module, input, output) -> new output``; applied to every
            named module in the same forward pass. A key ``"@<fx node name>"`` replaces the output of
            any node of the traced graph (a residual addition, say): ``module`` is then ``None`` and
            ``input`` the tuple of the node's tensor inputs; such units need the fast path.
        fast: optional cheaper equivalent of ``replace`` for the split path (single-module units),
            given the module's clean input and output.
        observe: module whose output (its first call after the unit's module) is observed, or ``None``.
        slot: the observation sum the unit adds to (default: its own, keyed by ``key``); units sharing
            a slot (the repeats of a shuffled channel) also run on the same process with ``shard="units"``.
    """

    key: Hashable
    replace: dict[str, Replace]
    fast: Replace | None = None
    observe: str | None = None
    slot: Hashable | None = None

    @property
    def sum_key(self) -> Hashable:
        return self.key if self.slot is None else self.slot

    @property
    def point(self) -> str | None:
        """The single module the unit changes (``None`` when it changes several)."""
        return next(iter(self.replace)) if len(self.replace) == 1 else None


@dataclasses.dataclass
class BatchContext:
    """What a unit's replacement may use: the global batch index and a cache cleared every batch."""

    index: int
    cache: dict[Hashable, Any] = dataclasses.field(default_factory=dict)

    def cached(self, key: Hashable, make: Callable[[], Any]) -> Any:
        """``make()`` once per batch and key (e.g. the permutations shared by a repeat's channels)."""
        if key not in self.cache:
            self.cache[key] = make()
        return self.cache[key]

    def latest(self, slot: Hashable, key: Hashable, make: Callable[[], Any]) -> Any:
        """``make()`` for ``key``, holding one value per ``slot``: made again, and the previous value let go,
        when the key changes (a layer's padded input while that layer's units run, and not the inputs
        of every layer of the batch at once)."""
        held = self.cache.get(("latest", slot))
        if held is None or held[0] != key:
            self.cache[("latest", slot)] = None  # let the old value go before making the new one
            held = self.cache[("latest", slot)] = (key, make())
        return held[1]

    def like(self, key: Hashable, clean: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``clean`` in ``t``'s memory layout (channels-last or contiguous), converted once per batch and key:
        element-wise work on the two, and sums over their maps, then run in one order over contiguous memory."""
        last = t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)
        fmt = torch.channels_last if last else torch.contiguous_format
        return self.cached((key, fmt), lambda: clean.contiguous(memory_format=fmt))

    @staticmethod
    def observation_key(unit: Unit) -> Hashable:
        """The cache key of a unit's clean observation (the same for every unit at the same module)."""
        return ("clean observation", unit.point, unit.observe)


@dataclasses.dataclass
class SweepState:
    """The running (and, once ``complete``, final) measurements of a sweep.

    Attributes:
        units: the units swept. baseline: the clean metric (``None`` without a metric).
        metrics: one metric per unit (``None`` without a metric).
        seen: samples measured per unit. n_seen: samples of the clean passes.
        max_change: per unit, the largest absolute change it caused on the first batch (NaN until measured).
        changed: per unit, whether it changed the output at all on the first batch.
        fast: per unit, whether the split fast path measured it. fallback: why some units were not.
        observed: slot -> the sum over batches of ``observe_sum`` (float64 where it returns float64).
        complete: the whole data set was swept.
    """

    units: list[Unit]
    baseline: Metric | None
    metrics: list[Metric] | None
    seen: list[int]
    n_seen: int = 0
    max_change: list[float] = dataclasses.field(default_factory=list)
    changed: list[bool] = dataclasses.field(default_factory=list)
    fast: list[bool] = dataclasses.field(default_factory=list)
    fallback: str = ""
    observed: dict[Hashable, torch.Tensor] = dataclasses.field(default_factory=dict)
    complete: bool = False


def _fresh(metric: str | Metric) -> Metric:
    return copy.deepcopy(get_metric(metric))


class _Plan:
    """Which units run on the split path, and the traced graph, splits and recorder they share."""

    def __init__(self, model: nn.Module, units: Sequence[Unit], engine: str, traced: Traced | None = None,
                 active: Sequence[int] | None = None, needs_output: bool = True) -> None:  # fmt: skip
        self.model, self.units = model, list(units)
        on = {units[i].point for i in (range(len(units)) if active is None else active)}
        self.splits: dict[str, Any] = {}
        self.recorder, self.head, self.points = None, None, []
        self.fits: set[tuple[int, ...]] = set()  # input shapes the whole model has run on
        self.why = ""
        observe_at: dict[str, str | None] = {}
        for u in units:
            if u.point is not None and observe_at.setdefault(u.point, u.observe) != u.observe:
                raise ValueError(f"units at {u.point!r} observe both {observe_at[u.point]!r} and {u.observe!r}")
        points = [p for p in observe_at]
        if engine != "naive" and points:
            try:
                leaves = {*points, *(o for o in observe_at.values() if o)}
                if traced is None or not traced.calls(leaves):
                    traced = Traced(model, leaves)
                for p in points:
                    try:
                        self.splits[p] = traced.split(p, [observe_at[p]] if observe_at[p] else [])
                    except SplitUnavailable as e:
                        self.why = self.why or str(e)
                points: list = []
                for s in (s for p, s in self.splits.items() if p in on):
                    for q in (*s.frontier_points, *s.input_points, s.output_point, *s.observe_points):
                        if q not in points:
                            points.append(q)
                if points:
                    self.recorder = traced.recorder(points)
                    # without a metric nothing reads the model output: the clean pass stops at the last value
                    # the units need, once the whole model has run on batches of that shape (which checks
                    # that the data fits it)
                    self.head = None if needs_output else traced.recorder(points, output=False)
                self.points = points
            except SplitUnavailable as e:
                self.splits, self.why = {}, str(e)
        multi = [u for u in units if u.point is None]
        if multi and not self.why:
            self.why = f"{len(multi)} unit(s) change several modules at once"
        self.fast = [u.point in self.splits for u in units]
        nodes = [k for u, f in zip(units, self.fast) if not f for k in u.replace if k.startswith("@")]
        if nodes:
            raise SplitUnavailable(f"graph node {nodes[0]!r} can only be perturbed on the fast (split) path: "
                                   f"{self.why or 'engine=naive'}")
        if engine == "fast" and not all(self.fast):
            raise SplitUnavailable(self.why or "the fast path is unavailable")
        if engine == "auto" and any(not f and u.point is not None for u, f in zip(units, self.fast)):
            warnings.warn(f"{self.why}; those units run full forward passes with hooks", stacklevel=3)
        self.hook_observe = {u.point: u.observe for u, f in zip(units, self.fast) if not f and u.observe and u.point in on}

    def clean(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """The clean output, recorded node values (split path) and clean observations (hook path)."""
        out, values, observed = None, {}, {}
        if self.recorder is not None:
            shape = tuple(x.shape[1:])
            if self.head is not None and shape in self.fits:
                _, kept = self.head(x)
            else:
                out, kept = self.recorder(x)
                self.fits.add(shape)
            values = dict(zip(self.points, kept))
        if self.recorder is None or self.hook_observe:
            with capture_after(self.model, self.hook_observe) as store:
                full = self.model(x)
            missing = [p for p in self.hook_observe if p not in store]
            if missing:
                raise not_called(missing, self.hook_observe)
            observed = dict(store)  # type: ignore[arg-type]
            out = full if out is None else out
        return out, values, observed

    def clean_observation(self, i: int, values, observed) -> torch.Tensor | None:
        u = self.units[i]
        if u.observe is None:
            return None
        return values[self.splits[u.point].observe_points[0]] if self.fast[i] else observed[u.point]

    def run(self, i: int, ctx: BatchContext, x: torch.Tensor, values, with_output: bool):
        """``(output or None, observation or None)`` of the model with unit ``i`` applied."""
        u = self.units[i]
        if self.fast[i]:
            s = self.splits[u.point]
            state = SplitState(tuple(values[q] for q in s.frontier_points), values[s.input_points[0]])
            inp = state.layer_input if s.module is not None else tuple(values[q] for q in s.input_points)
            new = (u.fast or u.replace[u.point])(ctx, s.module, inp, values[s.output_point])
            if with_output:
                out, obs = s.downstream(state, new)
            else:
                out, obs = None, s.observed(state, new)
            return out, (obs[0] if obs else None)
        fns = {name: (lambda mod, inp, out, fn=fn: fn(ctx, mod, inp, out)) for name, fn in u.replace.items()}
        pairs = {u.point: u.observe} if u.observe else {}
        with replacing(self.model, fns), capture_after(self.model, pairs) as store:
            out = self.model(x)
        return out, (store.get(u.point) if u.observe else None)


def _slots(units: Sequence[Unit]) -> list[Hashable]:
    """The units' observation slots in order of first appearance."""
    return list(dict.fromkeys(u.sum_key for u in units))


def _mine(units: Sequence[Unit], shard: str) -> list[int]:
    """The units this process measures: all of them, or with ``shard="units"`` those whose slot's
    position (in order of first appearance) is this rank modulo the world size."""
    if shard == "batches" or world_size() == 1:
        return list(range(len(units)))
    position = {k: i for i, k in enumerate(_slots(units))}
    return [i for i, u in enumerate(units) if position[u.sum_key] % world_size() == rank()]


class _Run:
    """One sweep's measurement of a batch (``measure``) and the addition of a batch's measurements to the state (``apply``).

    During the first batch, on the process that writes (rank 0, which measures the first batch),
    each unit's numbers (and its change) join the state as soon as it is measured, after the clean
    pass's: a partial result written then holds every unit measured so far, each over the same
    samples as the baseline (the first batch of a sweep over thousands of channels can take hours,
    and before it nothing else could be kept). With several processes that batch's numbers also go
    to the exchange for the others, and rank 0 does not add them twice. Later batches join whole
    (after the exchange, in the global batch order), so that every unit of a partial result covers
    the baseline's batches. Each sum grows in the same order either way.
    """

    def __init__(self, plan: _Plan, state: SweepState, mine: list[int], metric: Metric | None, observe_sum,
                 amp: str | None, owner: bool, last: bool) -> None:  # fmt: skip
        self.plan, self.state, self.mine, self.metric = plan, state, mine, metric
        self.observe_sum, self.amp, self.owner = observe_sum, amp, owner
        self.streamed = False  # whether the batch being measured joins the state unit by unit
        self.batches = 0  # the batches whole in the state (always the first ones, in order)
        # whether this process' contribution to a batch is the batch's last one (applied in the global order)
        self.owner_of_last = last
        self.whole = True  # whether the state holds those batches and nothing else (no batch half added)
        self.pending: list[tuple[int, torch.Tensor]] = []  # streamed units' changes not yet read back

    def measure(self, b: Batch, dev: torch.device, tick: Callable[[], None]) -> dict[str, Any]:
        """What batch ``b`` adds: the clean metric (where this process owns the batch) and, per unit of
        this process, its metric state, observation sum and (first batch) change; no host sync."""
        plan, ctx, with_metric = self.plan, BatchContext(b.index), self.metric is not None
        with explained(plan.model, b.x), autocast(dev, self.amp):
            clean_out, values, observed = plan.clean(b.x)
        own = self.owner and with_metric
        clean = {"size": len(b.x), "owner": self.owner, "baseline": self.metric.batch_state(clean_out, b.y) if own else None}
        self.streamed = stream = b.index == 0 and rank() == 0
        share = not stream or world_size() > 1  # what the batch adds goes to the exchange (the other processes)
        if stream:
            self.whole = False
            self._apply_clean(clean)
        units, changes, changed = [], [], []
        for i in self.mine:
            with autocast(dev, self.amp):
                out, obs = plan.run(i, ctx, b.x, values, with_metric)
            clean_obs = plan.clean_observation(i, values, observed)
            if b.index == 0:
                e = _extremes(out, clean_out) if out is not None else _extremes(obs, self.reference(ctx, i, clean_obs, obs))
                if stream:
                    self.pending.append((i, e))
                if share:
                    changes.append(e)
                    changed.append(i)
            unit = (i, self.metric.batch_state(out, b.y) if with_metric else None,
                    self.observe_sum(ctx, i, clean_obs, obs) if self.observe_sum is not None and obs is not None else None)  # fmt: skip
            if stream:
                self._apply_unit(unit, len(b.x))
            if share:
                units.append(unit)
            tick()
        return {"size": len(b.x), "clean": clean if share else None, "units": units, "changed": changed,
                "change": list(_changes(changes)) if changes else None, "added_by": rank() if stream else -1,
                "index": b.index, "last": self.owner_of_last}  # fmt: skip

    def settle(self) -> None:
        """Read back the changes of the units streamed so far (one host sync for all of them)."""
        if self.pending:
            self._set_changes([i for i, _ in self.pending], _changes([e for _, e in self.pending]))
            self.pending = []

    def _set_changes(self, units: list[int], change: tuple[torch.Tensor, torch.Tensor]) -> None:
        st = self.state
        if not st.max_change:
            st.max_change, st.changed = [math.nan] * len(st.units), [False] * len(st.units)
        for i, biggest, differs in zip(units, change[0].tolist(), change[1].tolist()):
            st.max_change[i], st.changed[i] = biggest, bool(differs)

    def reference(self, ctx: BatchContext, i: int, clean: Any, obs: Any) -> Any:
        """Unit ``i``'s clean observation to compare ``obs`` with: a tensor in ``obs``'s memory layout and
        float32 at least, made once per batch for all the units observed there (a mixed-dtype or
        mixed-layout difference costs several times more)."""
        u = self.plan.units[i]
        if u.point is None or not isinstance(clean, torch.Tensor) or not isinstance(obs, torch.Tensor):
            return clean
        key = ctx.observation_key(u)
        ref = ctx.like(key, clean, obs)
        return ctx.cached((key, "full precision", ref.stride()), lambda: full_precision(ref))

    def _apply_clean(self, clean: dict[str, Any]) -> None:
        st = self.state
        if clean["owner"]:
            st.n_seen += clean["size"]
            if clean["baseline"] is not None:
                st.baseline.merge(clean["baseline"])

    def _apply_unit(self, unit: tuple[int, Any, Any], size: int) -> None:
        st = self.state
        i, m, o = unit
        if m is not None:
            st.metrics[i].merge(m)
        if o is not None:
            key = st.units[i].sum_key
            if key in st.observed:
                st.observed[key] += o
            else:
                st.observed[key] = torch.zeros_like(o).add_(o)
        st.seen[i] += size

    def apply(self, c: dict[str, Any]) -> None:
        """Add what ``measure`` returned for a batch (what it has not added already)."""
        self.whole = False
        if c["added_by"] == rank():  # streamed here: in the state already
            self.settle()
            self._done(c)
            return
        if c["clean"] is not None:
            self._apply_clean(c["clean"])
        for unit in c["units"]:
            self._apply_unit(unit, c["size"])
        self.settle()
        if c["change"] is not None:  # the first batch: one host sync for all of its units
            self._set_changes(c["changed"], c["change"])
        self._done(c)

    def _done(self, c: dict[str, Any]) -> None:
        """A contribution added: its batch is whole once the last of the batch's contributions is (with
        ``shard="units"`` every process adds one per batch, applied in rank order)."""
        if c["last"]:
            self.batches, self.whole = c["index"] + 1, True

    def snapshot(self) -> dict[str, Any] | None:
        """The state at the last whole batch, as plain data and CPU tensors (``None`` in the middle of a batch
        or where a metric's state is not plain data)."""
        st = self.state
        if not self.whole:
            return None
        metrics = None
        if st.metrics is not None:
            metrics = [metric_state(m) for m in (st.baseline, *st.metrics)]
            if any(m is None for m in metrics):
                return None
        observed = [st.observed[k].detach().cpu() if k in st.observed else None for k in _slots(st.units)]
        return {"batches": self.batches, "n_seen": st.n_seen, "seen": list(st.seen), "max_change": list(st.max_change),
                "changed": list(st.changed), "metrics": metrics, "observed": observed}  # fmt: skip

    def restore(self, saved: dict[str, Any], device: torch.device) -> None:
        """Continue from a :meth:`snapshot`."""
        st = self.state
        self.batches = int(saved["batches"])
        st.n_seen, st.seen = int(saved["n_seen"]), [int(x) for x in saved["seen"]]
        st.max_change, st.changed = [float(x) for x in saved["max_change"]], [bool(x) for x in saved["changed"]]
        if saved["metrics"] is not None:
            for m, ms in zip((st.baseline, *st.metrics), saved["metrics"]):
                load_metric_state(m, ms, device)
        st.observed = {k: o.to(device) for k, o in zip(_slots(st.units), saved["observed"]) if o is not None}


def sweep(
    model: nn.Module,
    data,
    units: Sequence[Unit],
    *,
    metric: str | Metric | None = None,
    observe_sum: Callable[[BatchContext, int, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    amp: str | None = None,
    shard: str = "batches",
    engine: str = "auto",
    progress: bool | None = None,
    desc: str = "sweep",
    partial: Callable[[SweepState], Any] | None = None,
    partial_every: float | None = None,
    traced: Traced | None = None,
    checkpoint: str | os.PathLike | None = None,
    resume: bool = False,
    settings: dict[str, Any] | None = None,
) -> SweepState:
    """Measure every unit over the data (see the module docstring).

    Args:
        model: the network; left exactly as found (modes, hooks, attributes, device; weights are never written).
        data: a Dataset or a DataLoader over it.
        units: the perturbations.
        metric: the model's metric per unit and for the clean model, or ``None``.
        observe_sum: ``observe_sum(ctx, i, clean, perturbed) -> tensor`` for units with an ``observe``
            module: what the batch adds to the unit's slot sum in ``SweepState.observed`` (e.g. the
            cosine per channel summed over the batch's samples).
        amp: ``"bf16"`` or ``"fp16"``: forward passes under ``torch.autocast`` (metric states and sums
            stay in full precision).
        shard: under ``torchrun``, ``"batches"`` or ``"units"`` (see the module docstring).
        engine: ``"auto"`` (the split path wherever it applies), ``"fast"`` (refuse the fallback) or
            ``"naive"`` (full forward passes with hooks for every unit).
        partial: called with the state as the sweep goes (see the module docstring); rank 0 only.
        partial_every: seconds of work between two partial writes (default :data:`PARTIAL_EVERY`).
        traced: the model's trace where the caller has one; it is reused when every unit's module is
            a single call in it (else the model is traced once here).
        checkpoint: a file where the sweep keeps its state at the last whole batch whenever the partial
            result is written (rank 0), removed when the sweep completes (:mod:`cnn_redundancy.core.resume`).
        resume: continue from ``checkpoint`` where it holds a stopped run's state (checked to be this
            run's: model weights, data, units and ``settings``); without one, start from the first batch.
        settings: what else the numbers depend on (the caller's parameters and seed), kept with the state.

    Returns:
        The :class:`SweepState` (the same on every process).
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, not {engine!r}")
    if shard not in SHARDS:
        raise ValueError(f"shard must be one of {', '.join(SHARDS)}, not {shard!r}")
    check_amp(amp)
    units = list(units)
    if not units:
        raise ValueError("nothing to sweep: no units")
    if metric is None and observe_sum is None:
        raise ValueError("a sweep needs a metric or an observation")
    loader = as_loader(data, batch_size)
    dev = resolve_device(device, model)
    template = _fresh(metric) if metric is not None else None
    state = SweepState(units, _fresh(metric) if metric is not None else None,
                       [_fresh(metric) for _ in units] if metric is not None else None, [0] * len(units))
    mine = _mine(units, shard)
    last = wants_channels_last(dev, amp)
    keep = None
    if checkpoint is not None:
        kept_metric = None if template is None else metric_state(template)
        why = unordered(loader)
        if template is not None and kept_metric is None:
            why = f"{type(template).__name__} holds more than tensors and plain values"
        if why is None:
            described = [repr((u.key, sorted(u.replace), u.observe, u.sum_key)) for u in units]
            how = {**(settings or {}), "metric": None if template is None else [type(template).__name__, kept_metric],
                   "amp": amp, "engine": engine, "observe_sum": observe_sum is not None}  # fmt: skip
            keep = Checkpoint(checkpoint, model, loader, described, how)
        elif resume and is_main():  # no state is kept: a later run could not continue it
            warnings.warn(f"a stopped run cannot be resumed ({why}): starting from the first batch", stacklevel=2)
    saved = keep.load() if keep is not None and resume else None
    if resume and keep is not None and saved is None and is_main():
        warnings.warn(f"no stopped run's state in {keep.path}: starting from the first batch", stacklevel=2)
    with preserved(model), torch.no_grad(), placed(model, dev, channels_last=last), _old_objects_frozen():
        model.eval()
        plan = _Plan(model, units, engine, traced, active=mine, needs_output=metric is not None)
        state.fast, state.fallback = plan.fast, plan.why
        run = _Run(plan, state, mine, template, observe_sum, amp, owner=shard == "batches" or rank() == 0,
                   last=shard == "batches" or rank() == world_size() - 1)
        if saved is not None:
            run.restore(saved, dev)
        loop = BatchLoop(loader, dev, run.apply, model=model, shard=shard, channels_last=last, start=run.batches)

        def write() -> None:
            run.settle()
            if partial is not None:
                partial(state)
            if keep is not None and not state.complete:
                snap = run.snapshot()
                if snap is not None:
                    keep.save(snap)

        if run.batches:
            desc = f"{desc}, from batch {run.batches + 1} of {len(loader)}"
        with progress_bar(len(loop) * len(mine), desc, enabled=progress, unit="pass") as bar, \
                Partials(write if partial is not None or keep is not None else None, partial_every) as partials:  # fmt: skip
            partials.started = run.batches > 0

            def tick() -> None:
                bar.update(1)
                if run.streamed:  # the unit's numbers are in the state already
                    partials.started = True
                partials.maybe()

            for b in loop:
                loop.add(run.measure(b, dev, tick))
                partials.started = True
            state.complete = True
    if keep is not None:
        keep.remove()
    return state


@contextlib.contextmanager
def _old_objects_frozen():
    """The objects alive when the sweep starts left out of the cyclic garbage collector's passes until it
    ends (``gc.freeze``). A sweep makes a few dozen small objects per unit and batch, and every 70,000 or
    so the collector's full pass walks every object of the program: 0.1 s with torch and a model loaded,
    more in a large notebook, several times a minute. Frozen, a pass walks the sweep's own objects
    only. Nothing is held back from reference counting, and the collector is left as found: a program
    that froze objects itself, or disabled the collector, keeps it so. The young generations are
    collected first (a few milliseconds), so that the cyclic garbage just left behind (the previous
    analysis' traces, say) is not frozen with the rest; older cyclic garbage waits for the sweep's end."""
    if not gc.isenabled() or gc.get_freeze_count():
        yield
        return
    gc.collect(1)
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _flat(out: Any) -> torch.Tensor:
    """Every tensor of a model output (a tensor, or a dict / tuple of them) as one flat tensor (float32 at least)."""
    if isinstance(out, torch.Tensor):
        return full_precision(out).flatten()
    parts = out.values() if isinstance(out, dict) else out
    return torch.cat([_flat(p) for p in parts if isinstance(p, torch.Tensor | dict | list | tuple)])


def _extremes(out: Any, clean: Any) -> torch.Tensor:
    """The smallest and largest difference ``out - clean`` (float64 ``[2]``) without a host sync; any output
    structure; ``[0, 0]`` for empty outputs.

    The difference is taken in the outputs' precision (float32 at least): IEEE subtraction is zero exactly
    where two numbers are equal, so it is non-zero exactly where the outputs differ, and NaN where either
    is NaN (or both are the same infinity), which counts as a change too (:func:`_changes`).
    """
    if isinstance(out, torch.Tensor) and isinstance(clean, torch.Tensor) and out.shape == clean.shape:
        diff = full_precision(out) - full_precision(clean)  # in out's memory layout (channels-last, say)
        diff = diff.permute(sorted(range(diff.dim()), key=lambda d: -diff.stride(d))).reshape(-1)  # read in that order
    else:
        diff = _flat(out) - _flat(clean)
    if not diff.numel():
        return diff.new_zeros(2, dtype=torch.float64)
    return torch.stack(torch.aminmax(diff)).double()


def _changes(extremes: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per unit, from its :func:`_extremes`: the largest absolute change (NaN where a value is NaN) and
    whether anything changed, for all the units of a batch in a few operations."""
    lo, hi = torch.stack(extremes).unbind(1)
    biggest = torch.maximum(hi, -lo)
    return biggest, (biggest > 0) | torch.isnan(biggest)
