"""The model on the compute device for one analysis, and mixed precision for its forward passes.

:func:`placed` moves a model's parameters and buffers to the device an analysis computes on (and,
on CUDA with AMP, to ``channels_last``) and puts every one of them back where it was when the
analysis ends, also when it raises: the user's model is left on its own device, with the very
same tensor objects. Training (``keep=True``) copies the trained values back into them.

:func:`autocast` is ``torch.autocast`` for ``amp="bf16"`` or ``"fp16"`` and nothing for
``amp=None``; :func:`full_precision` brings a low-precision activation back to float32 before a
reduction, so that sums, norms and cosines are never accumulated in 16 bits.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn

__all__ = ["AMP", "AMP_CHOICES", "placed", "autocast", "full_precision", "check_amp", "wants_channels_last", "to_device"]

#: the ``amp=`` choices and their dtypes
AMP: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16}
#: ``amp=`` values for the command line (``None``: full precision)
AMP_CHOICES = (None, "bf16", "fp16")


def check_amp(amp: str | None) -> torch.dtype | None:
    """The autocast dtype of ``amp`` (``None``: full precision); an unknown value is an error."""
    if amp is None:
        return None
    if amp not in AMP:
        raise ValueError(f"amp must be None, 'bf16' or 'fp16', not {amp!r}")
    return AMP[amp]


def wants_channels_last(device: torch.device, amp: str | None) -> bool:
    """``channels_last`` where it helps: CUDA convolutions in 16 bits (tensor cores); never on the CPU,
    where it would change which kernels run and so the last bits of the results."""
    return device.type == "cuda" and amp is not None


def to_the_end(restore: Callable[[], None]) -> None:
    """Run ``restore`` (which must be safe to run again) to its end, also through Ctrl-C: a
    ``KeyboardInterrupt`` while it runs starts it over, and is raised once it has finished. A clean-up
    cut off half way would leave the user's model half restored."""
    stop = None
    while True:
        try:
            restore()
            break
        except KeyboardInterrupt as e:
            stop = e
    if stop is not None:
        raise stop


def autocast(device: torch.device, amp: str | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` on ``device`` with the ``amp`` dtype, or a no-op for ``amp=None``."""
    dtype = check_amp(amp)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def full_precision(t: torch.Tensor) -> torch.Tensor:
    """``t`` in float32 when it is float16 or bfloat16 (under AMP); otherwise ``t`` itself."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``t`` on ``device``; from the CPU to a GPU through pinned memory, without waiting for the copy."""
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def _moved(t: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor | None:
    """``t`` on ``device`` (4-D tensors ``channels_last`` if asked), or ``None`` when it already is."""
    last = channels_last and t.dim() == 4
    if t.device == device and (not last or t.is_contiguous(memory_format=torch.channels_last)):
        return None
    return t.to(device, memory_format=torch.channels_last if last else torch.preserve_format)


@contextlib.contextmanager
def placed(model: nn.Module, device: torch.device, *, channels_last: bool = False,
           keep: bool = False) -> Iterator[nn.Module]:  # fmt: skip
    """The model's parameters and buffers on ``device`` inside the block, back where they were after it.

    Tensors are swapped through ``.data``, so every Parameter and buffer object (and anything that
    holds it, such as a traced graph or an optimizer) stays the same object. Nothing is copied when
    the model already is on ``device``. ``keep=True`` (training) copies the values the block wrote
    back into the original tensors; otherwise they are simply restored (analyses never write
    weights).
    """
    moved: list[tuple[torch.Tensor, torch.Tensor]] = []
    seen: set[int] = set()
    try:
        for t in (*model.parameters(), *model.buffers()):
            if id(t) in seen:
                continue
            seen.add(id(t))
            new = _moved(t.data, device, channels_last)
            if new is not None:
                moved.append((t, t.data))
                t.data = new
        yield model
    finally:

        def restore() -> None:
            with torch.no_grad():
                for t, original in reversed(moved):
                    if keep:  # run again after the swap below, it copies the original onto itself
                        original.copy_(t.data)
                        if t.grad is not None:
                            t.grad = t.grad.to(original.device)
                    t.data = original

        to_the_end(restore)
