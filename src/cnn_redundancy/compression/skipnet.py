"""A network that really skips conv layers per image (the layer-skipping paper's CNN 3).

:class:`SkipNetwork` wraps a model with equal-size conv layers (``equal_width_cnn``). Image ``i``
with exit ``k`` runs conv layers ``0..k`` and then the dense layer of exit ``k``; the conv layers
after ``k`` are *not called* for it. A mini-batch is sorted by exit and processed stage by stage on the
shrinking, contiguous set of images that still need the next layer (images are batched by exit), so skipped layers cost
nothing at inference and receive no gradient from those images in training.

Also here: routed and joint (every exit) training, the confidence-based early exit used as a
baseline, and the router (CNN 2) that picks each image's exit from strongest-activation labels
(:func:`cnn_redundancy.analyses.activation_labels.strongest_activation_labels`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..analyses.activation_labels import LabelResult
from ..core.batches import as_loader, resolve_device, sample_shape
from ..core.cost import count_macs
from ..core.hooks import capture, preserved
from ..core.results import Result, make_meta
from ..training import fit, predict_batches

__all__ = [
    "SkipNetwork",
    "check_same_spatial_size",
    "train_skip_network",
    "ExitDataset",
    "stack_inputs",
    "RelabelledDataset",
    "RouterResult",
    "train_router",
    "predict_exits",
]


def check_same_spatial_size(model: nn.Module, example_input: torch.Tensor, layers: Sequence[str] | None = None) -> list[str]:
    """The model's conv layers, after checking that they all output the input's height and width.

    Raises:
        ValueError: a conv layer changes the spatial size (then later layers cannot be skipped:
            the next layer would not accept the earlier output); the message lists every size.
    """
    from ..core.layers import conv_layers

    names = list(layers) if layers is not None else conv_layers(model)
    if not names:
        raise ValueError(f"{type(model).__name__} has no Conv2d layers to skip")
    with preserved(model), torch.no_grad(), capture(model, names, fn=lambda n, t: tuple(t.shape[-2:])) as sizes:
        model.eval()
        model(example_input[:1])
    want = tuple(example_input.shape[-2:])
    bad = [n for n in names if sizes.get(n) != want]
    if bad:
        listed = ", ".join(f"{n} -> {'x'.join(map(str, sizes[n])) if n in sizes else 'not called'}" for n in names)
        raise ValueError(
            f"Layer skipping needs every conv layer to keep the input's height and width "
            f"({'x'.join(map(str, want))}); {type(model).__name__} changes it ({listed}). "
            "Use same padding, stride 1 and no pooling between conv layers (e.g. model 'equal_width_cnn')."
        )
    return names


class SkipNetwork(nn.Module):
    """Run each image to its own exit, skipping (not computing) the conv layers after it.

    Args:
        model: a network following the skip protocol of
            :class:`~cnn_redundancy.models.equal_width.EqualWidthCNN` (``depth``, ``stage(i)``,
            ``exit_head(k)``). Its weights are shared, not copied: ``skip.base`` is the model,
            saved with :func:`cnn_redundancy.save_checkpoint` like any zoo model.
        example_input: used to check that the conv layers keep the spatial size (default: a zero
            image of ``model.input_shape``).

    ``forward(x, exits)``: ``exits`` is one int per image (``None``: the last exit, i.e. the full
    network, giving exactly ``model(x)``).

    Example:
        >>> from cnn_redundancy.models import get_model
        >>> skip = SkipNetwork(get_model("equal_width_cnn", channels=(4, 4, 4)))
        >>> skip(torch.zeros(3, 1, 28, 28), torch.tensor([0, 1, 2])).shape
        torch.Size([3, 10])
    """

    def __init__(self, model: nn.Module, *, example_input: torch.Tensor | None = None) -> None:
        super().__init__()
        if example_input is None:
            shape = getattr(model, "input_shape", None)
            if shape is None:
                raise ValueError("pass example_input= (the model has no input_shape attribute)")
            example_input = torch.zeros(1, *shape)
        check_same_spatial_size(model, example_input)
        missing = [a for a in ("depth", "stage", "exit_head") if not hasattr(model, a)]
        if missing:
            raise TypeError(
                f"{type(model).__name__} keeps its spatial size but does not say how to exit early "
                f"(missing {', '.join(missing)}); build it with get_model('equal_width_cnn', ...) "
                "or give it depth, stage(i) and exit_head(k) like EqualWidthCNN"
            )
        self.base = model
        self.depth = int(model.depth)
        self.input_shape = tuple(example_input.shape[1:])
        self._stages = [model.stage(i) for i in range(self.depth)]
        self._heads = [model.exit_head(k) for k in range(self.depth)]
        self.layer_names = [f"conv{i + 1}" for i in range(self.depth)] if hasattr(model, "conv1") else [
            str(i) for i in range(self.depth)
        ]
        self._exit_macs: list[int] | None = None

    def _check_exits(self, x: torch.Tensor, exits) -> torch.Tensor:
        if exits is None:
            return torch.full((len(x),), self.depth - 1, dtype=torch.long, device=x.device)
        exits = torch.as_tensor(exits, device=x.device).long().reshape(-1)
        if exits.numel() == 1 and len(x) != 1:
            exits = exits.expand(len(x))
        if len(exits) != len(x):
            raise ValueError(f"exits must give one exit per image: {len(exits)} exits for {len(x)} images")
        if len(exits) and (int(exits.min()) < 0 or int(exits.max()) >= self.depth):
            raise ValueError(f"exits must be in 0..{self.depth - 1}, got values {sorted(set(exits.tolist()))}")
        return exits

    def forward(self, x: torch.Tensor, exits: torch.Tensor | Sequence[int] | int | None = None) -> torch.Tensor:
        """Logits ``[B, classes]``; image ``i`` runs conv layers ``0..exits[i]`` only."""
        exits = self._check_exits(x, exits)
        if len(exits) and bool((exits == exits[0]).all()):  # one exit for the whole batch
            h = x
            for k in range(int(exits[0]) + 1):
                h = self._stages[k](h)
            return self._heads[int(exits[0])](h)
        # Sort by exit, deepest first: after stage k the images leaving at k are the last rows, and the
        # images going on are a contiguous prefix (a view, no copy).
        order = torch.argsort(exits, descending=True, stable=True)
        counts = torch.bincount(exits, minlength=self.depth).tolist()
        h = x[order]
        remaining, parts = len(x), []
        for k in range(self.depth):
            h = self._stages[k](h)
            if counts[k]:
                parts.append(self._heads[k](h[remaining - counts[k] : remaining]))
                remaining -= counts[k]
            if remaining == 0:
                break
            h = h[:remaining]
        out = torch.cat(parts[::-1])
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(len(order), device=x.device)
        return out[inverse]

    def all_exits(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Logits of every exit for every image (all conv layers run): ``[exit][B, classes]``."""
        outs, h = [], x
        for k in range(self.depth):
            h = self._stages[k](h)
            outs.append(self._heads[k](h))
        return outs

    def early_exit(self, x: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Confidence-based early exit: stop an image at the first exit whose softmax maximum is ``>= threshold``.

        Computed progressively: only images still undecided run the next conv layer.

        Returns:
            ``(logits [B, classes], exits [B])``.
        """
        logits = torch.empty(len(x), 0, device=x.device)
        exits = torch.full((len(x),), self.depth - 1, dtype=torch.long, device=x.device)
        idx = torch.arange(len(x), device=x.device)
        h = x
        for k in range(self.depth):
            h = self._stages[k](h)
            out = self._heads[k](h)
            if k == 0:
                logits = torch.empty(len(x), out.shape[1], device=x.device, dtype=out.dtype)
            if k == self.depth - 1:
                logits[idx] = out
                break
            sure = out.softmax(1).amax(1) >= threshold
            logits[idx[sure]] = out[sure]
            exits[idx[sure]] = k
            h, idx = h[~sure], idx[~sure]
            if not len(idx):
                break
        return logits, exits

    def exit_macs(self) -> list[int]:
        """MACs per image of exit ``k``: conv layers ``0..k`` plus the dense layer of exit ``k``."""
        if self._exit_macs is None:
            x = torch.zeros(1, *self.input_shape, device=next(self.base.parameters()).device)
            macs, per_stage, per_head = [], [], []
            with torch.no_grad():
                for k in range(self.depth):
                    per_stage.append(sum(count_macs(self._stages[k], x).values()))
                    x = self._stages[k](x)
                    per_head.append(sum(count_macs(self._heads[k], x).values()))
            for k in range(self.depth):
                macs.append(sum(per_stage[: k + 1]) + per_head[k])
            self._exit_macs = macs
            self._head_macs = per_head
        return list(self._exit_macs)

    def head_macs(self) -> list[int]:
        """MACs per image of each exit's dense layer."""
        self.exit_macs()
        return list(self._head_macs)


class ExitDataset(Dataset):
    """``(image, class label, exit)`` triples: ``data[indices[i]]`` with exit ``exits[i]``."""

    def __init__(self, data: Dataset, exits: Sequence[int] | torch.Tensor, indices: Sequence[int] | None = None) -> None:
        self.data = data
        self.indices = list(range(len(data))) if indices is None else [int(i) for i in indices]  # type: ignore[arg-type]
        self.exits = torch.as_tensor(exits).long().reshape(-1)
        if len(self.exits) != len(self.indices):
            raise ValueError(f"{len(self.exits)} exits for {len(self.indices)} images")

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i):
        x, y = self.data[self.indices[i]]
        return x, y, self.exits[i]


def train_skip_network(
    skip: SkipNetwork,
    data: ExitDataset,
    *,
    mode: str = "routed",
    epochs: int = 20,
    lr: float = 1e-3,
    batch_size: int = 32,
    optimizer: str = "rmsprop",
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Train a skip network in place with cross-entropy (:func:`cnn_redundancy.fit` with its own step).

    Args:
        mode: ``"routed"`` (the paper's: each image runs to its own exit, so skipped layers get no
            gradient from it) or ``"all_exits"`` (every image trains every exit, the loss averaged
            over exits: the usual joint training of an early-exit network).
        optimizer: ``"rmsprop"`` (the paper's), ``"adam"`` or ``"sgd"``.

    Returns:
        ``{"loss": [per epoch], "train_metric": [per epoch accuracy], "val_metric": []}``.
    """
    if mode not in ("routed", "all_exits"):
        raise ValueError(f"mode must be 'routed' or 'all_exits', not {mode!r}")
    loss_fn = nn.CrossEntropyLoss()

    def routed(net: SkipNetwork, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x, y, e = batch
        out = net(x, e)
        return loss_fn(out, y), out, y

    def all_exits(net: SkipNetwork, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x, y, _ = batch
        outs = net.all_exits(x)
        return sum(loss_fn(o, y) for o in outs) / len(outs), outs[-1], y

    return fit(skip, data, epochs=epochs, lr=lr, batch_size=batch_size, optimizer=optimizer, seed=seed,
               step=routed if mode == "routed" else all_exits, device=device, progress=progress)  # fmt: skip


def stack_inputs(data: Dataset | DataLoader, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """All inputs and labels of ``data`` as two tensors (for latency measurement on small test sets)."""
    sample_shape(data)
    xs, ys = [], []
    for x, y in as_loader(data, batch_size):
        xs.append(x)
        ys.append(y)
    return torch.cat(xs), torch.cat(ys)


class RelabelledDataset(Dataset):
    """``(data[indices[i]][0], targets[i])``: a subset of ``data`` with new labels (e.g. layer labels)."""

    def __init__(self, data: Dataset, indices: Sequence[int], targets: Sequence[int]) -> None:
        if len(indices) != len(targets):
            raise ValueError(f"{len(indices)} indices but {len(targets)} targets")
        self.data, self.indices = data, [int(i) for i in indices]
        self.targets = torch.as_tensor(list(targets), dtype=torch.long)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i):
        return self.data[self.indices[i]][0], self.targets[i]


def _label_pairs(labels: LabelResult | tuple[Sequence[int], Sequence[int]]) -> tuple[list[int], list[int], int]:
    if isinstance(labels, LabelResult):
        return list(labels.indices), list(labels.labels), len(labels.layers)
    idx, lab = labels
    lab = [int(v) for v in lab]
    return [int(i) for i in idx], lab, max(lab) + 1 if lab else 0


@dataclasses.dataclass(eq=False)
class RouterResult(Result):
    """A trained router (CNN 2): its training history and the exits it was trained on.

    Attributes:
        n_exits: number of exits. n_images: labelled images it was trained on.
        history: ``fit``'s history. model: the router (not written to JSON; save it with ``save_checkpoint``).
    """

    n_exits: int = 0
    n_images: int = 0
    history: dict[str, Any] = dataclasses.field(default_factory=dict)
    model: Any = dataclasses.field(default=None, metadata={"skip": True}, repr=False, compare=False)

    def plot(self):
        """Training loss and accuracy per epoch."""
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 3.2))
        epochs = range(1, len(self.history.get("loss", [])) + 1)
        ax.plot(epochs, self.history.get("loss", []), "o-", label="loss")
        ax.plot(epochs, self.history.get("train_metric", []), "s-", label="training accuracy")
        ax.set_xlabel("epoch")
        ax.set_title(f"router: {self.n_images} labelled images, {self.n_exits} exits")
        ax.legend()
        fig.tight_layout()
        return fig


def train_router(
    data: Dataset,
    labels: LabelResult | tuple[Sequence[int], Sequence[int]],
    *,
    model: nn.Module | None = None,
    n_exits: int | None = None,
    epochs: int = 20,
    lr: float = 1e-3,
    batch_size: int = 32,
    optimizer: str = "rmsprop",
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool | None = None,
) -> RouterResult:
    """Train CNN 2 to predict each labelled image's layer label (its exit).

    Args:
        data: the data set the labels index into.
        labels: a :class:`LabelResult` or ``(indices, labels)``.
        model: the router; default ``router_cnn`` sized for the data and the number of exits, made on
            ``device`` (a router passed in is trained on ``device`` and left where it was).
        n_exits: number of exits (default: the number of layers in ``labels``).

    Returns:
        A :class:`RouterResult`; ``result.model`` is the router, in eval mode.
    """
    from ..models import get_model

    idx, lab, n = _label_pairs(labels)
    if not idx:
        raise ValueError("No labelled images to train the router on")
    n_exits = n_exits or n
    if model is None:
        c, h, w = sample_shape(data)
        if h != w:
            raise ValueError(f"router_cnn needs square images, got {h}x{w}; pass model=")
        torch.manual_seed(seed)
        model = get_model("router_cnn", in_channels=c, num_classes=n_exits, input_size=h).to(resolve_device(device))
    hist = fit(model, RelabelledDataset(data, idx, lab), epochs=epochs, lr=lr, batch_size=batch_size,
               optimizer=optimizer, seed=seed, device=device, progress=progress)
    params = {"n_exits": n_exits, "epochs": epochs, "lr": lr, "batch_size": batch_size, "optimizer": optimizer}
    return RouterResult(meta=make_meta("train_router", params, seed), n_exits=n_exits, n_images=len(idx),
                        history=hist, model=model.eval())


def predict_exits(router: nn.Module, data: Dataset, *, batch_size: int = 256, device=None) -> torch.Tensor:
    """The router's exit (argmax) for every image of ``data``, ``[N]`` long (on the CPU)."""
    outs = predict_batches(router, data, batch_size=batch_size, device=device, progress=False)
    return torch.cat([out.argmax(1).cpu() for out, _ in outs])
