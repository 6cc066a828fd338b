"""Distinctiveness: known angles, centering, streaming, result round trip, model left as found."""

from __future__ import annotations

import math

import pytest
import torch

import cnn_redundancy as cr
from cnn_redundancy.analyses.distinctiveness import ActivationStats, DistinctivenessResult, activation_stats
from cnn_redundancy.core.hooks import hook_count
from cnn_redundancy.testing import (
    TinyCNN,
    complementary_pair_net,
    constant_images,
    duplicated_kernels_net,
    random_images,
)


def test_duplicated_kernels_have_angle_zero_and_come_first():
    res = cr.distinctiveness(duplicated_kernels_net(), random_images(48))
    assert res.observed == {"conv1": "act1", "conv2": "act2"}
    assert res.angles["conv1"][0, 1].item() == pytest.approx(0.0, abs=1e-3)
    assert res.angles["conv2"][2, 3].item() == pytest.approx(0.0, abs=1e-3)
    first_two = {(p["layer"], p["i"], p["j"]) for p in res.pairs(2)}
    assert first_two == {("conv1", 0, 1), ("conv2", 2, 3)}
    others = [p["angle"] for p in res.pairs()[2:]]
    assert min(others) > 0.1 and max(others) <= 90.0 + 1e-9  # non-negative vectors: plain angles within 0-90


def test_angles_match_direct_computation():
    m, d = TinyCNN().eval(), random_images(40)
    res = cr.distinctiveness(m, d, "conv2", batch_size=7)  # several uneven batches
    x = torch.stack([d[i][0] for i in range(40)])
    with torch.no_grad():
        act = torch.relu(m.conv2(m.pool1(torch.relu(m.conv1(x)))))
    v = act.flatten(2).norm(dim=2).double()  # [N, K] Frobenius norms
    cos = (v.T @ v) / (v.norm(dim=0)[:, None] * v.norm(dim=0)[None, :])
    want = torch.rad2deg(torch.arccos(cos.clamp(-1, 1)))
    want.fill_diagonal_(0)
    assert res.angles["conv2"].dtype == torch.float64 and torch.allclose(res.angles["conv2"], want, atol=1e-4)
    assert res.n_samples == 40


def test_batches_are_added_in_chunks_and_a_partial_read_changes_nothing(monkeypatch, tmp_path):
    from cnn_redundancy.analyses import distinctiveness as module
    from cnn_redundancy.core import results

    u = torch.rand(50, 4)
    st = ActivationStats.empty(4)
    monkeypatch.setattr(module, "CHUNK_ROWS", 16)
    for i in range(0, 50, 7):  # batches of 7: added at 21 and 42 samples, 8 pending
        st.add(u[i:i + 7])
    assert st.n == 42 and len(st.pending) == 2
    before = st.gram.clone()
    got = st.settled()
    assert got is not st and got.n == 50 and not got.pending and st.n == 42 and torch.equal(st.gram, before)
    assert torch.allclose(got.gram, u.double().T @ u.double(), rtol=1e-12)
    assert torch.equal(got.mins, u.double().min(0).values) and torch.allclose(got.sums, u.double().sum(0), rtol=1e-12)
    assert got.settled() is got

    m, d = TinyCNN().eval(), random_images(40)
    plain = cr.distinctiveness(m, d, batch_size=3)  # 14 batches: 3 chunks added, 1 pending at the end
    monkeypatch.setattr(results, "PARTIAL_EVERY", 0.0)  # a partial result read after every batch
    written = cr.distinctiveness(m, d, batch_size=3, partial=tmp_path / "p.json")
    assert all(torch.equal(plain.angles[k], written.angles[k]) for k in plain.layers)
    last = DistinctivenessResult.load(tmp_path / "p.json")  # the final write, after every partial one
    assert last.n_samples == plain.n_samples == 40 and last.meta["complete"]
    assert all(torch.allclose(plain.angles[k], last.angles[k], equal_nan=True, rtol=0, atol=1e-9) for k in plain.layers)


@pytest.mark.parametrize("center", ["mean", "minmax"])
def test_centering_is_exact_from_streamed_sums(center):
    u = torch.rand(50, 4, dtype=torch.float64)
    st = ActivationStats.empty(4)
    st.update(u[:20], u[:20])
    st.update(u[20:], u[20:])
    v = u - u.mean(0) if center == "mean" else (u - u.min(0).values) / (u.max(0).values - u.min(0).values) - 0.5
    assert torch.allclose(st.centered_gram(center), v.T @ v, atol=1e-10)


def test_complementary_pair_found_only_with_centering():
    m, d = complementary_pair_net(), constant_images(64)
    plain = cr.distinctiveness(m, d)
    assert plain.angles["conv"][0, 1] < 90.0
    assert plain.pairs(descending=True)[0]["angle"] < 90.0
    for center in ("mean", "minmax"):
        res = cr.distinctiveness(m, d, center=center)
        assert res.angles["conv"][0, 1].item() == pytest.approx(180.0, abs=1e-3)
        top = res.pairs(1, descending=True)[0]
        assert (top["i"], top["j"]) == (0, 1)


def test_dead_kernel_is_degenerate():
    m = TinyCNN().eval()
    with torch.no_grad():
        m.conv1.weight[2] = 0.0
        m.conv1.bias[2] = -1.0  # relu(-1) = 0 everywhere
    res = cr.distinctiveness(m, random_images(16), "conv1")
    assert res.degenerate["conv1"] == [2]
    assert math.isnan(res.angles["conv1"][2, 0])
    assert all(2 not in (p["i"], p["j"]) for p in res.pairs())


def test_memory_does_not_grow_with_samples():
    m = TinyCNN().eval()
    stats = activation_stats(m, random_images(200), batch_size=16)
    sizes = {n: (s.gram.numel(), s.sums.numel()) for n, s in stats.items()}
    assert sizes == {"conv1": (16, 4), "conv2": (36, 6)}  # K x K and K, whatever N is


def test_model_left_as_found_even_on_error():
    m = TinyCNN().train()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    hooks = hook_count(m)
    cr.distinctiveness(m, random_images(16))
    with pytest.raises(ValueError):
        cr.distinctiveness(m, random_images(16, shape=(1, 12, 12)), observe={"conv1": "fc"})
    assert m.training and all(mod.training for mod in m.modules())
    assert hook_count(m) == hooks
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


def test_shared_activation_module_uses_the_call_after_the_layer():
    m = cr.get_model("torchvision:resnet18").eval()
    res = cr.distinctiveness(m, random_images(4, shape=(3, 32, 32)), "layer1.0.conv1")
    assert res.observed["layer1.0.conv1"] == "layer1.0.relu"  # relu is called twice in a BasicBlock
    assert res.angles["layer1.0.conv1"].shape == (64, 64)


def test_bad_inputs():
    m, d = TinyCNN().eval(), random_images(8)
    with pytest.raises(ValueError, match="center"):
        cr.distinctiveness(m, d, center="median")
    with pytest.raises(ValueError, match="exactly one layer"):
        cr.distinctiveness(m, d, observe="act1")
    with pytest.raises(ValueError, match="Unknown layer"):
        cr.distinctiveness(m, d, "conv9")


def test_result_round_trip_and_plot(tmp_path):
    res = cr.distinctiveness(duplicated_kernels_net(), random_images(16), center="mean")
    again = cr.Result.load(res.save(tmp_path / "d.json"))
    assert again == res and again.pairs(3) == res.pairs(3)
    fig = res.plot()
    assert len(fig.axes) >= 2
    assert cr.distinctiveness(duplicated_kernels_net(), random_images(16), center="mean").to_dict() == res.to_dict()


def test_nearest_partner_and_dead_kernels():
    m = duplicated_kernels_net()
    with torch.no_grad():
        m.conv2.bias[0] = -100.0  # dead under the ReLU
    res = cr.distinctiveness(m, random_images(32))
    angle, partner = res.nearest("conv1")
    assert angle[0] == pytest.approx(0.0, abs=1e-3) and partner[0] == 1 and partner[1] == 0
    a2, p2 = res.nearest("conv2")
    assert res.dead["conv2"] == [0] and math.isnan(a2[0]) and p2[0] is None
    assert all(math.isfinite(a) for a in a2[1:]) and a2[2] == pytest.approx(0.0, abs=1e-3) and p2[2] == 3
