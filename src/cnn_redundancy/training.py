"""Training and evaluation: seeded, streamed over batches, with progress bars."""

from __future__ import annotations

import dataclasses
import math
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

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
from .core.device import autocast, check_amp, full_precision, placed, wants_channels_last
from .core.hooks import preserved
from .core.metrics import Metric, get_metric, select_output
from .core.progress import progress_bar

__all__ = [
    "seed_everything",
    "fit",
    "recompute_bn_stats",
    "InputShift",
    "input_shift",
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


def batch_norms(model: nn.Module) -> list[nn.Module]:
    """The model's BatchNorm layers that keep running statistics."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


_Moments = tuple[int, torch.Tensor, torch.Tensor]  # (count, mean, sum of squared deviations) per channel


def _channel_moments(x: torch.Tensor) -> _Moments:
    """Per-channel count, mean and sum of squared deviations of ``x`` ``[B, C, ...]`` (float64 results)."""
    x = full_precision(x.detach())  # float32 at least: half-precision squares overflow
    dims, shape = [0, *range(2, x.dim())], [1, -1] + [1] * (x.dim() - 2)
    n = x.numel() // x.shape[1]
    mean = x.sum(dims, dtype=torch.float64) / n  # sums in float64, no float64 copy of the activation
    c = mean.to(x.dtype)
    # squared deviations from c (the mean in x's precision), then exactly from the mean
    return n, mean, ((x - c.view(shape)) ** 2).sum(dims, dtype=torch.float64) - n * (mean - c.double()) ** 2


def _merged(a: _Moments, b: _Moments) -> _Moments:
    """Chan et al.'s merge of two :data:`_Moments` into those of both."""
    (na, ma, sa), (nb, mb, sb) = a, b
    delta = mb - ma
    return na + nb, ma + delta * (nb / (na + nb)), sa + sb + delta**2 * (na * nb / (na + nb))


def recompute_bn_stats(model: nn.Module, data: Dataset | DataLoader, *, batch_size: int = 256, device=None) -> int:
    """Set every BatchNorm layer's running mean and variance to its input's statistics over ``data``
    with the current weights; returns how many layers were set (0 without BatchNorm).

    The running averages kept during training mix statistics of earlier weights; after a short
    training (few batches) the model then computes something else in eval mode than it learned
    in train mode, and can score at chance. One pass over ``data`` (no gradients, dropout off, each
    BatchNorm normalizing by its batch as in training) measures every layer's per-channel mean and
    variance of its input over all of it (float64, merged batch by batch) and stores them (the
    variance unbiased, as PyTorch's running variance is). The first BatchNorm's statistics are then
    exactly its input's over ``data``, whatever the batch size; a later one sees its input as in
    training, earlier layers normalized by the batch, so its statistics move slightly with the
    batch size (as with ``torch.optim.swa_utils.update_bn``). No random number of the caller's is
    drawn. The model keeps its weights, flags and hooks; only those buffers change.
    """
    norms = batch_norms(model)
    if not norms:
        return 0
    stats: dict[nn.Module, _Moments] = {}

    def measure(mod: nn.Module, args: tuple) -> None:
        got = _channel_moments(args[0])
        stats[mod] = _merged(stats[mod], got) if mod in stats else got

    dev = resolve_device(device, model)
    counts = [m.num_batches_tracked.clone() for m in norms]
    cuda = [dev.index if dev.index is not None else torch.cuda.current_device()] if dev.type == "cuda" else []
    # the pass draws no random number of the caller's: a DataLoader draws its base seed from the global generator
    with torch.random.fork_rng(devices=cuda), preserved(model), placed(model, dev), torch.no_grad():
        model.eval()
        for m in norms:
            m.train()
            m.register_forward_pre_hook(measure)
        for b in batches(as_loader(data, batch_size), dev, model):
            forward_checked(model, b.x)
    done = 0
    with torch.no_grad():
        for m, count in zip(norms, counts):
            m.num_batches_tracked.copy_(count)
            if m in stats and stats[m][0] > 1:
                n, mean, m2 = stats[m]
                m.running_mean.copy_(mean.to(m.running_mean))
                m.running_var.copy_((m2 / (n - 1)).to(m.running_var))
                done += 1
    return done


class _Seen(Exception):
    """Raised by the first BatchNorm's hook once its input is measured: the rest of the pass is not needed."""


@dataclasses.dataclass(frozen=True)
class InputShift:
    """How the data reaches the model's first BatchNorm, against the running statistics it holds.

    Attributes:
        layer: the first BatchNorm layer the inputs reach. samples: images measured.
        mean_shift: the median over channels of ``|input mean - running mean| / running std``.
        variance_ratio: the median over channels of ``input variance / running variance``.
    """

    layer: str
    samples: int
    mean_shift: float
    variance_ratio: float

    MEAN_SHIFT_ABOVE: ClassVar[float] = 0.5
    VARIANCE_RATIO_OUTSIDE: ClassVar[tuple[float, float]] = (0.4, 2.5)

    @property
    def far(self) -> bool:
        """Whether the inputs are far from what the layer saw in training (the model then computes
        something else than it learned; input scaling or stale running statistics are the usual causes)."""
        lo, hi = self.VARIANCE_RATIO_OUTSIDE
        return self.mean_shift > self.MEAN_SHIFT_ABOVE or not lo <= self.variance_ratio <= hi

    def describe(self) -> str:
        return (f"the images reach '{self.layer}' (the model's first BatchNorm) far from its training statistics "
                f"(channel means {self.mean_shift:.2g} standard deviations off, variances {self.variance_ratio:.2g}x; "
                f"medians over channels, {self.samples} images)")


def input_shift(model: nn.Module, data: Dataset | DataLoader, *, samples: int = 128, batch_size: int = 32,
                device=None) -> InputShift | None:
    """Compare the input of the model's first BatchNorm over up to ``samples`` evenly spaced images of
    ``data`` with that layer's running mean and variance (see :class:`InputShift`; ``.far`` says
    whether they disagree).

    A model trained on images scaled otherwise (``[0, 1]`` against ``(x - 0.5) / 0.5``, or another
    mean and std) gives such a shift, and scores near chance while nothing fails; so do running
    statistics that are stale after a short training (:func:`recompute_bn_stats`). The pass stops
    at that layer. ``None`` when the model has no BatchNorm with running statistics, or holds the
    initial ones (mean 0, variance 1: untrained). The model is left as found.

    Example:
        >>> from cnn_redundancy.testing import random_images
        >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4))
        >>> _ = recompute_bn_stats(net, random_images(32))
        >>> input_shift(net, random_images(32)).far
        False
    """
    norms = batch_norms(model)
    trained = [m for m in norms if not (bool((m.running_mean == 0).all()) and bool((m.running_var == 1).all()))]
    if not trained:
        return None
    dataset = data.dataset if isinstance(data, DataLoader) else data
    n = len(dataset) if hasattr(dataset, "__len__") else 0  # a stream without a length: not sampled
    if n == 0:
        return None
    picked = torch.linspace(0, n - 1, min(n, samples)).round().long().unique().tolist()
    seen: dict[str, Any] = {}  # the first BatchNorm reached and the moments of its input

    def measure(mod: nn.Module, args: tuple) -> None:
        if seen.setdefault("layer", mod) is mod:
            got = _channel_moments(args[0])
            seen["moments"] = _merged(seen["moments"], got) if "moments" in seen else got
        raise _Seen

    dev = resolve_device(device, model)
    loader = as_loader(torch.utils.data.Subset(dataset, picked), batch_size)
    with preserved(model), placed(model, dev), torch.no_grad():
        model.eval()
        for m in norms:
            m.register_forward_pre_hook(measure)
        for b in batches(loader, dev, model):
            try:
                forward_checked(model, b.x)
            except _Seen:
                pass
    bn = seen.get("layer")
    if bn is None or bn not in trained:
        return None
    count, mean, m2 = seen["moments"]
    run_mean, run_var = bn.running_mean.double().cpu(), bn.running_var.double().cpu()
    shift = ((mean.cpu() - run_mean).abs() / (run_var + bn.eps).sqrt()).median()
    ratio = ((m2.cpu() / count + bn.eps) / (run_var + bn.eps)).median()
    name = next(n for n, m in model.named_modules() if m is bn)
    return InputShift(name, len(picked), float(shift), float(ratio))


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
    recompute_bn: bool = False,
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
        recompute_bn: after every epoch, before it is evaluated and saved, set the BatchNorm running
            statistics to those of the training data with that epoch's weights
            (:func:`recompute_bn_stats`, a plain ``model(x)`` pass): the weights and their training
            are unchanged, and eval mode computes what train mode learned even after few batches.

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
                if recompute_bn:
                    recompute_bn_stats(model, loader.dataset, batch_size=loader.batch_size or batch_size, device=dev)
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
