"""Training and evaluation: seeded, streamed over batches, with progress bars."""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .data import as_loader
from .hooks import preserved
from .metrics import Metric, get_metric
from .progress import progress_bar

__all__ = ["seed_everything", "fit", "evaluate", "predict_batches", "forward_checked", "expected_input_shape"]


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; returns a ``torch.Generator`` seeded the same."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


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


def forward_checked(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``model(x)``, turning a shape error into one that says which input shape was expected."""
    try:
        return model(x)
    except RuntimeError as e:
        msg = str(e)
        if not any(s in msg for s in ("shape", "size", "channels", "dimension", "mat1", "Expected")):
            raise
        want = expected_input_shape(model)
        c = _first_conv_channels(model)
        hint = f"expected [batch, {', '.join(map(str, want))}]" if want else (f"expected {c} input channels" if c else "")
        raise ValueError(f"Input of shape {tuple(x.shape)} does not fit {type(model).__name__} ({hint}): {msg}") from None


def _device(device: str | torch.device | None, model: nn.Module) -> torch.device:
    if device is not None:
        return torch.device(device)
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def predict_batches(model: nn.Module, data, *, batch_size: int = 256, device=None, desc: str = "predict", progress=None):
    """Yield ``(output, target)`` per batch, in eval mode, without gradients; mode restored afterwards."""
    loader = as_loader(data, batch_size)
    dev = _device(device, model)
    with preserved(model), torch.no_grad():
        model.eval()
        bar = progress_bar(len(loader), desc, enabled=progress, unit="batch")
        try:
            for x, y in loader:
                yield forward_checked(model, x.to(dev)), y.to(dev)
                bar.update(1)
        finally:
            bar.close()


def evaluate(
    model: nn.Module,
    data: Dataset | DataLoader,
    metric: str | Metric = "accuracy",
    *,
    batch_size: int = 256,
    device=None,
    progress: bool | None = None,
) -> float:
    """The model's metric (``"accuracy"`` in [0, 1], or ``"dice"``) on the whole data set.

    Example:
        >>> from cnn_redundancy import get_model, load_dataset
        >>> 0.0 <= evaluate(get_model("lenet5"), load_dataset("mnist5k", "test")) <= 1.0
        True
    """
    m = get_metric(metric)
    for out, y in predict_batches(model, data, batch_size=batch_size, device=device, desc="evaluate", progress=progress):
        m.update(out, y)
    return m.compute()


def fit(
    model: nn.Module,
    train: Dataset | DataLoader,
    *,
    epochs: int = 5,
    lr: float = 1e-3,
    batch_size: int = 64,
    optimizer: str = "adam",
    weight_decay: float = 0.0,
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    val: Dataset | DataLoader | None = None,
    metric: str = "accuracy",
    seed: int = 0,
    device=None,
    checkpoint: str | os.PathLike | None = None,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Train ``model`` in place (seeded) and return its history.

    Args:
        optimizer: ``"adam"`` (default), ``"sgd"`` (momentum 0.9) or ``"rmsprop"``.
        loss: defaults to cross-entropy.
        val: evaluated with ``metric`` after every epoch.
        checkpoint: saved (:func:`cnn_redundancy.checkpoint.save_checkpoint`) after every epoch,
            so an interrupted run keeps its last finished epoch.

    Returns:
        ``{"loss": [per epoch], "train_metric": [...], "val_metric": [...]}``.
    """
    if epochs < 0:
        raise ValueError("epochs must be >= 0")
    dev = _device(device, model)
    model.to(dev)
    gen = seed_everything(seed)
    if isinstance(train, DataLoader):
        loader = train
    else:
        loader = DataLoader(train, batch_size=batch_size, shuffle=True, generator=gen)
    if len(loader) == 0:
        raise ValueError("The training set is empty")
    opts = {
        "adam": lambda p: torch.optim.Adam(p, lr=lr, weight_decay=weight_decay),
        "sgd": lambda p: torch.optim.SGD(p, lr=lr, momentum=0.9, weight_decay=weight_decay),
        "rmsprop": lambda p: torch.optim.RMSprop(p, lr=lr, weight_decay=weight_decay),
    }
    if optimizer not in opts:
        raise ValueError(f"optimizer must be one of {', '.join(opts)}")
    opt = opts[optimizer]([p for p in model.parameters() if p.requires_grad])
    loss_fn = loss or nn.CrossEntropyLoss()
    history: dict[str, list[float]] = {"loss": [], "train_metric": [], "val_metric": []}
    bar = progress_bar(epochs * len(loader), f"train {type(model).__name__}", enabled=progress, unit="batch")
    try:
        for _ in range(epochs):
            model.train()
            total, n = 0.0, 0
            m = get_metric(metric)
            for x, y in loader:
                x, y = x.to(dev), y.to(dev)
                opt.zero_grad(set_to_none=True)
                out = forward_checked(model, x)
                batch_loss = loss_fn(out, y)
                batch_loss.backward()
                opt.step()
                total += float(batch_loss.detach()) * len(y)
                n += len(y)
                m.update(out.detach(), y)
                bar.update(1)
                bar.set_postfix(loss=f"{total / n:.4f}")
            history["loss"].append(total / n)
            history["train_metric"].append(m.compute())
            if val is not None:
                history["val_metric"].append(evaluate(model, val, metric, device=dev, progress=False))
            if checkpoint is not None:
                from .checkpoint import save_checkpoint

                save_checkpoint(model, Path(checkpoint), extra={"history": history})
    finally:
        bar.close()
        model.eval()
    return history
