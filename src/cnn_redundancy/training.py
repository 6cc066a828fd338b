"""Training and evaluation: seeded, streamed over batches, with progress bars."""

from __future__ import annotations

import math
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .core.batches import (
    BatchLoop,
    as_loader,
    batches,
    check_batch,
    collate,
    expected_input_shape,
    forward_checked,
    resolve_device,
)
from .core.device import autocast, check_amp, placed, wants_channels_last
from .core.hooks import preserved
from .core.metrics import Metric, get_metric, select_output
from .core.progress import progress_bar

__all__ = [
    "seed_everything",
    "fit",
    "evaluate",
    "predict_batches",
    "forward_checked",
    "expected_input_shape",
    "make_optimizer",
    "OPTIMIZERS",
]

OPTIMIZERS = ("adam", "sgd", "rmsprop")
Step = Callable[[nn.Module, Any], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; returns a ``torch.Generator`` seeded the same."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def make_optimizer(name: str, params, lr: float, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """``"adam"``, ``"sgd"`` (momentum 0.9) or ``"rmsprop"``."""
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, not {name!r}")


def predict_batches(model: nn.Module, data, *, batch_size: int = 256, device=None, desc: str = "predict", progress=None):
    """Yield ``(output, target)`` per batch (every batch, also under ``torchrun``), in eval mode, without
    gradients, on ``device``; the model's mode and device restored afterwards."""
    loader = as_loader(data, batch_size)
    dev = resolve_device(device, model)
    with preserved(model), torch.no_grad(), placed(model, dev), \
            progress_bar(len(loader), desc, enabled=progress, unit="batch") as bar:  # fmt: skip
        model.eval()
        for b in batches(loader, dev, model):
            yield forward_checked(model, b.x), b.y
            bar.update(1)


def evaluate(
    model: nn.Module,
    data: Dataset | DataLoader,
    metric: str | Metric = "accuracy",
    *,
    batch_size: int = 256,
    device=None,
    amp: str | None = None,
    progress: bool | None = None,
) -> float:
    """The model's metric (``"accuracy"`` in [0, 1], or ``"dice"``) on the whole data set.

    ``amp``: ``"bf16"`` or ``"fp16"`` runs the forward passes under ``torch.autocast``. Under
    ``torchrun`` the batches are shared among the processes and every process returns the metric
    over all of them.

    Example:
        >>> from cnn_redundancy import get_model, load_dataset
        >>> 0.0 <= evaluate(get_model("lenet5"), load_dataset("mnist5k", "test")) <= 1.0
        True
    """
    m = get_metric(metric)
    check_amp(amp)
    loader = as_loader(data, batch_size)
    dev = resolve_device(device, model)
    loop = BatchLoop(loader, dev, m.merge, model=model, channels_last=wants_channels_last(dev, amp))
    with preserved(model), torch.no_grad(), placed(model, dev, channels_last=loop.channels_last), \
            progress_bar(len(loop), "evaluate", enabled=progress, unit="batch") as bar:  # fmt: skip
        model.eval()
        for b in loop:
            with autocast(dev, amp):
                out = forward_checked(model, b.x)
            loop.add(m.batch_state(out, b.y))
            bar.update(1)
    return m.compute()


class EarlyStopping:
    """Tracks the best validation metric (higher is better) and a copy of the weights that reached it."""

    def __init__(self, patience: int) -> None:
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ValueError(f"patience must be an integer >= 1, not {patience!r}")
        self.patience, self.best, self.best_epoch, self.epoch, self.state = patience, -math.inf, -1, -1, None

    def step(self, model: nn.Module, value: float) -> bool:
        """Record one epoch's metric; ``True`` when ``patience`` epochs have passed without improvement."""
        self.epoch += 1
        if value > self.best:
            self.best, self.best_epoch = value, self.epoch
            self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return self.epoch - self.best_epoch >= self.patience

    def restore(self, model: nn.Module, history: dict[str, Any]) -> bool:
        """Load the best epoch's weights back into ``model`` and note the epoch in ``history``;
        ``True`` when that changed the weights (the best epoch was not the last)."""
        history["best_epoch"] = self.best_epoch
        history["stopped"] = self.epoch - self.best_epoch >= self.patience
        if self.state is None or self.best_epoch == self.epoch:
            return False
        model.load_state_dict(self.state)
        return True


def _save(model: nn.Module, checkpoint: str | os.PathLike, history: dict[str, Any]) -> None:
    from .checkpoint import save_checkpoint

    save_checkpoint(model, Path(checkpoint), extra={"history": history})


def _default_step(loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], output: str | int | None) -> Step:
    def step(model: nn.Module, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x, y = batch[0], batch[1]
        check_batch(model, x)
        out = select_output(forward_checked(model, x), output, "the loss")
        return loss_fn(out, y), out, y

    return step


def _epoch(model: nn.Module, loader: DataLoader, optimizers: tuple, step: Step, m: Metric,
           dev: torch.device, bar) -> tuple[float, float]:  # fmt: skip
    """One pass over the training data: the mean loss and the training metric. ``optimizers``: the
    optimizer and the learning-rate schedule (or ``None``), stepped every batch. The loss is summed
    on the device (float64, as Python floats would), read back only for a shown progress bar."""
    opt, sched = optimizers
    model.train()
    total = torch.zeros((), dtype=torch.float64, device=dev)
    n = 0
    for k, raw in enumerate(loader):
        batch = [t.to(dev) for t in raw] if isinstance(raw, list | tuple) else [raw.to(dev)]
        opt.zero_grad(set_to_none=True)
        batch_loss, out, y = step(model, batch)
        batch_loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
        total += batch_loss.detach().double() * len(y)
        n += len(y)
        m.update(out.detach(), y)
        bar.update(1)
        if not bar.disable and k % 10 == 0:
            bar.set_postfix(loss=f"{float(total) / n:.4f}")
    return float(total) / n, m.compute()


def fit(
    model: nn.Module,
    train: Dataset | DataLoader,
    *,
    epochs: int = 5,
    lr: float = 1e-3,
    batch_size: int = 64,
    optimizer: str = "adam",
    weight_decay: float = 0.0,
    schedule: str | None = None,
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    step: Step | None = None,
    val: Dataset | DataLoader | None = None,
    metric: str = "accuracy",
    patience: int | None = None,
    seed: int = 0,
    device=None,
    checkpoint: str | os.PathLike | None = None,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Train ``model`` in place (seeded) and return its history.

    The training runs on ``device`` (default: where the model is); the model is left on the device
    it was on, holding the trained weights (its own parameter tensors, updated).

    Args:
        optimizer: ``"adam"`` (default), ``"sgd"`` (momentum 0.9) or ``"rmsprop"``.
        schedule: ``None`` (a constant learning rate) or ``"cosine"`` (from ``lr`` to 0 over the run,
            stepped every batch: the short fine-tuning schedule of ``compress``).
        loss: defaults to cross-entropy.
        step: ``step(model, batch) -> (loss, output, target)`` for models trained otherwise (default:
            ``loss(model(x), y)``); the output and target feed the training metric.
        val: evaluated with ``metric`` after every epoch.
        patience: early stopping (needs ``val``): stop after this many epochs without a better
            validation metric, and restore the weights of the best epoch; ``epochs`` is then the most
            epochs run. The history gets ``best_epoch`` (0-based) and ``stopped`` (whether it stopped early).
        checkpoint: saved (:func:`cnn_redundancy.checkpoint.save_checkpoint`) after every epoch,
            so an interrupted run keeps its last finished epoch.

    Returns:
        ``{"loss": [per epoch], "train_metric": [...], "val_metric": [...]}``.
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"epochs must be an integer >= 0, not {epochs!r}")
    dev = resolve_device(device, model)
    gen = seed_everything(seed)
    loader = train if isinstance(train, DataLoader) else DataLoader(train, batch_size=batch_size, shuffle=True, generator=gen, collate_fn=collate)
    if len(loader) == 0:
        raise ValueError("The training set is empty")
    if schedule not in (None, "cosine"):
        raise ValueError(f"schedule must be None or 'cosine', not {schedule!r}")
    stopper = EarlyStopping(patience) if patience is not None else None
    if stopper is not None and val is None:
        raise ValueError("patience (early stopping) needs validation data: pass val=")
    step = step or _default_step(loss or nn.CrossEntropyLoss(), get_metric(metric).output)
    history: dict[str, list[float]] = {"loss": [], "train_metric": [], "val_metric": []}
    try:
        with placed(model, dev, keep=True), \
                progress_bar(epochs * len(loader), f"train {type(model).__name__}", enabled=progress, unit="batch") as bar:  # fmt: skip
            opt = make_optimizer(optimizer, [p for p in model.parameters() if p.requires_grad], lr, weight_decay)
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, epochs * len(loader))) if schedule else None
            for _ in range(epochs):
                mean_loss, train_metric = _epoch(model, loader, (opt, sched), step, get_metric(metric), dev, bar)
                history["loss"].append(mean_loss)
                history["train_metric"].append(train_metric)
                if val is not None:
                    history["val_metric"].append(evaluate(model, val, metric, device=dev, progress=False))
                if checkpoint is not None:
                    _save(model, checkpoint, history)
                if stopper is not None and stopper.step(model, history["val_metric"][-1]):
                    break
            if stopper is not None and stopper.restore(model, history) and checkpoint is not None:
                _save(model, checkpoint, history)  # the checkpoint holds the weights returned
    finally:
        model.eval()
    return history
