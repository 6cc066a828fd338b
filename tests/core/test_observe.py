"""A nonlinearity the model applies as a function (``F.relu(self.bn1(self.conv1(x)))``, ``x.relu()``) is where
a layer's activation is read, as an activation module is: a model and its twin written with ``nn.ReLU``
modules (the same weights) give the same results. Before, such a layer was read at its raw conv output, so
no kernel was ever dead and every angle was an angle between pre-activations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import cnn_redundancy as cr
from cnn_redundancy.core.graph import Activation, Traced
from cnn_redundancy.testing import random_images


class Twin(nn.Module):
    """conv1 -> bn1 -> relu -> conv2 -> relu -> pool -> fc; ``functional``: the relus as ``F.relu(...,
    inplace=True)`` and ``.relu()`` (no parameters either way, so both twins hold the same weights)."""

    def __init__(self, functional: bool) -> None:
        super().__init__()
        self.functional = functional
        self.conv1, self.bn1 = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.fc = nn.Conv2d(8, 6, 3, padding=1), nn.Linear(6, 10)
        self.act1, self.act2 = nn.ReLU(), nn.ReLU()

    def forward(self, x):
        if self.functional:
            h = F.relu(self.bn1(self.conv1(x)), inplace=True)
            return self.fc(self.conv2(h).relu().mean((2, 3)))
        h = self.act1(self.bn1(self.conv1(x)))
        return self.fc(self.act2(self.conv2(h)).mean((2, 3)))


def _twins():
    torch.manual_seed(0)
    module = Twin(False).eval()
    with torch.no_grad():
        module.bn1.bias[3] = -100.0  # kernel 3 of conv1: zero after its relu on every image
        module.bn1.running_mean.uniform_(-0.2, 0.2)
    functional = Twin(True).eval()
    functional.load_state_dict(module.state_dict())
    return module, functional


def _without_observe(d):
    return {k: v for k, v in d.items() if k not in ("meta", "observed")}


def test_the_function_is_the_observation_point():
    _, m = _twins()
    t = Traced(m)
    o1, o2 = t.default_observe("conv1"), t.default_observe("conv2")
    assert isinstance(o1, Activation) and (str.__str__(o1), o1.label) == ("bn1", "relu(bn1)")
    assert (str.__str__(o2), o2.label) == ("conv2", "relu(conv2)") and o2 != "conv2" and o1 != "bn1"
    x = torch.randn(2, 8, 4, 4)
    assert torch.equal(o1(x), torch.relu(x)) and x.min() < 0  # applied out of place: the input is unchanged


@pytest.mark.parametrize("analysis", ["dead", "distinctiveness", "cka", "shuffle", "labels"])
def test_a_functional_relu_gives_what_a_relu_module_gives(analysis):
    module, functional = _twins()
    data = random_images(48, seed=2)
    x = data.tensors[0][:4]
    y = functional(x).detach()
    run = {
        "dead": lambda m: cr.dead_kernels(m, data, progress=False),
        "distinctiveness": lambda m: cr.distinctiveness(m, data, progress=False),
        "cka": lambda m: cr.cka(m, data, progress=False),
        "shuffle": lambda m: cr.channel_shuffle(m, data, "conv2", channels=[0, 2, 5], metric=None, progress=False),
        "labels": lambda m: cr.strongest_activation_labels(m, data, feature_maps=4, progress=False),
    }[analysis]
    a, b = run(module).to_dict(), run(functional).to_dict()
    if analysis == "dead":
        assert a["dead"]["conv1"] == [3] == b["dead"]["conv1"]
    assert _without_observe(a) == _without_observe(b)
    with torch.no_grad():
        assert torch.equal(functional(x), y)  # the model is left as it was (the in-place relu too)


def test_analyze_reads_the_functional_relu_and_names_it():
    module, functional = _twins()
    data = random_images(60, seed=2)
    a = cr.analyze(module, data, lenses=["dead", "distinctiveness"], progress=False)
    b = cr.analyze(functional, data, lenses=["dead", "distinctiveness"], progress=False)
    assert a.per_kernel == b.per_kernel and a.answer["removable"] == b.answer["removable"]
    assert b.results["distinctiveness"].to_dict()["observed"] == {"conv1": "relu(bn1)", "conv2": "relu(conv2)"}
    assert b.answer["dead"] == a.answer["dead"] and a.per_kernel["conv1"]["dead"][3]


class ConvReLU(nn.Conv2d):
    """A conv with its nonlinearity built in: fx traces through it unless it is a leaf, so a trace that makes it
    one numbers the later relu nodes otherwise."""

    def forward(self, x):
        return F.relu(super().forward(x))


class Retraced(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.c2 = nn.Conv2d(1, 8, 3, padding=1), ConvReLU(8, 8, 3, padding=1)
        self.conv3, self.conv4 = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 6, 3, padding=1)
        self.fc = nn.Linear(6, 10)

    def forward(self, x):
        h = F.relu(self.conv3(self.c2(F.relu(self.conv1(x)))))
        return self.fc(F.relu(self.conv4(h)).mean((2, 3)))


def test_the_activation_is_found_in_another_trace_of_the_model():
    """The sweep traces the model again with its layers as leaves; found by its node name from the first trace,
    conv3's activation was read at conv4's relu (6 channels for conv3's 8), and with conv4 swept too the fast
    path stopped ('not computed after layer'). c2's own forward applies its relu: the fast path's change of one
    input channel, linear through a plain conv, gave it cosines up to 0.35 off (it now runs c2's forward)."""
    torch.manual_seed(0)
    m, data = Retraced().eval(), random_images(24, seed=1)
    layers = ["c2", "conv3", "conv4"]
    fast = cr.channel_shuffle(m, data, layers, channels=[0, 1], metric=None, engine="fast", progress=False)
    naive = cr.channel_shuffle(m, data, layers, channels=[0, 1], metric=None, engine="naive", progress=False)
    assert fast.to_dict()["observed"] == {"c2": "c2", "conv3": "relu(conv3)", "conv4": "relu(conv4)"}
    assert len(fast.cosine["conv3"][0]) == 8
    for layer in layers:
        for a, b in zip(fast.cosine[layer], naive.cosine[layer]):
            assert a == pytest.approx(b, abs=1e-6)
