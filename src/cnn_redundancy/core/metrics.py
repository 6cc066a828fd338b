"""Metrics: accuracy and Dice (streamed over batches), cosine similarity and normalized cross-correlation.

A model that returns a dict or a tuple (segmentation heads with an auxiliary output, say) is
measured on one of its outputs: ``get_metric("dice", output="out")`` (or ``Dice(output="out")``;
on the command line ``--output-key out``). Labels outside the model's classes are refused, not
counted as wrong.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from .device import full_precision

__all__ = [
    "Metric",
    "Accuracy",
    "Dice",
    "get_metric",
    "infer_metric",
    "select_output",
    "output_param",
    "check_max_lag",
    "COARSE_BELOW",
    "coarse",
    "no_better_than_chance",
    "METRICS",
    "cosine_per_channel",
    "CleanNorms",
    "squared_norms",
    "normalize_responses",
    "ncc_matrix",
    "ncc_cost",
]


_DETECTION_KEYS = {"boxes", "labels", "scores", "masks", "keypoints", "keypoints_scores"}


def select_output(out: Any, key: str | int | None = None, what: str = "the metric") -> torch.Tensor:
    """The tensor read from a model's output: the output itself, or ``out[key]`` of a dict or tuple output."""
    if isinstance(out, torch.Tensor):
        return out
    # a detector's boxes per image (and nothing a key could pick class scores from)
    detections = out if isinstance(out, list | tuple) and out and all(isinstance(o, dict) for o in out) else None
    if key is None and (detections is not None or isinstance(out, dict) and "boxes" in out and set(out) <= _DETECTION_KEYS):
        keys = ", ".join(map(repr, (detections or [out])[0]))
        kind = f"a {type(out).__name__} of dicts (one per image)" if detections else "a dict"
        raise TypeError(f"the model returns {kind} with keys {keys}, as a detection model does: {what} needs one "
                        "tensor of class scores for the batch (classification) or per pixel (segmentation); analyze "
                        "the detector's backbone, built as a classifier, instead")  # fmt: skip
    if isinstance(out, dict):
        usual = [k for k in ("logits", "out", "output", "pred", "preds", "prediction") if k in out]
        example, kind = (usual or list(out) or ["out"])[0], f"a dict with keys {', '.join(map(repr, out))}"
    elif isinstance(out, list | tuple):
        example, kind = 0, f"a {type(out).__name__} of {len(out)} outputs"
    else:
        raise TypeError(f"{what} needs the model's output as a tensor, not {type(out).__name__}")
    if key is None:
        raise TypeError(f"the model returns {kind}: {what} needs one tensor; choose it with output={example!r} "
                        f"(e.g. get_metric('accuracy', output={example!r}); command line: --output-key {example})")
    try:
        chosen = out[key]
    except (KeyError, IndexError, TypeError):
        raise ValueError(f"output={key!r} is not an output of the model: it returns {kind}") from None
    return select_output(chosen, None, what)


def output_param(output: str | int | None) -> dict[str, str | int]:
    """``{"output": key}`` for a result's recorded parameters; nothing for a model whose output is one tensor
    (so their records stay as they were)."""
    return {} if output is None else {"output": output}


class Metric:
    """A metric accumulated over batches: ``reset()``, ``update(output, target)``, ``compute()``.

    A metric's state is additive: ``batch_state(output, target)`` is what one batch adds (a dict
    of tensors, left on the device: no host synchronisation), ``merge(state)`` adds it, and
    ``update`` is the two in turn. Sweeps and ``evaluate`` measure batches apart (on other processes,
    too) and merge their states, so a metric of your own implements ``batch_state`` and ``merge``.

    ``output``: the key or index of the model output it reads, for models returning a dict or tuple.
    """

    name = "metric"
    higher_is_better = True
    output: str | int | None = None

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

    def _checked(self, given: torch.Tensor, target: torch.Tensor, classes: int) -> torch.Tensor:
        """``target`` once its labels are known to be classes of the output: checked (a host sync) once per
        batch's target tensor, not once per unit of a sweep that measures many outputs against it."""
        last = getattr(self, "_checked_for", None)
        if last is None or last[0] is not given or last[1] != classes:
            _check_labels(target, classes, self.name)
            self._checked_for = (given, classes)  # holding the tensor: its id cannot be reused meanwhile
        return target

    def compute(self) -> float:
        raise NotImplementedError


class Accuracy(Metric):
    """Top-1 accuracy (fraction in [0, 1]) of class logits ``[N, classes]`` against labels ``[N]``.

    The count of correct answers stays a tensor on the model's device until :meth:`compute`.
    """

    name = "accuracy"

    def __init__(self, output: str | int | None = None) -> None:
        self.output = output
        self.reset()

    def reset(self) -> None:
        self.correct: int | torch.Tensor = 0
        self.total = 0

    def batch_state(self, output: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        output = select_output(output, self.output, "accuracy")
        if output.dim() != 2:
            seg = "; per-pixel logits [batch, classes, H, W] need metric='dice' (--metric dice)" if output.dim() == 4 else ""
            raise ValueError(f"accuracy expects logits of shape [batch, classes], got {tuple(output.shape)}{seg}")
        labels = self._checked(target, target.to(output.device), output.shape[1])
        # the total is known on the host: only the count of correct answers lives on the device
        return {"correct": (output.argmax(1) == labels).sum(), "total": int(target.numel())}

    def merge(self, state: dict[str, torch.Tensor]) -> None:
        self.correct = self.correct + state["correct"]
        self.total = self.total + state["total"]

    def compute(self) -> float:
        total = int(self.total)
        if total == 0:
            raise ValueError("accuracy of an empty data set")
        return int(self.correct) / total


def _check_labels(target: torch.Tensor, classes: int, what: str) -> torch.Tensor:
    """``target`` if every label is a class index the output has; else one clear error."""
    bad = (target < 0) | (target >= classes)
    if bool(bad.any()):
        value = int(target[bad].flatten()[0])
        raise ValueError(f"{what}: label {value} is outside the model's {classes} classes (0..{classes - 1}); build the "
                         "model with num_classes for this data (--model-kw num_classes=N) or check the labels")
    return target


class Dice(Metric):
    """Mean Dice coefficient over foreground classes, accumulated over the whole data set.

    ``output``: logits ``[N, C, H, W]`` (``C >= 2``, argmax decides the class) or ``[N, 1, H, W]``
    (binary, logit > 0 is foreground). ``target``: class indices ``[N, H, W]`` (or ``[N, 1, H, W]``).
    Per class c: ``2 |P_c & T_c| / (|P_c| + |T_c|)`` over all pixels of the data set; classes absent
    from both prediction and target are left out of the mean; class 0 is background unless
    ``include_background``.
    """

    name = "dice"

    def __init__(self, include_background: bool = False, output: str | int | None = None) -> None:
        self.include_background = include_background
        self.output = output
        self.reset()

    def reset(self) -> None:
        self.inter: torch.Tensor | None = None
        self.sums: torch.Tensor | None = None

    def batch_state(self, output: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        output, given = select_output(output, self.output, "dice"), target
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
        target = self._checked(given, target, classes)
        p = torch.nn.functional.one_hot(pred, classes).flatten(0, -2).double()
        t = torch.nn.functional.one_hot(target, classes).flatten(0, -2).double()
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


def get_metric(metric: str | Metric | Callable[[], Metric], output: str | int | None = None) -> Metric:
    """A fresh metric object from a name (``"accuracy"``, ``"dice"``), a Metric class or an instance.

    ``output``: the key or index of the model output it reads (models returning a dict or tuple).
    """
    if isinstance(metric, Metric):
        metric.reset()
        m = metric
    elif isinstance(metric, str):
        if metric not in METRICS:
            raise ValueError(f"Unknown metric {metric!r}; available: {', '.join(METRICS)}")
        m = METRICS[metric]()
    elif callable(metric):
        m = metric()
        if not isinstance(m, Metric):
            raise TypeError("metric factory must return a cnn_redundancy.metrics.Metric")
    else:
        raise TypeError(f"metric must be a name or a Metric, not {type(metric).__name__}")
    if output is not None:
        m.output = output
    return m


COARSE_BELOW = 100  # images under which a drop measured on them is called coarse


def no_better_than_chance(metric: str, value: float, chance: float | None, consequence: str) -> str | None:
    """What a reader must know when a model's validation ``accuracy`` is no better than ``chance``, the share
    of the most frequent validation class (``None`` otherwise, or for another metric). Validation images all
    of one class (``chance`` 1) cannot show what a model has learned, even at accuracy 1.

    >>> no_better_than_chance("accuracy", 0.5, 0.5, "nothing follows")[:57]
    "on the validation images the model's accuracy (0.5000) is"
    >>> no_better_than_chance("accuracy", 1.0, 1.0, "nothing follows")
    'the validation images are all of one class, so their accuracy (1.0000) cannot tell this model from one that always answers that class: nothing follows; validate on images of every class'
    """
    if metric != "accuracy" or chance is None or value > chance:
        return None
    if chance >= 1.0:
        return (f"the validation images are all of one class, so their accuracy ({value:.4f}) cannot tell this model "
                f"from one that always answers that class: {consequence}; validate on images of every class")
    return (f"on the validation images the model's accuracy ({value:.4f}) is no better than always answering their "
            f"most frequent class ({chance:.4f}): it has not learned what these images ask (untrained weights, "
            f"labels in another order, other images), so {consequence}")


def coarse(n: int, metric: str, max_drop: float | None, split: str) -> str | None:
    """What a reader of a drop measured on only ``n`` images of ``split`` must know (``None`` for enough).

    >>> coarse(40, "accuracy", 0.01, "test")
    'only 40 test images, each 0.025 of the accuracy, more than the allowed drop 0.01: one changed prediction exceeds it'
    """
    if n >= COARSE_BELOW:
        return None
    what = f"only {n} {split} images"
    if metric == "accuracy":
        what += f", each {1 / n:.3g} of the accuracy"
        if max_drop is not None and 1 / n > max_drop:
            what += f", more than the allowed drop {max_drop:g}: one changed prediction exceeds it"
    return what


def infer_metric(model: torch.nn.Module, data, output: str | int | None = None) -> str:
    """``"dice"`` for a model giving per-pixel logits ``[N, C, H, W]`` on ``data``, ``"accuracy"`` for ``[N, C]``."""
    from .batches import first_input, forward_checked
    from .hooks import preserved

    x = first_input(data, model)
    with preserved(model), torch.no_grad():
        model.eval()
        out = select_output(forward_checked(model, x.to(next(iter(model.parameters()), x).device)), output, "the metric")
    if out.dim() in (2, 4):
        return "accuracy" if out.dim() == 2 else "dice"
    raise ValueError(f"cannot tell the metric from an output of shape {tuple(out.shape)}: pass --metric accuracy or dice")


class CleanNorms(NamedTuple):
    """The clean side of :func:`cosine_per_channel`, computed once where one clean activation is compared
    with many perturbed ones (a sweep), each ``[N, C]`` in the activation's precision (float32 at least).
    ``sq``: the squared norm of each map, infinite where the map counts as zero (a perturbed map that is
    not zero then gets cosine 0). ``norm``: its square root, 1 where the map counts as zero. ``zero``:
    1 where the map counts as zero (the cosine where the perturbed map is zero too), else 0."""

    sq: torch.Tensor
    norm: torch.Tensor
    zero: torch.Tensor


def squared_norms(a: torch.Tensor, eps: float = 1e-12) -> CleanNorms:
    """:class:`CleanNorms` of ``a`` (``[N, C, ...]``) for :func:`cosine_per_channel`."""
    a = full_precision(a).flatten(2)
    sq = (a * a).sum(-1)
    zero = sq <= eps * eps
    return CleanNorms(sq.masked_fill(zero, math.inf), sq.masked_fill(zero, 1.0).sqrt_(), zero.to(sq.dtype))


def cosine_per_channel(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-12, *,
                       a_sq: CleanNorms | None = None, sum_samples: bool = False) -> torch.Tensor:  # fmt: skip
    """Cosine similarity between ``a[n, c]`` and ``b[n, c]`` flattened, for every sample and channel.

    ``a``, ``b``: ``[N, C, ...]``. Returns ``[N, C]``, or with ``sum_samples`` their sum over the
    samples ``[C]`` (float64; computed in the inputs' precision, float32 at least, and summed in
    float64). ``a_sq``: :func:`squared_norms` of ``a`` where the caller has it (a sweep compares one
    clean activation with many perturbed ones). A map whose squared norm is at most ``eps**2`` counts
    as zero: both zero gives 1 (nothing changed), exactly one zero gives 0. A NaN or infinite value in
    the perturbed map gives NaN, whatever the clean map (it is not hidden as 0).
    """
    if a_sq is None:
        a_sq = squared_norms(a, eps)
    a = full_precision(a).flatten(2)
    b = full_precision(b).flatten(2)
    # a.b / (|a| |b|) as (a.b / a.a) * (|a| / |b|): the three sums are computed alike, so identical maps
    # give 1 * 1, exactly 1, and every factor stays within float32's range for any two maps it can hold
    # (the product a.a b.b, or the ratio b.b / a.a, would not). Where the clean map is zero the first
    # factor is 0 (cosine 0); where the perturbed one is, the cosine is the clean map's zero flag.
    bb = (b * b).sum(-1)
    ratio = bb.sqrt()
    torch.div(a_sq.norm, ratio, out=ratio)
    cos = (a * b).sum(-1).div_(a_sq.sq).mul_(ratio)
    cos = torch.where(bb <= eps * eps, a_sq.zero, cos).clamp_(-1.0, 1.0)
    return cos.sum(0, dtype=torch.float64) if sum_samples else cos.double()


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


def _shift_range(n_a: int, n_b: int, lag: str, max_lag: int | None, min_overlap: float) -> tuple[int, int] | None:
    """The valid relative shifts along one axis, ``(first, last)``, or ``None`` when there is none.

    Shift ``s`` places ``b``'s pixel ``p`` on ``a``'s pixel ``p + s`` (``-(n_b - 1) <= s <= n_a - 1``).
    ``"zero"``: the centring shift alone. ``"max"``: every shift whose overlap covers at least
    ``min_overlap`` of the smaller map, within ``max_lag`` of the centring shift. The valid shifts
    are an interval (the overlap rises, stays, then falls with ``s``).
    """
    centre = (n_a - n_b) // 2
    if lag == "zero":
        return centre, centre
    s = torch.arange(-(n_b - 1), n_a)
    overlap = torch.minimum(torch.full_like(s, n_b), n_a - s) - torch.clamp(-s, min=0)
    ok = overlap >= min_overlap * min(n_a, n_b)
    if max_lag is not None:
        ok &= (s - centre).abs() <= max_lag
    if not ok.any():
        return None
    chosen = s[ok]
    return int(chosen[0]), int(chosen[-1])


#: a window whose squared deviations sum to at most this fraction of its whole response's sum of squares counts as
#: constant: the FFTs leave about 1e-17 of it where a window holds only zeros (the corner of a sparse response),
#: and that noise, divided by itself, correlated up to 0.5 with anything
_CONSTANT = 1e-11


def _deviations(s: torch.Tensor, s2: torch.Tensor, n: torch.Tensor | float,
                energy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """``(window mean, 1 / sqrt(sum of squared deviations))`` per response (rows) and shift, 0 where the window
    is constant (float64 sums; ``energy``: each response's whole sum of squares, ``[K, 1]``; one test of
    constancy for both paths)."""
    var = s2 - s * s / n
    ok = var > 1e-9 * s2.abs() + _CONSTANT * energy + 1e-30
    return s / n, torch.where(ok, var.clamp_min(1e-300).rsqrt(), torch.zeros_like(var))


def _energy(x: torch.Tensor) -> torch.Tensor:
    """Each response's sum of squares, ``[K, 1]`` (float64)."""
    return x.square().sum((1, 2, 3))[:, None]


def _overlaps(a_size: tuple[int, int], b_size: tuple[int, int], ys: tuple[int, int], xs: tuple[int, int]):
    """For every valid shift ``(sy, sx)``: the overlapping window as slices of ``a`` and of ``b``."""
    for sy in range(ys[0], ys[1] + 1):
        by = slice(max(0, -sy), min(b_size[0], a_size[0] - sy))
        for sx in range(xs[0], xs[1] + 1):
            bx = slice(max(0, -sx), min(b_size[1], a_size[1] - sx))
            yield (slice(by.start + sy, by.stop + sy), slice(bx.start + sx, bx.stop + sx)), (by, bx)


def _unit_windows(w: torch.Tensor, energy: torch.Tensor) -> torch.Tensor:
    """Each response's window, centred and scaled to unit norm in float64, then float32 ``[K, n]``; zeros
    for a constant window (its correlation is 0). Two such rows' dot product is Pearson's r."""
    mean, inverse = _deviations(w.sum((1, 2, 3)), w.square().sum((1, 2, 3)), w[0].numel(), energy[:, 0])
    return ((w - mean[:, None, None, None]) * inverse[:, None, None, None]).flatten(1).float()


def _ncc_direct(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor, ys, xs, symmetric: bool, chunk: int) -> None:
    """Small maps: per valid shift, one float32 matrix product of the overlapping windows, each centred
    and normalized in float64 first (so float32 only ever multiplies unit vectors: no cancellation);
    ``out`` keeps the largest r over the shifts."""
    ka, kb = a.shape[0], b.shape[0]
    rows = max(1, min(ka, chunk // max(1, kb), -(-ka // 4) if symmetric and ka >= 256 else ka))
    blocks = [(slice(i, min(ka, i + rows)), slice(i if symmetric else 0, kb)) for i in range(0, ka, rows)]
    best = [torch.full((r.stop - r.start, c.stop - c.start), -torch.inf, device=a.device) for r, c in blocks]
    ea, eb = _energy(a), _energy(b)
    for (ay, ax), (by, bx) in _overlaps(a.shape[2:], b.shape[2:], ys, xs):
        left, right = _unit_windows(a[:, :, ay, ax], ea), _unit_windows(b[:, :, by, bx], eb)
        for (r, c), m in zip(blocks, best):
            torch.maximum(m, left[r] @ right[c].T, out=m)
    for (r, c), m in zip(blocks, best):
        out[r, c] = m.double()
    if symmetric:  # the upper triangle (every block starts at its first row's diagonal) mirrored, exactly
        out.copy_(out.triu() + out.triu(1).T)


def _ncc_fourier(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor, ys, xs, symmetric: bool, chunk: int) -> None:
    """Large maps: the correlation at every shift through FFTs (float64), the valid shifts cut out
    before any element-wise work, a chunk of rows (upper triangle for ``b=a``) at a time."""
    c, ha, wa, hb, wb = a.shape[1], a.shape[2], a.shape[3], b.shape[2], b.shape[3]
    size = (ha + hb - 1, wa + wb - 1)
    iy = torch.arange(ys[0], ys[1] + 1, device=a.device) % size[0]  # shift s sits at index s mod size
    ix = torch.arange(xs[0], xs[1] + 1, device=a.device) % size[1]

    def corr(fx, fy):  # sum over maps of the cross-correlation at the valid shifts: entry s = sum_p x(p + s) y(p)
        full = torch.fft.irfft2((fx * fy.conj()).sum(-3), s=size)
        return full.index_select(-2, iy).index_select(-1, ix).flatten(-2)

    def fft(x):
        return torch.fft.rfft2(x, s=size)

    one_a, one_b = (fft(torch.ones(1, c, h, w, dtype=torch.float64, device=a.device)) for h, w in ((ha, wa), (hb, wb)))
    fa, fb = fft(a), fft(b)
    n = corr(one_a, one_b).clamp_min(1)  # [1, V] overlap sizes
    ma, ia = _deviations(corr(fa, one_b), corr(fft(a * a), one_b), n, _energy(a))
    mb, ib = _deviations(corr(one_a, fb), corr(one_a, fft(b * b)), n, _energy(b))
    step = max(1, chunk // max(1, b.shape[0] * c * size[0] * size[1]))
    for i in range(0, a.shape[0], step):
        rows, cols = slice(i, i + step), slice(i if symmetric else 0, b.shape[0])
        sab = corr(fa[rows, None], fb[None, cols])  # [rows, cols, V]
        out[rows, cols] = ((sab - n * ma[rows, None] * mb[None, cols]) * ia[rows, None] * ib[None, cols]).amax(-1)
    if symmetric:  # the upper triangle mirrored, exactly
        out.copy_(out.triu() + out.triu(1).T)


#: the direct path's fixed cost per valid shift (two windows normalised, a product per block of rows), in
#: multiply-adds of its matrix products: about 0.1 ms of dispatch on a CPU core
_SHIFT_COST = 1.5e6


def _path_costs(c: int, b_size: tuple[int, int], ys: tuple[int, int], xs: tuple[int, int], size: tuple[int, int],
                pairs: int) -> tuple[float, float]:  # fmt: skip
    """``(direct, fourier)`` costs of ``pairs`` pairs of responses, in multiply-adds of the direct path's
    matrix products: its ``C hb wb`` per pair and valid shift and its fixed cost per shift, against the FFT's
    product and inverse per pair, weighted by how much faster matrix products run."""
    v = (ys[1] - ys[0] + 1) * (xs[1] - xs[0] + 1)
    cells = size[0] * size[1]
    direct = pairs * c * b_size[0] * b_size[1] * v + v * _SHIFT_COST
    return direct, pairs * 50 * (c * cells + cells * max(1.0, math.log2(cells)))


def _pairs(ka: int, kb: int, symmetric: bool) -> int:
    """Pairs of responses the NCC computes: the upper triangle with its diagonal within a layer."""
    return ka * (ka + 1) // 2 if symmetric else ka * kb


def _fourier_is_cheaper(c: int, b_size: tuple[int, int], ys: tuple[int, int], xs: tuple[int, int],
                        size: tuple[int, int], pairs: int) -> bool:  # fmt: skip
    """Whether the FFTs cost less (:func:`_path_costs`). Fitted on a CPU core over 1-3 maps of 4x4 to 32x32
    and 4-512 kernels: the choice is never more than 1.7x slower than the faster path (without the cost per
    shift, a layer of 8 kernels on 24x24 maps took the direct path, 10x slower)."""
    direct, fourier = _path_costs(c, b_size, ys, xs, size, pairs)
    return direct > fourier


def ncc_cost(a_shape: tuple[int, ...], b_shape: tuple[int, ...] | None = None, *, lag: str = "max",
             max_lag: int | None = None, min_overlap: float = 0.5) -> float:  # fmt: skip
    """What :func:`ncc_matrix` of responses of these shapes (``[K, C, H, W]``; ``b_shape=None``: within
    ``a``) costs on the path it takes, in multiply-adds of the direct path's matrix products (0 where no
    shift is valid). Planning uses it: the work depends on the kernels and map sizes, not on any data."""
    b = a_shape if b_shape is None else b_shape
    ys = _shift_range(a_shape[2], b[2], lag, max_lag, min_overlap)
    xs = _shift_range(a_shape[3], b[3], lag, max_lag, min_overlap)
    if ys is None or xs is None:
        return 0.0
    pairs = _pairs(a_shape[0], b[0], b_shape is None)
    return min(_path_costs(a_shape[1], (b[2], b[3]), ys, xs, (a_shape[2] + b[2] - 1, a_shape[3] + b[3] - 1), pairs))


def check_max_lag(max_lag: int | None) -> None:
    """``max_lag`` is ``None`` or a number of pixels ``>= 0`` (a negative one would leave no shift to compare)."""
    if max_lag is not None and (isinstance(max_lag, bool) or not isinstance(max_lag, int) or max_lag < 0):
        raise ValueError(f"max_lag must be None or an integer >= 0, not {max_lag!r}")


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
        chunk_elements: bound on the size of the intermediate tensors (memory stays bounded).

    Only the valid shifts are worked on: small maps by one float32 matrix product per valid shift
    of windows centred and normalized in float64 (the values agree with a float64 computation to
    about 1e-6),
    large maps by float64 FFTs with the valid shifts cut out before the element-wise work. With
    ``b=None`` only the upper triangle is computed (the matrix is symmetric). Memory is bounded by
    ``chunk_elements`` and the ``K x K`` result; everything runs on the responses' device (a GPU
    computes it batched). A window where either map is
    constant has no defined correlation and counts as 0; a constant response therefore correlates 0
    with everything. Values lie in [-1, 1].

    Returns:
        ``[Ka, Kb]`` float64 tensor on the CPU.
    """
    if lag not in ("max", "zero"):
        raise ValueError(f"lag must be 'max' or 'zero', not {lag!r}")
    if not 0.0 < min_overlap <= 1.0:
        raise ValueError("min_overlap must be in (0, 1]")
    check_max_lag(max_lag)
    symmetric = b is None
    b = a if b is None else b
    if a.dim() != 4 or b.dim() != 4:
        raise ValueError("responses must be [kernels, maps, H, W]")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"responses have {a.shape[1]} and {b.shape[1]} maps each; they must match")
    a, b = a.detach().double(), b.detach().double().to(a.device)
    ys = _shift_range(a.shape[2], b.shape[2], lag, max_lag, min_overlap)
    xs = _shift_range(a.shape[3], b.shape[3], lag, max_lag, min_overlap)
    out = torch.full((a.shape[0], b.shape[0]), -1.0, dtype=torch.float64, device=a.device)
    if ys is not None and xs is not None and a.shape[0] and b.shape[0]:
        size = (a.shape[2] + b.shape[2] - 1, a.shape[3] + b.shape[3] - 1)
        pairs = _pairs(a.shape[0], b.shape[0], symmetric)
        fourier = _fourier_is_cheaper(a.shape[1], tuple(b.shape[2:]), ys, xs, size, pairs)
        (_ncc_fourier if fourier else _ncc_direct)(out, a, b, ys, xs, symmetric, chunk_elements)
    return out.clamp(-1.0, 1.0).cpu()
