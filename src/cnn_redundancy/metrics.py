"""Metrics: accuracy and Dice (streamed over batches), cosine similarity and normalized cross-correlation."""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = [
    "Metric",
    "Accuracy",
    "Dice",
    "get_metric",
    "METRICS",
    "cosine_per_channel",
    "normalize_responses",
    "ncc_matrix",
]


class Metric:
    """A metric accumulated over batches: ``reset()``, ``update(output, target)``, ``compute()``."""

    name = "metric"
    higher_is_better = True

    def reset(self) -> None:
        raise NotImplementedError

    def update(self, output: torch.Tensor, target: torch.Tensor) -> None:
        raise NotImplementedError

    def compute(self) -> float:
        raise NotImplementedError


class Accuracy(Metric):
    """Top-1 accuracy (fraction in [0, 1]) of class logits ``[N, classes]`` against labels ``[N]``."""

    name = "accuracy"

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.correct = 0
        self.total = 0

    def update(self, output: torch.Tensor, target: torch.Tensor) -> None:
        if output.dim() != 2:
            raise ValueError(f"accuracy expects logits of shape [batch, classes], got {tuple(output.shape)}")
        self.correct += int((output.argmax(1) == target.to(output.device)).sum())
        self.total += int(target.numel())

    def compute(self) -> float:
        if self.total == 0:
            raise ValueError("accuracy of an empty data set")
        return self.correct / self.total


class Dice(Metric):
    """Mean Dice coefficient over foreground classes, accumulated over the whole data set.

    ``output``: logits ``[N, C, H, W]`` (``C >= 2``, argmax decides the class) or ``[N, 1, H, W]``
    (binary, logit > 0 is foreground). ``target``: class indices ``[N, H, W]`` (or ``[N, 1, H, W]``).
    Per class c: ``2 |P_c & T_c| / (|P_c| + |T_c|)`` over all pixels of the data set; classes absent
    from both prediction and target are left out of the mean; class 0 is background unless
    ``include_background``.
    """

    name = "dice"

    def __init__(self, include_background: bool = False) -> None:
        self.include_background = include_background
        self.reset()

    def reset(self) -> None:
        self.inter: torch.Tensor | None = None
        self.sums: torch.Tensor | None = None

    def update(self, output: torch.Tensor, target: torch.Tensor) -> None:
        if output.dim() != 4:
            raise ValueError(f"dice expects logits of shape [batch, classes, H, W], got {tuple(output.shape)}")
        if target.dim() == 4:
            target = target[:, 0]
        target = target.to(output.device).long()
        if output.shape[1] == 1:
            pred = (output[:, 0] > 0).long()
            classes = 2
        else:
            pred = output.argmax(1)
            classes = output.shape[1]
        if target.shape != pred.shape:
            raise ValueError(f"dice: target shape {tuple(target.shape)} does not match prediction {tuple(pred.shape)}")
        p = torch.nn.functional.one_hot(pred, classes).flatten(0, -2).double()
        t = torch.nn.functional.one_hot(target.clamp(0, classes - 1), classes).flatten(0, -2).double()
        inter, sums = (p * t).sum(0), p.sum(0) + t.sum(0)
        self.inter = inter if self.inter is None else self.inter + inter
        self.sums = sums if self.sums is None else self.sums + sums

    def per_class(self) -> list[float]:
        if self.inter is None:
            raise ValueError("dice of an empty data set")
        d = torch.where(self.sums > 0, 2 * self.inter / self.sums.clamp_min(1e-12), torch.nan)
        return d.tolist()

    def compute(self) -> float:
        d = torch.tensor(self.per_class())
        if not self.include_background:
            d = d[1:]
        d = d[~torch.isnan(d)]
        return float(d.mean()) if d.numel() else 1.0


METRICS: dict[str, Callable[[], Metric]] = {"accuracy": Accuracy, "dice": Dice}


def get_metric(metric: str | Metric | Callable[[], Metric]) -> Metric:
    """A fresh metric object from a name (``"accuracy"``, ``"dice"``), a Metric class or an instance."""
    if isinstance(metric, Metric):
        metric.reset()
        return metric
    if isinstance(metric, str):
        if metric not in METRICS:
            raise ValueError(f"Unknown metric {metric!r}; available: {', '.join(METRICS)}")
        return METRICS[metric]()
    if callable(metric):
        m = metric()
        if not isinstance(m, Metric):
            raise TypeError("metric factory must return a cnn_redundancy.metrics.Metric")
        return m
    raise TypeError(f"metric must be a name or a Metric, not {type(metric).__name__}")


def cosine_per_channel(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Cosine similarity between ``a[n, c]`` and ``b[n, c]`` flattened, for every sample and channel.

    ``a``, ``b``: ``[N, C, ...]``. Returns ``[N, C]``. Both norms zero: 1 (nothing changed);
    exactly one zero: 0.
    """
    a = a.flatten(2).double()
    b = b.flatten(2).double()
    dot = (a * b).sum(-1)
    na, nb = a.norm(dim=-1), b.norm(dim=-1)
    za, zb = na <= eps, nb <= eps
    cos = dot / (na * nb).clamp_min(eps * eps)
    cos = torch.where(za & zb, torch.ones_like(cos), torch.where(za | zb, torch.zeros_like(cos), cos))
    return cos.clamp(-1.0, 1.0)


def normalize_responses(x: torch.Tensor, eps: float = 1e-12) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-mean, unit-norm version of each response ``x[k]`` (``[K, ...]``), and a mask of constant ones.

    A constant response (zero norm after removing its mean) is returned as zeros and flagged.
    """
    flat = x.flatten(1).double()
    flat = flat - flat.mean(1, keepdim=True)
    norm = flat.norm(dim=1, keepdim=True)
    const = norm[:, 0] <= eps * max(1.0, float(x.abs().max()) if x.numel() else 1.0)
    flat = torch.where(const[:, None], torch.zeros_like(flat), flat / norm.clamp_min(eps))
    return flat.view(x.shape).to(torch.float64), const


def _center_pad(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    dh, dw = h - x.shape[-2], w - x.shape[-1]
    return torch.nn.functional.pad(x, (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2))


def ncc_matrix(
    a: torch.Tensor,
    b: torch.Tensor | None = None,
    *,
    lag: str = "max",
    max_lag: int | None = None,
    chunk_elements: int = 2**25,
) -> torch.Tensor:
    """Zero-mean normalized cross-correlation between every response of ``a`` and of ``b``.

    Args:
        a: responses ``[Ka, C, Ha, Wa]`` (``C`` stacked maps per response, e.g. one per impulse).
        b: responses ``[Kb, C, Hb, Wb]``; ``None`` means ``a`` (a KxK matrix).
        lag: ``"max"``: maximum over every relative spatial shift (full cross-correlation, the same
            shift for all ``C`` maps); ``"zero"``: the centres aligned, no shift.
        max_lag: with ``lag="max"``, only shifts of at most this many pixels (per axis) from the
            centred alignment.
        chunk_elements: bound on the size of the intermediate correlation tensor.

    Each response is made zero-mean and unit-norm over all its ``C*H*W`` values (constant responses
    become zero and correlate 0 with everything), so zero-lag NCC is Pearson's correlation and
    every value lies in [-1, 1]. Responses of different sizes are compared with zero padding
    around the smaller one (centred alignment is lag zero).

    Returns:
        ``[Ka, Kb]`` float64 tensor.
    """
    if lag not in ("max", "zero"):
        raise ValueError(f"lag must be 'max' or 'zero', not {lag!r}")
    same = b is None
    b = a if b is None else b
    if a.dim() != 4 or b.dim() != 4:
        raise ValueError("responses must be [kernels, maps, H, W]")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"responses have {a.shape[1]} and {b.shape[1]} maps each; they must match")
    an, _ = normalize_responses(a)
    bn = an if same else normalize_responses(b)[0]
    ha, wa, hb, wb = an.shape[-2], an.shape[-1], bn.shape[-2], bn.shape[-1]
    if lag == "zero":
        h, w = max(ha, hb), max(wa, wb)
        return _center_pad(an, h, w).flatten(1) @ _center_pad(bn, h, w).flatten(1).T
    hf, wf = ha + hb - 1, wa + wb - 1
    fa = torch.fft.rfft2(an, s=(hf, wf))
    fb = torch.fft.rfft2(bn, s=(hf, wf)).conj()
    # shift s (rows) of b relative to a is stored at index s mod hf, s in [-(hb-1), ha-1]
    mask = None
    if max_lag is not None:
        sy = torch.arange(hf)
        sy = torch.where(sy > ha - 1, sy - hf, sy)
        sx = torch.arange(wf)
        sx = torch.where(sx > wa - 1, sx - wf, sx)
        cy, cx = (ha - hb) // 2, (wa - wb) // 2  # shift that centres b on a
        mask = ((sy - cy).abs() <= max_lag)[:, None] & ((sx - cx).abs() <= max_lag)[None, :]
    out = torch.empty(a.shape[0], b.shape[0], dtype=torch.float64)
    per_row = max(1, b.shape[0] * hf * wf * a.shape[1])
    step = max(1, chunk_elements // per_row)
    for i in range(0, a.shape[0], step):
        prod = fa[i : i + step, None] * fb[None]  # [s, Kb, C, hf, wf//2+1]
        corr = torch.fft.irfft2(prod.sum(2), s=(hf, wf))  # [s, Kb, hf, wf]
        if mask is not None:
            corr = corr.masked_fill(~mask, -torch.inf)
        out[i : i + step] = corr.flatten(2).amax(-1)
    return out.clamp(-1.0, 1.0)
