"""Metrics: accuracy and Dice (streamed over batches), cosine similarity and normalized cross-correlation."""

from __future__ import annotations

from collections.abc import Callable

import torch

from .device import full_precision

__all__ = [
    "Metric",
    "Accuracy",
    "Dice",
    "get_metric",
    "METRICS",
    "cosine_per_channel",
    "squared_norms",
    "normalize_responses",
    "ncc_matrix",
]


class Metric:
    """A metric accumulated over batches: ``reset()``, ``update(output, target)``, ``compute()``.

    A metric's state is additive: ``batch_state(output, target)`` is what one batch adds (a dict
    of tensors, left on the device: no host synchronisation), ``merge(state)`` adds it, and
    ``update`` is the two in turn. Sweeps and ``evaluate`` measure batches apart (on other processes,
    too) and merge their states, so a metric of your own implements ``batch_state`` and ``merge``.
    """

    name = "metric"
    higher_is_better = True

    def reset(self) -> None:
        raise NotImplementedError

    def batch_state(self, output: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """What one batch adds to the state."""
        raise NotImplementedError(f"{type(self).__name__} must implement batch_state() and merge() to be measured "
                                  "batch by batch")  # fmt: skip

    def merge(self, state: dict[str, torch.Tensor]) -> None:
        """Add a batch's state (from :meth:`batch_state`, possibly computed elsewhere)."""
        raise NotImplementedError(f"{type(self).__name__} must implement batch_state() and merge()")

    def update(self, output: torch.Tensor, target: torch.Tensor) -> None:
        self.merge(self.batch_state(output, target))

    def compute(self) -> float:
        raise NotImplementedError


class Accuracy(Metric):
    """Top-1 accuracy (fraction in [0, 1]) of class logits ``[N, classes]`` against labels ``[N]``.

    The count of correct answers stays a tensor on the model's device until :meth:`compute`.
    """

    name = "accuracy"

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.correct: int | torch.Tensor = 0
        self.total = 0

    def batch_state(self, output: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        if output.dim() != 2:
            raise ValueError(f"accuracy expects logits of shape [batch, classes], got {tuple(output.shape)}")
        # the total is known on the host: only the count of correct answers lives on the device
        return {"correct": (output.argmax(1) == target.to(output.device)).sum(), "total": int(target.numel())}

    def merge(self, state: dict[str, torch.Tensor]) -> None:
        self.correct = self.correct + state["correct"]
        self.total = self.total + state["total"]

    def compute(self) -> float:
        total = int(self.total)
        if total == 0:
            raise ValueError("accuracy of an empty data set")
        return int(self.correct) / total


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

    def batch_state(self, output: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
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
        return {"inter": (p * t).sum(0), "sums": p.sum(0) + t.sum(0)}

    def merge(self, state: dict[str, torch.Tensor]) -> None:
        inter, sums = state["inter"], state["sums"]
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


def squared_norms(a: torch.Tensor) -> torch.Tensor:
    """``[N, C]`` float64 squared norm of each map of ``a`` (``[N, C, ...]``), summed in ``a``'s precision
    (float32 at least): the clean side of :func:`cosine_per_channel`, computed once and reused."""
    a = full_precision(a).flatten(2)
    return (a * a).sum(-1).double()


def cosine_per_channel(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-12, *, a_sq: torch.Tensor | None = None) -> torch.Tensor:
    """Cosine similarity between ``a[n, c]`` and ``b[n, c]`` flattened, for every sample and channel.

    ``a``, ``b``: ``[N, C, ...]``. Returns ``[N, C]`` (float64; computed in the inputs' precision,
    float32 at least). ``a_sq``: :func:`squared_norms` of ``a`` where the caller has it (a sweep
    compares one clean activation with many perturbed ones). Both norms zero: 1 (nothing
    changed); exactly one zero: 0.
    """
    a = full_precision(a).flatten(2)
    b = full_precision(b).flatten(2)
    # the three sums are computed alike, so identical maps give exactly 1 also in float32
    dot = (a * b).sum(-1).double()
    aa = (a * a).sum(-1).double() if a_sq is None else a_sq
    bb = (b * b).sum(-1).double()
    za, zb = aa <= eps * eps, bb <= eps * eps
    cos = dot / (aa * bb).sqrt().clamp_min(eps * eps)
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


def _overlap(n_a: int, n_b: int, n_full: int) -> torch.Tensor:
    """Overlap length per circular shift index of a full 1-D cross-correlation."""
    idx = torch.arange(n_full)
    shift = torch.where(idx > n_a - 1, idx - n_full, idx)
    return torch.minimum(torch.full_like(shift, n_b), n_a - shift) - torch.clamp(-shift, min=0)


def ncc_matrix(
    a: torch.Tensor,
    b: torch.Tensor | None = None,
    *,
    lag: str = "max",
    max_lag: int | None = None,
    min_overlap: float = 0.5,
    chunk_elements: int = 2**24,
) -> torch.Tensor:
    """Zero-mean normalized cross-correlation between every response of ``a`` and of ``b``.

    At a relative shift of the two responses, the NCC is Pearson's correlation of the values in
    their overlapping window (the mean of each map over the window removed, divided by the
    product of their norms there), so a shifted or cropped copy of a pattern scores exactly 1.

    Args:
        a: responses ``[Ka, C, Ha, Wa]`` (``C`` stacked maps per response, e.g. one per impulse;
            the same shift is applied to all ``C``).
        b: responses ``[Kb, C, Hb, Wb]``; ``None`` means ``a`` (a KxK matrix).
        lag: ``"max"``: the maximum over spatial shifts; ``"zero"``: the centres aligned, no shift.
        max_lag: with ``lag="max"``, only shifts of at most this many pixels (per axis) from the
            centred alignment.
        min_overlap: with ``lag="max"``, shifts whose overlap covers less than this fraction of the
            smaller map's height or width are ignored (a few overlapping corner pixels would
            otherwise correlate perfectly by chance).
        chunk_elements: bound on the size of the intermediate correlation tensors.

    A window where either map is constant has no defined correlation and counts as 0; a constant
    response therefore correlates 0 with everything. Values lie in [-1, 1].

    Returns:
        ``[Ka, Kb]`` float64 tensor.
    """
    if lag not in ("max", "zero"):
        raise ValueError(f"lag must be 'max' or 'zero', not {lag!r}")
    if not 0.0 < min_overlap <= 1.0:
        raise ValueError("min_overlap must be in (0, 1]")
    b = a if b is None else b
    if a.dim() != 4 or b.dim() != 4:
        raise ValueError("responses must be [kernels, maps, H, W]")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"responses have {a.shape[1]} and {b.shape[1]} maps each; they must match")
    a, b = a.double(), b.double()
    c, ha, wa, hb, wb = a.shape[1], a.shape[2], a.shape[3], b.shape[2], b.shape[3]
    hf, wf = ha + hb - 1, wa + wb - 1

    def fft(x):
        return torch.fft.rfft2(x, s=(hf, wf))

    def corr(fx, fy):  # sum over maps of the cross-correlation, entry s = sum_p x(p + s) y(p)
        return torch.fft.irfft2((fx * fy.conj()).sum(-3), s=(hf, wf))

    one_a, one_b = fft(torch.ones(1, c, ha, wa, dtype=torch.float64)), fft(torch.ones(1, c, hb, wb, dtype=torch.float64))
    fa, fb = fft(a), fft(b)
    sa, sa2 = corr(fa, one_b), corr(fft(a * a), one_b)  # [Ka, hf, wf]
    sb, sb2 = corr(one_a, fb), corr(one_a, fft(b * b))  # [Kb, hf, wf]
    oy, ox = _overlap(ha, hb, hf), _overlap(wa, wb, wf)
    n = (oy[:, None] * ox[None, :] * c).double().clamp_min(1)
    var_a = sa2 - sa * sa / n
    var_b = sb2 - sb * sb / n
    ok_a = var_a > 1e-9 * sa2.abs() + 1e-30
    ok_b = var_b > 1e-9 * sb2.abs() + 1e-30
    sy = torch.arange(hf)
    sy = torch.where(sy > ha - 1, sy - hf, sy)
    sx = torch.arange(wf)
    sx = torch.where(sx > wa - 1, sx - wf, sx)
    cy, cx = (ha - hb) // 2, (wa - wb) // 2  # the shift that centres b on a
    if lag == "zero":
        valid = ((sy - cy) == 0)[:, None] & ((sx - cx) == 0)[None, :]
    else:
        valid = (oy >= min_overlap * min(ha, hb))[:, None] & (ox >= min_overlap * min(wa, wb))[None, :]
        if max_lag is not None:
            valid &= ((sy - cy).abs() <= max_lag)[:, None] & ((sx - cx).abs() <= max_lag)[None, :]
    out = torch.empty(a.shape[0], b.shape[0], dtype=torch.float64)
    step = max(1, chunk_elements // max(1, b.shape[0] * hf * wf * c))
    for i in range(0, a.shape[0], step):
        sab = corr(fa[i : i + step, None], fb[None])  # [s, Kb, hf, wf]
        num = sab - sa[i : i + step, None] * sb[None] / n
        den = (var_a[i : i + step, None].clamp_min(0) * var_b[None].clamp_min(0)).sqrt()
        ok = ok_a[i : i + step, None] & ok_b[None] & valid
        r = torch.where(ok, num / den.clamp_min(1e-300), torch.zeros_like(num))
        r = r.masked_fill(~valid, -torch.inf)
        out[i : i + step] = r.flatten(2).amax(-1)
    return out.clamp(-1.0, 1.0)
