"""The fast impulse NCC (upper triangle, valid shifts only, float32 products of float64-normalized
windows, FFTs for large maps) against the float64 FFT version it replaced (``ncc_reference.py``):
the same values to 1e-5, on random responses and on real impulse responses."""

from __future__ import annotations

import pytest
import torch
from ncc_reference import ncc_matrix_reference

import cnn_redundancy as cr
import cnn_redundancy.core.metrics as metrics
from cnn_redundancy.analyses.impulse import _impulses, _responses, linearized
from cnn_redundancy.core.metrics import ncc_matrix

SHAPES = [(5, 5, 1, 16, 16, 16, 16), (6, 4, 2, 9, 7, 5, 6), (4, 6, 2, 5, 5, 9, 9), (9, 9, 3, 2, 2, 2, 2), (7, 7, 1, 1, 1, 1, 1)]


@pytest.mark.parametrize("path", ["auto", "direct", "fourier"])
def test_same_values_as_the_float64_reference_on_random_responses(path, monkeypatch):
    if path != "auto":
        monkeypatch.setattr(metrics, "_fourier_is_cheaper", lambda *a: path == "fourier")
    g = torch.Generator().manual_seed(0)
    for ka, kb, c, ha, wa, hb, wb in SHAPES:
        a, b = torch.randn(ka, c, ha, wa, generator=g), torch.randn(kb, c, hb, wb, generator=g)
        a[0] = 0.0  # a constant response
        a[1, :, : ha // 2] = 3.0  # constant windows
        for kw in ({}, {"lag": "zero"}, {"max_lag": 1}, {"min_overlap": 1.0}, {"min_overlap": 0.2}):
            for other in (None, b):
                want, got = ncc_matrix_reference(a, other, **kw), ncc_matrix(a, other, **kw)
                assert got.dtype == torch.float64 and got.shape == want.shape
                assert torch.allclose(got, want, atol=1e-5, rtol=0), (ka, c, ha, kw, other is None)


@pytest.mark.parametrize("linear", [False, True])
def test_same_values_as_the_float64_reference_on_impulse_responses(linear):
    torch.manual_seed(0)
    model = cr.get_model("torchvision:resnet18", num_classes=10).eval()
    names = ["conv1", "layer1.0.conv2", "layer2.0.downsample.0", "layer3.1.conv1", "layer4.1.conv2"]
    responses = _responses(linearized(model) if linear else model, names, _impulses(model, (3, 48, 48), torch.device("cpu"), 1.0))
    for name in names:
        r = torch.tensor(responses[name], dtype=torch.float64).transpose(0, 1)
        assert torch.allclose(ncc_matrix(r), ncc_matrix_reference(r), atol=1e-5, rtol=0), name
    a = torch.tensor(responses["layer1.0.conv2"], dtype=torch.float64).transpose(0, 1)
    b = torch.tensor(responses["layer3.1.conv1"], dtype=torch.float64).transpose(0, 1)
    assert torch.allclose(ncc_matrix(a, b), ncc_matrix_reference(a, b), atol=1e-5, rtol=0)  # across depth


def test_no_responses_and_symmetry():
    assert ncc_matrix(torch.randn(0, 1, 4, 4), torch.randn(3, 1, 4, 4)).shape == (0, 3)
    m = ncc_matrix(torch.randn(300, 2, 3, 3, generator=torch.Generator().manual_seed(1)))  # several row blocks
    assert torch.equal(m, m.T) and torch.allclose(m.diagonal(), torch.ones(300, dtype=torch.float64), atol=1e-6)


@pytest.mark.parametrize(("k", "c", "side", "path"), [
    (8, 3, 24, "fourier"),  # few kernels, many shifts: the direct path's cost per shift dominates (10x slower)
    (6, 1, 28, "fourier"),  # LeNet-5's conv1 (20x slower direct)
    (64, 3, 16, "direct"),  # resnet's layer1 at 64x64 (2x faster direct)
    (256, 3, 8, "direct"),  # many kernels on small maps (8x faster direct)
    (64, 3, 32, "fourier"),  # resnet's conv1 at 64x64
])  # fmt: skip
def test_the_path_is_chosen_with_the_direct_paths_cost_per_shift(k, c, side, path):
    """The choice the speed depends on, at the sizes it was fitted on (the times are ``make bench``'s and the
    fit's, not this test's): a cost model of multiply-adds alone sent the first two the direct way."""
    ys = metrics._shift_range(side, side, "max", None, 0.5)
    pairs = k * (k + 1) // 2
    assert metrics._fourier_is_cheaper(c, (side, side), ys, ys, (2 * side - 1, 2 * side - 1), pairs) == (path == "fourier")


@pytest.mark.parametrize("side", [8, 16, 32])
def test_both_paths_agree_where_windows_hold_only_zeros(side, monkeypatch):
    """Sparse responses (an impulse response's zero surroundings): a window of zeros in a response that is
    not zero is constant, correlation 0, on both paths. The FFTs leave about 1e-17 in such a window, and that
    noise, normalised by itself, scored up to 0.5 against anything on the FFT path."""
    g = torch.Generator().manual_seed(side)
    r = torch.randn(6, 2, side, side, generator=g)
    r[:, :, : side // 2] = 0.0
    r[3, :, :, side // 3 :] = 0.0
    r[4] = 0.0
    r[4, 0, 0, 0] = 1.0  # one pixel in a corner
    got = {}
    for path in ("direct", "fourier"):
        monkeypatch.setattr(metrics, "_fourier_is_cheaper", lambda *a, p=path: p == "fourier")
        got[path] = ncc_matrix(r)
    assert torch.allclose(got["direct"], got["fourier"], atol=1e-5, rtol=0)
