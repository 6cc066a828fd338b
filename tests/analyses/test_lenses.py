"""The toolkit's own lenses (dead kernels, kernel scores, CKA) and graph structure, on planted answers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import cnn_redundancy as cr
from cnn_redundancy.analyses.cka import hsic1
from cnn_redundancy.core.graph import Traced
from cnn_redundancy.core.structure import consumer, residual_adds
from cnn_redundancy.testing import TinyCNN, random_images


@pytest.fixture(scope="module")
def data():
    return random_images(48, (1, 12, 12), seed=2)


def test_dead_kernels_planted(data):
    torch.manual_seed(0)
    m = TinyCNN().eval()
    with torch.no_grad():
        m.conv1.bias[1] = -50.0  # a negative bias under the ReLU: never above zero
        m.conv2.weight[4] = 0.0  # zero weights and zero bias: zero output
        m.conv2.bias[4] = 0.0
        m.conv2.weight[5] = 0.0  # zero weights, positive bias: a constant, not dead
        m.conv2.bias[5] = 0.3
    res = cr.dead_kernels(m, data)
    assert res.dead == {"conv1": [1], "conv2": [4]}
    assert res.constant == {"conv1": [1], "conv2": [4, 5]}
    assert res.zero_weights == {"conv1": [], "conv2": [4, 5]}
    assert res.max_activation["conv2"][5] == pytest.approx(0.3) and res.fraction("conv2") == 1 / 6
    assert "2 of 10 kernels are dead" in res.headline()[0]


def test_removing_dead_kernels_changes_nothing(data):
    torch.manual_seed(0)
    m = TinyCNN().eval()
    with torch.no_grad():
        m.conv1.bias[1] = -50.0
    dead = cr.dead_kernels(m, data).dead["conv1"]
    x = torch.stack([data[i][0] for i in range(16)])
    with torch.no_grad():
        before = m(x)
        m.conv2.weight[:, dead] = 123.0  # whatever the next layer does with a dead channel
        after = m(x)
    assert torch.equal(before, after)


def test_kernel_scores_known_answers(data):
    torch.manual_seed(0)
    m = TinyCNN().eval()
    res = cr.kernel_scores(m, data, batch_size=16)
    assert res.l1["conv1"] == pytest.approx(m.conv1.weight.detach().abs().flatten(1).sum(1).tolist())
    # Taylor by hand on the whole data: per sample |mean_pos(a * dL/da)|, averaged
    x = torch.stack([data[i][0] for i in range(len(data))])
    y = torch.stack([data[i][1] for i in range(len(data))])
    acts = {}
    h = m.conv2.register_forward_hook(lambda mod, inp, out: acts.__setitem__("a", out))
    loss = F.cross_entropy(m(x.requires_grad_(True)), y, reduction="sum")
    (g,) = torch.autograd.grad(loss, [acts["a"]])
    h.remove()
    want = (acts["a"] * g).flatten(2).mean(2).abs().mean(0)
    assert res.taylor["conv2"] == pytest.approx(want.tolist(), rel=1e-4)
    assert all(p.grad is None for p in m.parameters())  # parameters untouched


def test_kernel_scores_on_frozen_layers(data):
    m = TinyCNN().eval()
    for p in m.parameters():
        p.requires_grad_(False)
    res = cr.kernel_scores(m, data)
    assert max(res.taylor["conv1"]) > 0 and not any(p.requires_grad for p in m.parameters())


def test_cka_known_answers():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 20, dtype=torch.float64, generator=g)
    q, _ = torch.linalg.qr(torch.randn(20, 20, dtype=torch.float64, generator=g))
    z = torch.randn(64, 20, dtype=torch.float64, generator=g)
    grams = torch.stack([x @ x.T, (x @ q) @ (x @ q).T, z @ z.T])
    h = hsic1(grams)
    cka = h / torch.outer(h.diagonal(), h.diagonal()).sqrt()
    assert cka[0, 0] == pytest.approx(1.0) and cka[0, 1] == pytest.approx(1.0, abs=1e-12)  # orthogonal invariance
    assert abs(float(cka[0, 2])) < 0.2  # an unrelated representation
    # a random projection onto the orthogonal complement of a representation's (centered) columns shares
    # nothing with it: CKA near 0 (the unbiased estimator's diagonal-free terms leave a little)
    a = torch.randn(600, 8, dtype=torch.float64, generator=g)
    ac = a - a.mean(0)
    p = torch.eye(600, dtype=torch.float64) - ac @ torch.linalg.pinv(ac)
    b = p @ torch.randn(600, 8, dtype=torch.float64, generator=g)
    h2 = hsic1(torch.stack([a @ a.T, b @ b.T]))
    assert abs(float(h2[0, 1] / (h2[0, 0] * h2[1, 1]).sqrt())) < 0.05


class _Twins(nn.Module):
    """conv2 copies conv1's activation exactly (identity 1x1 kernel); conv3 is a fresh random conv."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 4, 1, bias=False)
        self.act2 = nn.ReLU()
        self.conv3 = nn.Conv2d(4, 4, 3, padding=1)
        self.act3 = nn.Tanh()
        self.fc = nn.Linear(4 * 144, 10)
        with torch.no_grad():
            self.conv2.weight.copy_(torch.eye(4).view(4, 4, 1, 1))

    def forward(self, x):
        x = self.act2(self.conv2(self.act1(self.conv1(x))))
        return self.fc(self.act3(self.conv3(x)).flatten(1))


def test_cka_of_a_copied_layer_is_one(data):
    torch.manual_seed(0)
    res = cr.cka(_Twins().eval(), data, batch_size=16)
    assert res.layers == ["conv1", "conv2", "conv3"] and res.matrix[0][1] == pytest.approx(1.0, abs=1e-9)
    assert res.matrix[1][2] < 0.999 and res.similar_neighbours(0.99) == [("conv1", "conv2", res.matrix[0][1])]
    tail = cr.cka(_Twins().eval(), random_images(18, (1, 12, 12)), batch_size=8)
    assert tail.skipped_batches == 1 and tail.n_samples == 16


class UserResidual(nn.Module):
    """A user's own residual net: ``x + f(x)`` blocks written inline, and a concatenation."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.f1 = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1))
        self.f2 = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1))
        self.side = nn.Conv2d(4, 4, 1)
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = x + self.f1(x)
        x = torch.relu(x + self.f2(x))
        y = torch.cat([x, self.side(x)], 1)
        return self.head(y.mean((2, 3)))


class ShapeReads(nn.Module):
    """Convs whose outputs are also read for their shape, dtype and size (not their values)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.conv2, self.conv3 = nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Linear(4 * 12 * 12, 10)

    def forward(self, x):
        h = self.conv1(x)
        n = h.size(0)
        h = torch.relu(self.bn1(h))
        dtype, c = h.dtype, h.shape[1]
        h = torch.relu(self.conv2(h))
        h = self.conv3(h) + h  # conv2's activation is used twice: no consumer
        return self.head(h.view(n, c, -1).flatten(1).to(dtype))


def test_consumer_looks_past_reads_of_the_shape(data):
    torch.manual_seed(0)
    m = ShapeReads().eval()
    t = Traced(m)
    conv1_users = [u for u in t.node("conv1").users]
    assert any(u.op == "call_method" and u.target == "size" for u in conv1_users)  # the read is there
    assert consumer(t, "conv1") == "conv2"
    assert consumer(t, "conv2") is None
    assert consumer(t, "conv3") is None
    # the shuffle lens then sweeps conv2's input channels: the fast engine agrees with full forward passes
    fast = cr.channel_shuffle(m, data, "conv2", engine="fast", batch_size=16)
    naive = cr.channel_shuffle(m, data, "conv2", engine="naive", batch_size=16)
    assert fast.meta["params"]["engine"] == "fast" and fast.metric == naive.metric
    assert max(abs(a - b) for a, b in zip(fast.mean_cosine["conv2"], naive.mean_cosine["conv2"])) < 1e-6


def test_residual_blocks_and_consumers_from_the_graph(data):
    torch.manual_seed(0)
    m = UserResidual().eval()
    t = Traced(m)
    adds = residual_adds(t)
    assert [a.convs for a in adds] == [("f1.0", "f1.2"), ("f2.0", "f2.2")]
    assert [a.name for a in adds] == ["add", "add_1"] and all(a.bypass == 0 for a in adds)
    assert consumer(t, "f1.0") == "f1.2" and consumer(t, "stem") is None and consumer(t, "side") is None
    res = cr.zero_ablation(m, data, mode="remove-branch")
    assert res.units == ["add", "add_1"] and all(res.changed.values())
    # removing the first branch by hand gives the same metric
    with torch.no_grad():
        x = torch.stack([data[i][0] for i in range(len(data))])
        y = torch.stack([data[i][1] for i in range(len(data))])
        h = torch.relu(m.stem(x))
        h = torch.relu(h + m.f2(h))
        out = m.head(torch.cat([h, m.side(h)], 1).mean((2, 3)))
    assert res.scores["add"] == pytest.approx(float((out.argmax(1) == y).float().mean()))


class NormsAndFunctions(nn.Module):
    """conv1 -> GroupNorm -> SiLU -> conv2 -> InstanceNorm -> F.gelu -> .relu() -> conv3 -> pool -> head: every
    step keeps channel c channel c."""

    def __init__(self):
        super().__init__()
        self.conv1, self.gn = nn.Conv2d(1, 8, 3, padding=1), nn.GroupNorm(4, 8)
        self.act = nn.SiLU()
        self.conv2, self.inorm = nn.Conv2d(8, 8, 3, padding=1), nn.InstanceNorm2d(8, affine=True)
        self.conv3 = nn.Conv2d(8, 4, 3, padding=1)
        self.head = nn.Linear(4, 10)

    def forward(self, x):
        h = self.conv2(self.act(self.gn(self.conv1(x))))
        h = torch.nn.functional.gelu(self.inorm(h)).relu()
        return self.head(self.conv3(h).mean((2, 3)))


def test_consumers_and_activations_through_group_and_instance_norms_and_functional_activations(data):
    """A group or instance norm keeps channel c channel c: conv1's consumer is conv2 and its activation the SiLU
    after the norm (before: no consumer, so analyze skipped the shuffle lens on such models, and the raw conv
    output was observed); a channel conv2 ignores is one whose shuffle changes nothing (cosine 1)."""
    torch.manual_seed(0)
    m = NormsAndFunctions().eval()
    t = Traced(m)
    assert (consumer(t, "conv1"), consumer(t, "conv2"), consumer(t, "conv3")) == ("conv2", "conv3", None)
    assert t.default_observe("conv1") == "act" and t.default_observe("conv2").label == "gelu(inorm)"  # a function
    with torch.no_grad():
        m.conv2.weight[:, 5] = 0.0
    res = cr.analyze(m, data, lenses=["shuffle"], progress=False)
    assert res.lenses["shuffle"]["status"] == "ran"
    cos = res.per_kernel["conv1"]["shuffle_cosine"]
    assert cos[5] == pytest.approx(1.0, abs=1e-12) and min(c for c in cos if c == c) < 0.999
