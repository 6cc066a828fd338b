"""A stopped sweep continues where it stopped.

A sweep over thousands of channels and a large data set runs for hours or days, and a cluster's
time limit or a preemption stops it. While it runs, the sweep keeps its state at the last whole
batch (every unit's metric counts and observation sums, and how many batches they cover) in a file
beside its partial result, rewritten atomically as the partial result is; the file is removed when
the sweep completes. Given ``resume=True``, a sweep that finds a stopped run's state continues from
the batch after it, with any number of processes, and ends with the result an uninterrupted run
gives, bit for bit (each sum goes on growing in the same order).

The state is refused, with a line that says why, when it is not this run's: another model (a hash
of its weights), other data (its size, its batches and their order, an image folder's files and a
hash of 32 samples spread over it), other units or other settings.
It is data: tensors and plain values, read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, IterableDataset, SequentialSampler

from .batches import order_sampler, unseeded_order
from .distributed import broadcast_object, is_main
from .registry import option
from .results import atomic_write, to_plain

__all__ = ["FORMAT", "Checkpoint", "RESUME_OPTION", "check_resume", "state_path", "metric_state", "load_metric_state",
           "unordered"]

FORMAT = "cnn-redundancy-sweep-state/1"

_PLAIN = (int, float, bool, str, type(None))


def state_path(partial: str | os.PathLike) -> Path:
    """Where a run whose partial result is ``partial`` keeps its state: ``x.json`` -> ``x.state.pt``."""
    p = Path(partial)
    return p.with_name(f"{p.stem}.state.pt")


#: the analyses' ``resume`` option (the command line's ``--resume``)
RESUME_OPTION = option("resume", "continue a stopped run from the state it left beside its partial result "
                       "(<out>/<name>.state.pt); without one, start from the first batch")


def check_resume(resume: bool, partial: str | os.PathLike | None) -> None:
    """``resume`` is a bool, and asks for a partial result: the state is kept beside it."""
    if not isinstance(resume, bool):
        raise TypeError(f"resume must be True or False, not {resume!r}")
    if resume and partial is None:
        raise ValueError("resume=True needs partial=<path>: a stopped run's state is kept beside its partial result")


def _saveable(v: Any) -> bool:
    if isinstance(v, (torch.Tensor, *_PLAIN)):
        return True
    if isinstance(v, list | tuple):
        return all(_saveable(x) for x in v)
    if isinstance(v, dict):
        return all(isinstance(k, str) and _saveable(x) for k, x in v.items())
    return False


def metric_state(metric: Any) -> dict[str, Any] | None:
    """A metric's accumulated state: its public attributes (tensors on the CPU), or ``None`` where one
    of them is not plain data (a metric of the user's own holding other objects cannot be kept)."""
    if hasattr(metric, "state_dict") and callable(metric.state_dict):
        state = metric.state_dict()
    else:
        state = {k: v for k, v in vars(metric).items() if not k.startswith("_")}
    if not _saveable(state):
        return None
    return {k: v.detach().cpu() if isinstance(v, torch.Tensor) else v for k, v in state.items()}


def load_metric_state(metric: Any, state: dict[str, Any], device: torch.device) -> None:
    """Put a state from :func:`metric_state` back into ``metric`` (tensors on ``device``)."""
    moved = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in state.items()}
    if hasattr(metric, "load_state_dict") and callable(metric.load_state_dict):
        metric.load_state_dict(moved)
    else:
        for k, v in moved.items():
            setattr(metric, k, v)


def _tensor_bytes(t: torch.Tensor) -> bytes:
    t = t.detach().cpu().contiguous().reshape(-1)
    return t.view(torch.uint8).numpy().tobytes() if t.numel() else b""


def model_hash(model: nn.Module) -> str:
    """SHA-256 of every parameter and buffer (names, types, shapes and values)."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        if isinstance(t, torch.Tensor):
            h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
            h.update(_tensor_bytes(t))
    return h.hexdigest()


SAMPLES_HASHED = 32
"""Samples of the data, spread evenly over it, whose values are part of its fingerprint."""


def unordered(loader: DataLoader) -> str | None:
    """Why a later run could not start at the loader's batch ``k`` with the same batches (``None`` where it
    can): a random sampler without a seeded generator draws another order on every pass; an iterable data
    set, or a DataLoader subclass that iterates in its own way, cannot be started at a later batch."""
    if isinstance(loader.dataset, IterableDataset):
        return "an iterable data set cannot be started at a later batch"
    if unseeded_order(loader):
        return "the DataLoader shuffles without a seeded generator, so every pass has another order"
    if type(loader).__iter__ is not DataLoader.__iter__:
        return f"{type(loader).__name__} iterates in its own way, which cannot be started at a later batch"
    return None


def _order(loader: DataLoader) -> str | None:
    """A hash of the order of the samples in the loader's batches, the sampler's random state left as found."""
    sampler = order_sampler(loader)
    if loader.batch_sampler is None or (isinstance(loader.batch_sampler, BatchSampler) and isinstance(sampler, SequentialSampler)):
        return None  # in the data set's order
    gen = getattr(sampler, "generator", None)
    kept = gen.get_state() if isinstance(gen, torch.Generator) else None
    try:
        h = hashlib.sha256()
        for idx in loader.batch_sampler:
            h.update(repr(list(idx)).encode())
        return h.hexdigest()
    finally:
        if kept is not None:
            gen.set_state(kept)  # type: ignore[union-attr]


def _listing(ds: Any) -> str | None:
    """A hash of what a data set lists without reading its samples: an image folder's files and classes, a
    subset's indices, and the same of the data sets it wraps or joins (``Subset``, ``ConcatDataset``)."""
    parts: list[str] = []

    def walk(d: Any, depth: int) -> None:
        if d is None or depth > 8:  # bounded: a data set may name itself
            return
        files = getattr(d, "samples", None)  # torchvision's DatasetFolder: (path, class) pairs
        if isinstance(files, list | tuple) and files and isinstance(files[0], list | tuple) and isinstance(files[0][0], str):
            parts.append(f"samples:{[tuple(f) for f in files]!r};")
        idx = getattr(d, "indices", None)  # torch's Subset: a list, range, tensor or array of indices
        if isinstance(idx, list | tuple | range) or (hasattr(idx, "tolist") and getattr(idx, "ndim", None) == 1):
            parts.append(f"indices:{list(idx.tolist() if hasattr(idx, 'tolist') else idx)!r};")
        inner = getattr(d, "datasets", None)
        for child in inner if isinstance(inner, list | tuple) else [getattr(d, "dataset", None)]:
            walk(child, depth + 1)

    walk(ds, 0)
    return hashlib.sha256("".join(parts).encode()).hexdigest()[:16] if parts else None


def data_fingerprint(loader: DataLoader) -> dict[str, Any]:
    """The data's size, its batches, their order, what it lists (an image folder's files) and a hash of
    :data:`SAMPLES_HASHED` inputs spread over it: what tells two data sets apart without reading all of them.
    Torch's global random state is left as found (a data set may draw random augmentations)."""
    with torch.random.fork_rng(devices=[]):
        return _data_fingerprint(loader)


def _data_fingerprint(loader: DataLoader) -> dict[str, Any]:
    out: dict[str, Any] = {}
    ds = loader.dataset
    try:
        n = len(ds)  # type: ignore[arg-type]
        out["samples"] = n
    except TypeError:
        n = 0
    try:
        out["batches"] = len(loader)
    except TypeError:
        pass
    out["batch_size"], out["drop_last"], out["order"] = loader.batch_size, loader.drop_last, _order(loader)
    out["listing"] = _listing(ds)
    h = hashlib.sha256()
    try:
        for i in sorted({(n - 1) * j // max(SAMPLES_HASHED - 1, 1) for j in range(SAMPLES_HASHED)} if n else ()):
            item = ds[i]  # type: ignore[index]
            x = item[0] if isinstance(item, list | tuple) else item
            if isinstance(x, torch.Tensor):
                h.update(_tensor_bytes(x))
        out["samples_hash"] = h.hexdigest()[:16]
    except (TypeError, IndexError, KeyError, NotImplementedError):
        pass
    return out


_WHAT = {"model": "its model weights", "data": "its data", "units": "its units (layers, repeats, observed modules)",
         "settings": "its settings"}  # fmt: skip


class Checkpoint:
    """A sweep's state file (see the module docstring).

    Args:
        path: the file. model, loader: the run's (their fingerprint is kept with the state).
        units: a plain description of each unit (what it perturbs and observes).
        settings: everything else the numbers depend on (the analysis' parameters, seed, metric, amp, engine).
    """

    def __init__(self, path: str | os.PathLike, model: nn.Module, loader: DataLoader, units: Sequence[str],
                 settings: dict[str, Any]) -> None:  # fmt: skip
        self.path = Path(path)
        self._model = lambda: model_hash(model)  # when first needed: the weights do not change during the run
        # now, before the run draws a shuffling sampler's order
        self._known = {"data": data_fingerprint(loader), "units": list(units), "settings": to_plain(settings)}
        self._fingerprint: dict[str, Any] | None = None

    @property
    def fingerprint(self) -> dict[str, Any]:
        if self._fingerprint is None:
            self._fingerprint = {"model": self._model(), **self._known}
        return self._fingerprint

    def load(self) -> dict[str, Any] | None:
        """The stopped run's state (the same on every process: rank 0 reads it), or ``None`` where there
        is none. Raises ``ValueError`` (on every process) where the file is not this run's state."""
        got: tuple[str, Any] = ("none", None)
        if is_main():
            try:
                got = ("state", self._read())
            except FileNotFoundError:
                got = ("none", None)
            except ValueError as e:
                got = ("error", str(e))
        kind, value = broadcast_object(got)
        if kind == "error":
            raise ValueError(value)
        return value

    def _read(self) -> dict[str, Any]:
        if not self.path.is_file():
            raise FileNotFoundError(self.path)
        try:
            saved = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unreadable file is one line
            raise ValueError(f"{self.path} is not a sweep's saved state ({type(e).__name__}: {str(e).splitlines()[0]}): "
                             "delete it, or run without resume to start again") from None  # fmt: skip
        if not isinstance(saved, dict) or saved.get("format") != FORMAT:
            raise ValueError(f"{self.path} is not a sweep's saved state: delete it, or run without resume to start again")
        theirs = saved.get("fingerprint", {})
        for key, what in _WHAT.items():
            if theirs.get(key) != self.fingerprint[key]:
                raise ValueError(f"the stopped run whose state is in {self.path} differs from this one in {what}: "
                                 "run the same command on the same model and data to continue it, or run without "
                                 "resume to start again (the state is then replaced)")  # fmt: skip
        return saved

    def save(self, state: dict[str, Any]) -> None:
        """Keep ``state`` (plain data and tensors), atomically; rank 0 only."""
        if not is_main():
            return
        payload = {"format": FORMAT, "fingerprint": self.fingerprint, **state}
        atomic_write(self.path, lambda tmp: torch.save(payload, tmp))

    def remove(self) -> None:
        """The run is complete: its state is no longer needed (rank 0 removes it)."""
        if is_main():
            self.path.unlink(missing_ok=True)
