"""Many processes with ``torch.distributed``: who am I, start and stop, and exchanging per-batch results.

Launched by ``torchrun`` (which sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT``), :func:`launched` joins the process group (NCCL when the device is a CUDA GPU,
gloo on CPUs) and leaves it at the end; the command line does this for every command. Without a
process group every function here is the identity: one process, rank 0 of 1.

The analyses never all-reduce floating-point sums at the end (the result would depend on the
number of processes by rounding). Instead every process reduces its batches to small per-batch
contributions (norms, cosine sums, metric counts), :func:`all_gather_tree` exchanges them every few
rounds of batches, and every process adds them up in the global batch order: exactly the additions
one process makes, so the result is the same, bit for bit, for any world size
(:class:`cnn_redundancy.core.batches.BatchLoop`).

A process that raises leaves the group: ``torchrun`` then stops the others (and a collective
waiting on a lost peer fails with a connection error); as a last resort every collective times out
after ``timeout`` (``CNN_REDUNDANCY_DIST_TIMEOUT`` seconds, default 1800).
"""

from __future__ import annotations

import contextlib
import datetime
import math
import os
import pickle
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "rank",
    "world_size",
    "is_main",
    "local_rank",
    "launched_by_torchrun",
    "launched",
    "all_gather_tree",
    "map_tree",
    "broadcast_object",
    "DEFAULT_TIMEOUT",
]

DEFAULT_TIMEOUT = 1800.0
_cpu_group = None  # with NCCL: a gloo group for small objects and the lengths of gathered trees


def _active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process' rank (0 without a process group)."""
    return dist.get_rank() if _active() else 0


def world_size() -> int:
    """The number of processes (1 without a process group)."""
    return dist.get_world_size() if _active() else 1


def is_main() -> bool:
    """Whether this process writes results and reports (rank 0)."""
    return rank() == 0


def local_rank() -> int:
    """This process' rank on its machine (``LOCAL_RANK``; 0 when unset): the CUDA device it uses."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def launched_by_torchrun() -> bool:
    """Whether the environment describes more than one process (``WORLD_SIZE > 1``)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def _timeout(seconds: float | None) -> datetime.timedelta:
    if seconds is None:
        given = os.environ.get("CNN_REDUNDANCY_DIST_TIMEOUT", str(DEFAULT_TIMEOUT))
        try:
            seconds = float(given)
        except ValueError:
            seconds = math.nan
        if not seconds > 0 or math.isinf(seconds):
            raise ValueError(f"CNN_REDUNDANCY_DIST_TIMEOUT must be a number of seconds above 0, not {given!r}")
    return datetime.timedelta(seconds=seconds)


@contextlib.contextmanager
def launched(device: str | torch.device | None = None, *, timeout: float | None = None) -> Iterator[int]:
    """Join the process group ``torchrun`` describes for the duration of the block; yields the world size.

    NCCL when ``device`` is (or ``"auto"`` finds) a CUDA GPU, else gloo; each process uses the GPU
    ``cuda:LOCAL_RANK``. Without ``torchrun``'s environment, or when a group already exists (the
    caller made it), nothing is done.
    """
    global _cpu_group
    if not launched_by_torchrun() or _active():
        yield world_size()
        return
    from .batches import resolve_device  # batches imports this module

    kind = resolve_device("auto" if device is None else device).type  # a device this machine lacks: one clear line
    backend = "nccl" if kind == "cuda" else "gloo"
    if backend == "nccl":
        if local_rank() >= torch.cuda.device_count():
            n = torch.cuda.device_count()
            raise ValueError(f"torchrun started process {local_rank()} of this machine, which has {n} CUDA GPU(s): one "
                             f"process per GPU (--nproc-per-node {n}), or --device cpu")  # fmt: skip
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend=backend, timeout=_timeout(timeout))
    try:
        if backend == "nccl":
            _cpu_group = dist.new_group(backend="gloo", timeout=_timeout(timeout))
        yield world_size()
    finally:
        _cpu_group = None
        dist.destroy_process_group()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every process."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, group=_cpu_group)
    return box[0]


class _Slot:
    """Where a tensor was in a gathered tree: its dtype, shape and byte range in the flat buffer."""

    __slots__ = ("dtype", "shape", "start", "stop")

    def __init__(self, dtype: torch.dtype, shape: tuple[int, ...], start: int, stop: int) -> None:
        self.dtype, self.shape, self.start, self.stop = dtype, shape, start, stop

    def __reduce__(self):
        return (_Slot, (self.dtype, self.shape, self.start, self.stop))


def map_tree(tree: Any, fn: Callable[[Any], Any], leaf: type = torch.Tensor) -> Any:
    """``tree`` (nested dicts, lists and tuples) with every ``leaf`` replaced by ``fn(leaf)``, in order."""
    if isinstance(tree, leaf):
        return fn(tree)
    if isinstance(tree, dict):
        return {k: map_tree(v, fn, leaf) for k, v in tree.items()}
    if isinstance(tree, list | tuple):
        return type(tree)(map_tree(v, fn, leaf) for v in tree)
    return tree


def _strip(tree: Any, chunks: list[torch.Tensor], size: list[int]) -> Any:
    """``tree`` with every tensor replaced by a :class:`_Slot`; the tensors' bytes appended to ``chunks``."""

    def slot(t: torch.Tensor) -> _Slot:
        flat = t.detach().contiguous().reshape(-1).view(torch.uint8)
        chunks.append(flat)
        size[0] += flat.numel()
        return _Slot(t.dtype, tuple(t.shape), size[0] - flat.numel(), size[0])

    return map_tree(tree, slot)


def _fill(tree: Any, buf: torch.Tensor) -> Any:
    return map_tree(tree, lambda s: buf[s.start : s.stop].clone().view(s.dtype).view(s.shape), leaf=_Slot)


def all_gather_tree(tree: Any, device: torch.device | None = None) -> list[Any]:
    """Every process' ``tree`` (tensors in nested dicts, lists and tuples; other leaves picklable), in rank order.

    Two collectives: the lengths (on the CPU group), then one flat byte buffer per process on the
    process group's device (the GPU with NCCL, so no tensor is copied to the host) holding the
    pickled skeleton (shapes, dtypes, non-tensor leaves) followed by the tensors' bytes. Shapes may
    differ between processes. The gathered tensors land on ``device`` (default: where the group's
    buffers are).
    """
    if world_size() == 1:
        return [tree]
    chunks: list[torch.Tensor] = []
    size = [0]
    skeleton = pickle.dumps(_strip(tree, chunks, size))
    comm = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    small = torch.device("cpu") if _cpu_group is not None or comm.type == "cpu" else comm  # a group of the caller's: its device
    lengths = [torch.zeros(2, dtype=torch.int64, device=small) for _ in range(world_size())]
    dist.all_gather(lengths, torch.tensor([len(skeleton), size[0]], dtype=torch.int64, device=small), group=_cpu_group)
    lens = [tuple(n.tolist()) for n in lengths]
    buf = torch.zeros(max(a + b for a, b in lens), dtype=torch.uint8, device=comm)
    buf[: len(skeleton)] = torch.frombuffer(bytearray(skeleton), dtype=torch.uint8).to(comm, non_blocking=True)
    if chunks:
        buf[len(skeleton) : len(skeleton) + size[0]] = torch.cat([c.to(comm, non_blocking=True) for c in chunks])
    bufs = [torch.empty_like(buf) for _ in range(world_size())]
    dist.all_gather(bufs, buf)
    target = device if device is not None else comm
    return [_fill(pickle.loads(b[:n].cpu().numpy().tobytes()), b[n : n + m].to(target, non_blocking=True))
            for (n, m), b in zip(lens, bufs)]  # fmt: skip
