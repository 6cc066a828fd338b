"""The one batch loop: data sets and loaders to batches on the right device.

Every analysis, evaluation and sweep reads its data through :func:`batches`: a Dataset or a
DataLoader over it gives the same batches, each moved once to the device (non-blocking from
pinned memory), with a global batch index that seeds per-batch randomness.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import NamedTuple

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

__all__ = [
    "Batch",
    "as_loader",
    "batches",
    "resolve_device",
    "sample_shape",
    "split_batch",
    "expected_input_shape",
    "explained",
    "forward_checked",
]


def resolve_device(device: str | torch.device | None, model: nn.Module | None = None) -> torch.device:
    """The device to compute on.

    ``None``: where the model's parameters (or buffers) are, else the CPU. ``"auto"``: CUDA when
    present, else the CPU. Anything else is passed to :class:`torch.device`; asking for a CUDA
    device on a machine without one is an error that says so.
    """
    if device is None:
        if model is not None:
            for t in (*model.parameters(), *model.buffers()):
                return t.device
        return torch.device("cpu")
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', not {device!r}") from e
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} asked for, but this machine has no CUDA GPU (use 'cpu' or 'auto')")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r} asked for, but this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    return dev


def as_loader(data: Dataset | DataLoader, batch_size: int = 256, **kw) -> DataLoader:
    """A DataLoader over ``data`` (returned unchanged if it already is one). Empty data is an error."""
    if isinstance(data, DataLoader):
        loader = data
    elif isinstance(data, Dataset):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, not {batch_size!r}")
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
    """One batch: its index in the loader's order, the inputs and the targets (``None`` without labels)."""

    index: int
    x: torch.Tensor
    y: torch.Tensor | None


def split_batch(batch) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(inputs, targets)`` of what a loader yields: a tensor, or a tuple/list ``(x, y, ...)``."""
    if isinstance(batch, torch.Tensor):
        return batch, None
    if isinstance(batch, list | tuple) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0], batch[1] if len(batch) > 1 and isinstance(batch[1], torch.Tensor) else None
    raise TypeError(f"a batch must be a tensor or a tuple (inputs, targets), not {type(batch).__name__}")


def batches(loader: DataLoader, device: torch.device) -> Iterator[Batch]:
    """Every batch of ``loader`` moved to ``device`` (non-blocking when the loader pins memory)."""
    non_blocking = device.type == "cuda" and bool(getattr(loader, "pin_memory", False))
    for i, raw in enumerate(loader):
        x, y = split_batch(raw)
        yield Batch(i, x.to(device, non_blocking=non_blocking), None if y is None else y.to(device, non_blocking=non_blocking))


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


@contextlib.contextmanager
def explained(model: nn.Module, x: torch.Tensor) -> Iterator[None]:
    """Turn a shape error raised inside the block into one that says which input the model expects."""
    try:
        yield
    except RuntimeError as e:
        msg = str(e)
        if not any(s in msg for s in ("shape", "size", "channels", "dimension", "mat1", "Expected")):
            raise
        want = expected_input_shape(model)
        c = _first_conv_channels(model)
        hint = f"expected [batch, {', '.join(map(str, want))}]" if want else (f"expected {c} input channels" if c else "")
        raise ValueError(f"Input of shape {tuple(x.shape)} does not fit {type(model).__name__} ({hint}): {msg}") from None


def forward_checked(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``model(x)``, turning a shape error into one that says which input shape was expected."""
    with explained(model, x):
        return model(x)
