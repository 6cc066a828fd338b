"""The one batch loop: data sets and loaders to batches on the right device, shared among processes.

Every analysis, evaluation and sweep reads its data through :func:`batches`: a Dataset or a
DataLoader over it gives the same batches, each moved once to the device (non-blocking from
pinned memory), with a global batch index that seeds per-batch randomness and the position of
its first sample in the data set. Given the model, every batch is checked first
(:func:`check_batch`): inputs of another dtype than the model's weights (uint8 images, float64 data
into a float32 model) and non-finite values are refused with the fix.

Under ``torchrun`` (:mod:`cnn_redundancy.core.distributed`), ``batches(..., shard=True)`` gives
each process its share: batch ``i`` goes to rank ``i mod world_size`` and only that process loads
it. :class:`BatchLoop` is the loop of every analysis that reduces its data to a result: each
process hands over what it measured on a batch, and every process applies every batch's
contribution in the global batch order, so that the result is the same for any number of processes.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    IterableDataset,
    SequentialSampler,
    default_collate,
)

from .distributed import all_gather_tree, map_tree, rank, world_size

__all__ = [
    "Batch",
    "BatchLoop",
    "SHARDS",
    "as_loader",
    "batches",
    "check_batch",
    "first_input",
    "model_dtype",
    "resolve_device",
    "sample_shape",
    "split_batch",
    "expected_input_shape",
    "explained",
    "forward_checked",
]


#: how work is shared among processes: by batches of the data, or by units (each process over all the data)
SHARDS = ("batches", "units")


_OTHER_DEVICES = {  # device types besides the CPU and CUDA, and whether this torch and machine have one
    "mps": lambda: torch.backends.mps.is_available(),
    "xpu": lambda: hasattr(torch, "xpu") and torch.xpu.is_available(),
}


def resolve_device(device: str | torch.device | None, model: nn.Module | None = None) -> torch.device:
    """The device to compute on.

    ``None``: where the model's parameters (or buffers) are, else the CPU. ``"auto"``: CUDA when
    present, else the CPU. Anything else is passed to :class:`torch.device`; asking for a CUDA
    device on a machine without one is an error that says so. ``"cuda"`` without an index is the
    current CUDA device (under ``torchrun``, ``cuda:LOCAL_RANK``).
    """
    if device is None:
        if model is not None:
            for t in (*model.parameters(), *model.buffers()):
                if t.device.type == "meta":
                    raise ValueError("the model's weights are on the 'meta' device, which holds no values (built without "
                                     "weights): load its weights first, e.g. model.to_empty(device='cpu') then "
                                     "model.load_state_dict(...)")
                return t.device
        return torch.device("cpu")
    if isinstance(device, str) and device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', not {device!r}") from e
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} asked for, but this machine has no CUDA GPU (use 'cpu' or 'auto')")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r} asked for, but this machine has {torch.cuda.device_count()} CUDA GPU(s)")
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
    elif dev.type == "meta":
        raise ValueError("device 'meta' holds no values to analyse: use 'cpu', 'cuda' or 'auto'")
    elif dev.type in _OTHER_DEVICES:  # used where this torch and machine have one
        if not _OTHER_DEVICES[dev.type]():
            raise ValueError(f"device {device!r} asked for, but this machine (or this build of torch) has no "
                             f"{dev.type} device: use 'cpu', 'cuda' or 'auto'")
    elif dev.type != "cpu":
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda', 'cuda:N', 'mps' or 'xpu', not {device!r}")
    return dev


def collate(samples: list[Any]) -> Any:
    """torch's default collation; inputs of different shapes (an image folder of mixed sizes) are a
    ``ValueError`` that says how to give them one size, not a stack error from inside the loader."""
    try:
        return default_collate(samples)
    except RuntimeError as e:
        if "stack expects each tensor to be equal size" not in str(e):
            raise
        shapes = list(dict.fromkeys(tuple(s[0].shape) for s in samples if isinstance(s, tuple | list)
                                    and s and isinstance(s[0], torch.Tensor)))  # fmt: skip
        seen = " and ".join(str(list(x)) for x in shapes[:2]) if len(shapes) > 1 else str(e)
        raise ValueError(f"inputs of different shapes cannot form a batch ({seen}): give every image one size: "
                         "--image-size N for an image folder (image_size=N in load_dataset), or a resize in the "
                         "data set's transform") from None


def as_loader(data: Dataset | DataLoader, batch_size: int = 256, **kw) -> DataLoader:
    """A DataLoader over ``data`` (returned unchanged if it already is one), collated by :func:`collate`.
    Empty data is an error."""
    if isinstance(data, DataLoader):
        loader = data
    elif isinstance(data, Dataset):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, not {batch_size!r}")
        kw.setdefault("collate_fn", collate)
        loader = DataLoader(data, batch_size=batch_size, shuffle=False, **kw)
    else:
        raise TypeError(f"data must be a torch Dataset or DataLoader of (input, label) pairs, not {type(data).__name__}")
    try:
        n = len(loader.dataset)  # type: ignore[arg-type]
    except TypeError:
        n = None
    if n == 0:
        raise ValueError("The data set is empty: nothing to analyse")
    return loader


def sample_shape(data: Dataset | DataLoader) -> tuple[int, ...]:
    """Shape of one input (without the batch dimension)."""
    ds = data.dataset if isinstance(data, DataLoader) else data
    shape = getattr(ds, "input_shape", None)
    if shape is not None:
        return tuple(shape)
    if len(ds) == 0:  # type: ignore[arg-type]
        raise ValueError("The data set is empty: nothing to analyse")
    return tuple(ds[0][0].shape)


class Batch(NamedTuple):
    """One batch: its index in the loader's order, the inputs, the targets (``None`` without labels),
    and ``offset``, the number of samples in all earlier batches (the data set position of its first
    sample when the loader does not shuffle)."""

    index: int
    x: torch.Tensor
    y: torch.Tensor | None
    offset: int = 0


def split_batch(batch) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(inputs, targets)`` of what a loader yields: a tensor, or a tuple/list ``(x, y, ...)``."""
    if isinstance(batch, torch.Tensor):
        return batch, None
    if isinstance(batch, list | tuple) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0], batch[1] if len(batch) > 1 and isinstance(batch[1], torch.Tensor) else None
    raise TypeError(f"a batch must be a tensor or a tuple (inputs, targets), not {type(batch).__name__}")


def _schedule(loader: DataLoader, r: int, world: int, start: int = 0) -> list[tuple[int, int, list[int]]]:
    """``(index, offset, sample indices)`` of every batch from ``start`` on that process ``r`` of ``world`` loads."""
    out, offset = [], 0
    for i, idx in enumerate(loader.batch_sampler):  # type: ignore[arg-type]
        idx = list(idx)
        if i >= start and i % world == r:
            out.append((i, offset, idx))
        offset += len(idx)
    return out


def _reloaded(loader: DataLoader, batch_sampler: list[list[int]], pin: bool) -> DataLoader:
    """``loader`` with another batch sampler (and pinned memory for CUDA): same data, workers and collation."""
    kw: dict[str, Any] = {"num_workers": loader.num_workers, "collate_fn": loader.collate_fn, "pin_memory": pin,
                          "timeout": loader.timeout, "worker_init_fn": loader.worker_init_fn,
                          "multiprocessing_context": loader.multiprocessing_context, "generator": loader.generator,
                          "persistent_workers": loader.persistent_workers}  # fmt: skip
    if loader.num_workers > 0:
        kw["prefetch_factor"] = loader.prefetch_factor
    return DataLoader(loader.dataset, batch_sampler=batch_sampler, **kw)


def order_sampler(loader: DataLoader) -> Any:
    """The sampler that orders the loader's samples: a ``BatchSampler``'s own sampler (a ``batch_sampler=``
    given to the DataLoader, whose ``loader.sampler`` is then a placeholder), else the loader's."""
    bs = loader.batch_sampler
    return bs.sampler if isinstance(bs, BatchSampler) else loader.sampler


def unseeded_order(loader: DataLoader) -> bool:
    """Whether every pass over the loader draws another order: a random sampler (shuffling, a random subset,
    weighted) without a seeded generator."""
    s = order_sampler(loader)
    return not isinstance(s, SequentialSampler) and hasattr(s, "generator") and s.generator is None


def _raw_batches(loader: DataLoader, device: torch.device, r: int, world: int,
                 start: int = 0) -> Iterator[tuple[int, int, Any, bool]]:  # fmt: skip
    """``(index, offset, what the loader yields, pinned)`` for the batches process ``r`` loads, from batch ``start`` on."""
    if world > 1 and unseeded_order(loader):
        raise ValueError("a shuffling DataLoader gives every process another order: pass shuffle=False, or a "
                         "generator with the same seed on every process")  # fmt: skip
    pin = device.type == "cuda"
    # a sampler drawing from the loader's own generator gives its order through the batch sampler (as every
    # process draws it), not through the loader's iterator, which first draws its workers' seed from that
    # generator: the same batches for any number of processes
    gen = getattr(order_sampler(loader), "generator", None)
    drawn = gen is not None and gen is loader.generator and type(loader).__iter__ is DataLoader.__iter__
    listed = loader.batch_sampler is not None and not isinstance(loader.dataset, IterableDataset)  # finite batches
    if listed and (world > 1 or start > 0 or drawn or (pin and not loader.pin_memory)):
        plan = _schedule(loader, r, world, start)
        source = _reloaded(loader, [idx for _, _, idx in plan], pin or loader.pin_memory)
        for (i, offset, _), raw in zip(plan, source):
            yield i, offset, raw, source.pin_memory
        return
    offset = 0
    for i, raw in enumerate(loader):
        if i >= start and i % world == r:
            yield i, offset, raw, bool(loader.pin_memory)
        offset += len(split_batch(raw)[0])


def batches(loader: DataLoader, device: torch.device, model: nn.Module | None = None, *, shard: bool = False,
            channels_last: bool = False, start: int = 0) -> Iterator[Batch]:  # fmt: skip
    """Every batch of ``loader`` moved to ``device`` (from pinned memory and non-blocking on CUDA),
    checked against ``model`` where given (:func:`check_batch`).

    ``shard=True`` under ``torchrun``: only the batches of this process (batch ``i`` goes to rank
    ``i mod world_size``), and only those are loaded. ``channels_last``: 4-D inputs in that layout.
    ``start``: the batches before it are left out (a stopped run continued); they are not loaded
    where the loader has a batch sampler.
    """
    world = world_size() if shard else 1
    for i, offset, raw, pinned in _raw_batches(loader, device, rank() if shard else 0, world, start):
        x, y = split_batch(raw)
        non_blocking = device.type == "cuda" and pinned
        x = x.to(device, non_blocking=non_blocking)
        if channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if model is not None:
            check_batch(model, x, i, offset)
        yield Batch(i, x, None if y is None else y.to(device, non_blocking=non_blocking), offset)


def model_dtype(model: nn.Module) -> torch.dtype | None:
    """The floating-point type of the model's weights (its first floating parameter), or ``None``."""
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), None)


def check_batch(model: nn.Module, x: torch.Tensor, index: int | None = None, first: int | None = None) -> None:
    """Refuse inputs the model would read wrongly or not at all, saying how to fix them.

    ``index`` is the batch's index and ``first`` the position of its first sample in the data (where known).

    Raises:
        TypeError: integer inputs (raw image bytes), or floating inputs of another type than the
            model's weights (outside autocast).
        ValueError: a NaN or infinite input value (the message names the sample).
    """
    want = model_dtype(model)
    if not x.is_floating_point():
        raise TypeError(f"inputs are {x.dtype} (raw image values?) but the model computes in {want or 'floating point'}: "
                        "convert and scale them as in training, e.g. x.float() / 255 (the toolkit's data sets do this)")
    if want is not None and x.dtype != want and not torch.is_autocast_enabled(x.device.type):
        raise TypeError(f"inputs are {x.dtype} but the model's weights are {want}: cast the data (x.to({want})) "
                        f"or the model (model.to({x.dtype}))")
    if bool(torch.isfinite(x.sum())):  # a NaN or an infinity makes the sum one: a fortieth of the time of the test below
        return
    finite = torch.isfinite(x.reshape(len(x), -1)).all(1)  # or finite values whose sum overflowed
    if not bool(finite.all()):
        j = int((~finite).nonzero()[0])
        where = f"sample {first + j} of the data (batch {index}, position {j})" if first is not None else f"position {j} of a batch"
        raise ValueError(f"{where} has a NaN or infinite input value: every activation, angle and metric it reaches "
                         "would be NaN or wrong; clean or drop that sample")


def first_input(data: Dataset | DataLoader, model: nn.Module | None = None) -> torch.Tensor:
    """The first input of ``data`` as a batch of one (for tracing and counting), checked against ``model``."""
    x, _ = split_batch(next(iter(as_loader(data, 1))))
    if model is not None:
        check_batch(model, x[:1], 0, 0)
    return x[:1]


class BatchLoop:
    """The loop of an analysis that reduces its data: ``for b in loop: ...; loop.add(contribution)``.

    Each batch's body measures what the batch contributes (small tensors: norms, sums, counts) and
    hands it to :meth:`add`; ``apply(contribution)`` then adds it to the result. With one process
    that happens right after the body. Under ``torchrun`` every process keeps its contributions for
    a few rounds of batches, the processes exchange them in one collective, and every process
    applies all of them in the global batch order, so every process ends with the result one
    process would compute, bit for bit. Holding several rounds lets a process that was slow on one
    batch catch up on the next ones before the others wait for it (two processes over 1,024 images:
    3-5% faster, measured interleaved; see ``docs/scaling.md``). The first round is exchanged on its own; what every exchange
    shows (the largest contribution and the slowest round of any process, the same on every
    process) sets how many rounds are held until the next one: at most :attr:`exchange_rounds`,
    :attr:`exchange_seconds` of work (a stopped run loses no more, and partial results lag no more)
    and :attr:`exchange_bytes` gathered.

    Args:
        loader: the data. device: where batches go. apply: adds one contribution to the result.
        model: every batch is checked against it (:func:`check_batch`).
        shard: ``"batches"`` (batch ``i`` on rank ``i mod world_size``) or ``"units"`` (every process
            sees every batch; the analysis splits its own work, and contributions are applied in
            rank order).
        channels_last: 4-D inputs in that memory layout.
        start: the first batch measured (a stopped run continued: the earlier batches' contributions
            are in the result already).
    """

    exchange_rounds = 16
    exchange_seconds = 2.0
    exchange_bytes = 64 * 2**20

    def __init__(self, loader: DataLoader, device: torch.device, apply: Callable[[Any], None], *,
                 model: nn.Module | None = None, shard: str = "batches", channels_last: bool = False,
                 start: int = 0) -> None:  # fmt: skip
        if shard not in SHARDS:
            raise ValueError(f"shard must be one of {', '.join(SHARDS)}, not {shard!r}")
        self.loader, self.device, self.apply, self.shard, self.model = loader, device, apply, shard, model
        self.channels_last, self.start = channels_last, start
        self._contribution: Any = None
        self._held: list[tuple[int | None, Any]] = []
        self._every, self._slowest, self._largest, self._since = 1, 0.0, 0, 0.0

    def __len__(self) -> int:
        """The number of batches this process measures."""
        n, world = len(self.loader), world_size()
        if self.shard != "batches":
            return max(0, n - self.start)
        first = self.start + (rank() - self.start) % world  # this process' first batch from ``start`` on
        return max(0, -(-(n - first) // world))

    def add(self, contribution: Any) -> None:
        """What the current batch contributes (tensors in nested dicts, lists and tuples)."""
        self._contribution = contribution

    def __iter__(self) -> Iterator[Batch]:
        by_batch = self.shard == "batches"
        done = 0
        self._held, self._every, self._slowest, self._largest, self._since = [], 1, 0.0, 0, time.perf_counter()
        for b in batches(self.loader, self.device, self.model, shard=by_batch, channels_last=self.channels_last,
                         start=self.start):
            self._contribution = None
            yield b
            self._round(b.index if by_batch else rank(), self._contribution)
            done += 1
        if by_batch and world_size() > 1:  # the last round: processes without a batch take part empty-handed
            for _ in range(-(-(len(self.loader) - self.start) // world_size()) - done):
                self._round(None, None)
        self._exchange()

    def _round(self, key: int | None, contribution: Any) -> None:
        if world_size() == 1:
            if contribution is not None:
                self.apply(contribution)
            return
        size = [0]

        def copied(t: torch.Tensor) -> torch.Tensor:  # the body may reuse its buffers for the next batch
            size[0] += t.numel() * t.element_size()
            return t.detach().clone()

        self._held.append((key, map_tree(contribution, copied)))
        now = time.perf_counter()
        self._slowest, self._largest, self._since = max(self._slowest, now - self._since), max(self._largest, size[0]), now
        if len(self._held) >= self._every:  # every process has held as many rounds: they all exchange now
            self._exchange()

    def _exchange(self) -> None:
        """Exchange the rounds every process holds; apply them, round by round, in the global batch order."""
        if world_size() == 1 or not self._held:
            return
        gathered = all_gather_tree((self._held, self._slowest, self._largest), self.device)
        self._held, self._slowest, self._largest = [], 0.0, 0
        for held in zip(*(g[0] for g in gathered)):
            for _, c in sorted((g for g in held if g[1] is not None), key=lambda g: g[0]):
                self.apply(c)
        # the same on every process: the slowest round and the largest contribution of any process
        slowest, size = max(g[1] for g in gathered), max(g[2] for g in gathered) * world_size()
        self._every = max(1, min(self.exchange_rounds, self.exchange_bytes // max(size, 1),
                                 int(self.exchange_seconds // max(slowest, 1e-9))))


def expected_input_shape(model: nn.Module) -> tuple[int, ...] | None:
    """The input shape ``(C, H, W)`` a model declares (``model.input_shape``), or what its first conv implies."""
    shape = getattr(model, "input_shape", None)
    if shape is not None:
        return tuple(shape)
    return None


def _first_conv_channels(model: nn.Module) -> int | None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return m.in_channels
    return None


def _fix(want: tuple[int, ...] | None, channels: int | None, x: torch.Tensor) -> str:
    """How to make inputs of ``x``'s shape fit: the image options, or a model built for them."""
    if x.dim() != 4:
        return "inputs must be [batch, channels, height, width]"
    c = want[0] if want else channels
    if c is not None and x.shape[1] != c:
        how = {1: "--grayscale for an image folder", 3: "RGB images (an image folder without --grayscale)"}.get(
            c, f"images with {c} channels")
        return f"the images have {x.shape[1]} channels, the model takes {c}: {how}, or a model built with in_channels={x.shape[1]}"
    if want and tuple(x.shape[2:]) != tuple(want[1:]):
        return (f"the images are {x.shape[2]}x{x.shape[3]}, the model takes {want[1]}x{want[2]}: --image-size "
                f"{want[1]} for an image folder, or a model built with input_size={x.shape[2]}")
    return ""


@contextlib.contextmanager
def explained(model: nn.Module, x: torch.Tensor) -> Iterator[None]:
    """Turn a shape error raised inside the block into one that says which input the model expects and the fix."""
    try:
        yield
    except RuntimeError as e:
        msg = str(e)
        if not any(s in msg for s in ("shape", "size", "channels", "dimension", "mat1", "Expected")):
            raise
        want = expected_input_shape(model)
        c = _first_conv_channels(model)
        hint = f"expected [batch, {', '.join(map(str, want))}]" if want else (f"expected {c} input channels" if c else "")
        fix = _fix(want, c, x)
        raise ValueError(f"Input of shape {tuple(x.shape)} does not fit {type(model).__name__} ({hint})"
                         f"{'; ' + fix if fix else ''}: {msg}") from None


def forward_checked(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``model(x)``, turning a shape error into one that says which input shape was expected."""
    with explained(model, x):
        return model(x)
