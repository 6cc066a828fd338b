import pytest
import torch
from torch import nn

from cnn_redundancy import get_model
from cnn_redundancy.core.graph import Split, SplitState, SplitUnavailable, Traced, default_observe


def _check(model, layer, x, observe=()):
    s = Split(model.eval(), layer, observe=list(observe))
    st = s.upstream(x)
    out, obs = s.downstream(st, s.layer_forward(st.layer_input))
    assert torch.allclose(out, model(x), atol=1e-5)
    return s, st, obs


def test_split_matches_full_model_lenet_and_resnet():
    _check(get_model("lenet5"), "conv2", torch.randn(3, 1, 28, 28), ["act2"])
    tv = get_model("torchvision:resnet18", num_classes=10)
    x = torch.randn(2, 3, 32, 32)
    s, st, _ = _check(tv, "layer2.0.conv1", x)
    assert s.n_frontier == 1  # the block input feeds the downsample shortcut
    _check(tv, "layer2.0.downsample.0", x)
    _check(tv, "conv1", x)


def test_downstream_really_uses_the_given_layer_output():
    m = get_model("lenet5").eval()
    s = Split(m, "conv2", observe=["act2"])
    st = s.upstream(torch.randn(2, 1, 28, 28))
    out, (act,) = s.downstream(st, torch.zeros(2, 16, 10, 10))
    assert torch.all(act == 0)
    (obs,) = s.observed(st, -torch.ones(2, 16, 10, 10))
    assert torch.all(obs == 0)  # relu of negatives


class _InplaceOnFrontier(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(1, 2, 1)
        self.b = nn.Conv2d(2, 2, 1)

    def forward(self, x):
        h = self.a(x)
        y = self.b(h)
        h += y  # in-place on a value computed upstream of b
        return h.sum((2, 3))


def test_inplace_ops_do_not_corrupt_cached_upstream_values():
    m = _InplaceOnFrontier().eval()
    x = torch.randn(2, 1, 4, 4)
    s = Split(m, "b")
    st = s.upstream(x)
    lo = s.layer_forward(st.layer_input)
    first, _ = s.downstream(st, lo)
    second, _ = s.downstream(st, lo)
    assert torch.allclose(first, second) and torch.allclose(first, m(x))


def _inplace_vgg():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(4, 4, 3, padding=1),
                         nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).eval()  # fmt: skip


def test_recorder_takes_each_value_as_computed_before_a_later_inplace_relu():
    m = _inplace_vgg()
    x = torch.randn(2, 1, 6, 6)
    traced = Traced(m)
    s = traced.split("2", ["2"])  # observe the conv's own output, which ReLU(inplace=True) overwrites next
    rec = traced.recorder([*s.input_points, s.output_point])
    out, (inp, conv_out) = rec(x)
    h = m[1](m[0](x).clone())
    assert torch.equal(inp, h) and torch.equal(conv_out, m[2](h))
    assert conv_out.min() < 0  # taken before the ReLU ran on it
    assert torch.allclose(out, m(x))
    # the downstream part returns the observed conv output as it was too, not after the in-place ReLU
    (obs,) = s.observed(s.upstream(x), m[2](h))
    assert torch.equal(obs, m[2](h))
    head = traced.recorder([s.output_point], output=False)
    none, (early,) = head(x)
    assert none is None and torch.equal(early, conv_out)


class _MutatedUpstream(nn.Module):
    """``y`` feeds the layer, then a ReLU changes it in place (upstream of the layer), then the sum reads it."""

    def __init__(self, twice: bool = False):
        super().__init__()
        self.a, self.b, self.twice = nn.Conv2d(1, 2, 1), nn.Conv2d(2, 2, 1), twice

    def forward(self, x):
        y = self.a(x)
        z = self.b(y)
        w = z * y if self.twice else z
        torch.relu_(y)
        return (w + y).sum((2, 3))


def test_frontier_value_after_upstream_inplace_ops_and_layer_input_before():
    m = _MutatedUpstream().eval()
    x = torch.randn(3, 1, 4, 4)
    t = Traced(m)
    s = t.split("b")
    rec = t.recorder([*s.frontier_points, *s.input_points, s.output_point])
    out, (front, inp, lo) = rec(x)
    y = m.a(x)
    assert torch.equal(inp, y) and torch.equal(front, torch.relu(y)) and inp.min() < 0
    full, _ = s.downstream(SplitState((front,), inp), lo)
    assert torch.allclose(full, m(x)) and torch.allclose(out, m(x))
    with pytest.raises(SplitUnavailable, match="in-place operation changes"):
        Traced(_MutatedUpstream(twice=True)).split("b")


class _ViewInplace(nn.Module):
    """In-place ops on views whose results nothing reads: they change the conv outputs all the same."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.c1, self.c2, self.fc = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1), nn.Linear(4 * 36, 3)

    def forward(self, x):
        x = self.c1(x)
        x.view(x.shape[0], -1).relu_()
        y = self.c2(x)
        y[:, :2].zero_()  # through an indexed view
        return self.fc(y.flatten(1))


def test_mutators_follow_views():
    from cnn_redundancy.core.graph import _mutators

    t = Traced(_ViewInplace())
    names = {n.name: n for n in t.order}
    assert [u.name for u in _mutators(t.gm, names["c1"], t.pos)] == ["relu_"]
    assert [u.name for u in _mutators(t.gm, names["c2"], t.pos)] == ["zero_"]
    assert _mutators(t.gm, names["fc"], t.pos) == []


@pytest.mark.parametrize("layer", ["c1", "c2"])
def test_downstream_keeps_inplace_ops_on_views_and_leaves_the_given_output_intact(layer):
    m = _ViewInplace().eval()
    x = torch.randn(3, 1, 6, 6)
    s = Split(m, layer, observe=[layer])
    st = s.upstream(x)
    lo = s.layer_forward(st.layer_input)
    kept = lo.clone()
    out, (obs,) = s.downstream(st, lo)
    assert torch.allclose(out, m(x), atol=1e-6)  # the relu_ / assignment whose result is unused still ran
    assert torch.equal(lo, kept) and torch.equal(obs, kept)  # the caller's tensor and the observation as computed
    assert kept.min() < 0  # so a relu_ on it would have shown
    (only,) = s.observed(st, lo)
    assert torch.equal(only, kept) and torch.equal(lo, kept)


class _ReadAfterDownstreamChange(nn.Module):
    """``a`` is changed in place through a view by a node that depends on the layer; ``a`` is read after."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.c0, self.c1 = nn.Conv2d(1, 2, 1), nn.Conv2d(1, 2, 1)

    def forward(self, x):
        a = self.c0(x)
        v = a.view(a.shape[0], -1)
        y = self.c1(x)
        v.add_(y.flatten(1))
        return (a * 2).sum((2, 3))


def test_a_value_read_after_a_downstream_change_through_another_view_cannot_be_split():
    """``a * 2`` reads what the layer changed, so it is downstream too; ``a`` and its view ``v`` are then two
    frontier values sharing memory that the downstream part changes: not splittable, rather than wrong."""
    t = Traced(_ReadAfterDownstreamChange())
    from cnn_redundancy.core.graph import _downstream

    down = {n.name for n in _downstream(t.gm, t.order, t.pos, t.node("c1"))}
    assert {"add_", "mul"} <= down and "c0" not in down
    with pytest.raises(SplitUnavailable, match="shares memory"):
        t.split("c1")


class _Dynamic(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 1)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow is not traceable
            return self.conv(x)
        return x


def test_untraceable_model_and_observe_errors():
    with pytest.raises(SplitUnavailable, match="not fx-traceable"):
        Split(_Dynamic(), "conv")
    assert default_observe(_Dynamic(), "conv") == "conv"
    with pytest.raises(ValueError, match="not computed after"):
        Split(get_model("lenet5"), "conv2", observe=["act1"])


def test_default_observe():
    assert default_observe(get_model("lenet5"), "conv1") == "act1"
    tv = get_model("torchvision:resnet18")
    assert default_observe(tv, "layer1.0.conv1") == "layer1.0.relu"  # through bn1
    assert default_observe(tv, "layer1.0.conv2") == "layer1.0.conv2"  # bn2 then a residual add


def _count_traces(monkeypatch):
    import cnn_redundancy.core.graph as g

    calls = []
    real = g._Tracer.trace

    def counted(self, root, *a, **kw):
        calls.append(type(root).__name__)
        return real(self, root, *a, **kw)

    monkeypatch.setattr(g._Tracer, "trace", counted)
    return calls


def test_one_trace_per_analysis_whatever_the_number_of_layers(monkeypatch):
    import cnn_redundancy as cr
    from cnn_redundancy.testing import TinyCNN, random_images

    calls = _count_traces(monkeypatch)
    resnet = get_model("resnet20", in_channels=1, input_size=12, width=4).eval()
    data = random_images(8, (1, 12, 12))
    res = cr.zero_ablation(resnet, data, progress=False)
    assert len(res.units) == 21 and len(calls) == 1
    calls.clear()
    cr.distinctiveness(resnet, data)
    assert len(calls) == 1
    calls.clear()
    shuffled = cr.channel_shuffle(TinyCNN().eval(), random_images(8), "conv*")
    assert shuffled.layers == ["conv1", "conv2"] and len(calls) == 1


class _Caching(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.calls = 0
        self.features = None

    def forward(self, x):
        self.calls += 1
        self.features = self.conv(x)
        return self.features.mean((2, 3))


def test_tracing_leaves_attributes_a_forward_writes():
    m = _Caching()
    s = Split(m, "conv")
    assert m.calls == 0 and m.features is None
    x = torch.randn(2, 1, 5, 5)
    out, _ = s.downstream(s.upstream(x), m.conv(x))
    assert torch.allclose(out, m(x)) and m.calls == 1


def test_module_names_fx_cannot_write_fall_back_to_hooks():
    import cnn_redundancy as cr
    from cnn_redundancy.testing import random_images

    inner = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 2, 3, padding=1))
    m = nn.Sequential()
    m.add_module('odd"name', inner)
    m.add_module("pool", nn.AdaptiveAvgPool2d(1))
    m.add_module("flat", nn.Flatten())
    m.eval()
    data = random_images(8, (1, 6, 6), classes=2)
    with pytest.warns(UserWarning, match="hooks"):
        auto = cr.channel_shuffle(m, data, 'odd"name.2', metric=None)
    naive = cr.channel_shuffle(m, data, 'odd"name.2', metric=None, engine="naive")
    assert auto.cosine == naive.cosine and auto.meta["params"]["engine"] == "naive"


class RootParameters(nn.Module):
    """A parameter and a buffer of the model itself (as a ViT's class token), read in the forward pass."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.scale = nn.Parameter(torch.tensor(2.0))
        self.register_buffer("shift", torch.tensor(0.5))

    def forward(self, x):
        h = torch.relu(self.conv1(x)) * self.scale + self.shift
        return self.conv2(h).mean((2, 3))


def test_the_masked_pass_reads_the_models_own_parameters():
    """analyze's removable-MACs estimate stopped on a ViT: the masked pass had the submodules, not the
    parameters held by the model itself ('no attribute class_token')."""
    torch.manual_seed(0)
    m = RootParameters().eval()
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        m.conv2.weight[:, 1] = 0.0  # conv2 ignores conv1's kernel 1
        gm, masks = Traced(m).masked({"conv1": "conv1"})
        assert torch.equal(gm(x), m(x))
        masks["conv1"][0, 1] = 0.0
        assert torch.equal(gm(x), m(x))  # nothing reads it
        masks["conv1"][0, 2] = 0.0
        assert not torch.allclose(gm(x), m(x))
    assert gm.scale is m.scale  # shared, not copied
