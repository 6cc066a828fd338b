"""The impulse NCC as it was before issue 14 (float64 FFT over every shift, the full K x K matrix):
the reference that the fast :func:`cnn_redundancy.core.metrics.ncc_matrix` must match to 1e-5."""

from __future__ import annotations

import torch


def _overlap(n_a: int, n_b: int, n_full: int) -> torch.Tensor:
    """Overlap length per circular shift index of a full 1-D cross-correlation."""
    idx = torch.arange(n_full)
    shift = torch.where(idx > n_a - 1, idx - n_full, idx)
    return torch.minimum(torch.full_like(shift, n_b), n_a - shift) - torch.clamp(-shift, min=0)


def ncc_matrix_reference(a, b=None, *, lag="max", max_lag=None, min_overlap=0.5, chunk_elements=2**24) -> torch.Tensor:
    """The implementation before issue 14, unchanged (arguments and conventions: ``ncc_matrix``)."""
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
