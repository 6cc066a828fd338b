"""A conv whose kernels are the model's output channels (SqueezeNet's classifier, a segmentation head):
every kernel is a class, so compress and prune leave it whole and say so."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import cnn_redundancy as cr
from cnn_redundancy.compression.pruning.surgeon import Surgeon
from cnn_redundancy.testing import random_images


class ConvHead(nn.Module):
    """conv1 -> relu -> head (1x1 conv to the 10 classes) -> relu -> global average: SqueezeNet's classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 10, 1)

    def forward(self, x):
        return torch.relu(self.head(torch.relu(self.conv1(x)))).mean((2, 3))


def _model():
    torch.manual_seed(0)
    return ConvHead().eval()


def test_the_output_conv_has_no_room_and_is_named():
    s = Surgeon(_model(), torch.randn(2, 1, 12, 12))
    assert s.room("head") == 0 and not s.can_remove("head") and s.room("conv1") == 7
    assert s.output_layers(["conv1", "head"]) == ["head"]


def test_compress_keeps_every_class():
    r = cr.compress(_model(), random_images(60, seed=3), target_macs=0.3, max_drop=None, criterion="l1",
                    baselines=("l1",), progress=False)  # fmt: skip
    assert r.model.head.out_channels == 10 and r.model(torch.randn(2, 1, 12, 12)).shape == (2, 10)
    assert r.model.conv1.out_channels < 8 and r.data["output_layers"] == ["head"]
    assert ("left as they are: the conv layers whose kernels are the model's output channels (each a class): head"
            in r.headline())


def test_prune_never_takes_a_class():
    r = cr.prune(_model(), random_images(16), criterion="l1", steps=7, progress=False)
    assert r.model.head.out_channels == 10 and r.model.conv1.out_channels == 1 and r.meta["output_layers"] == ["head"]


class SegHead(nn.Module):
    """body -> relu -> head (1x1 conv to 5 classes), the head's output returned as it is (a segmentation model's
    logits per pixel): alone, in a dict, or first of a tuple beside the features."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.body, self.head = nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 5, 1)

    def forward(self, x):
        h = torch.relu(self.body(x))
        return {"plain": lambda: self.head(h), "dict": lambda: {"out": self.head(h)}, "tuple": lambda: (self.head(h), h)}[self.kind]()


@pytest.mark.parametrize(("kind", "output"), [("plain", None), ("dict", "out"), ("tuple", 0)])
def test_a_head_returned_as_it_is_keeps_every_class(kind, output):
    """Torch-Pruning adds no output node after a conv the model returns as it is: prune took such a head from 5
    classes to 1 and compress then stopped on a label outside the model's classes."""
    torch.manual_seed(0)
    s = Surgeon(SegHead(kind).eval(), torch.randn(2, 1, 12, 12), output)
    assert s.room("head") == 0 and s.output_layers(["body", "head"]) == ["head"] and s.room("body") == 7
    torch.manual_seed(0)
    r = cr.prune(SegHead(kind).eval(), random_images(8), criterion="l1", steps=7, output=output, progress=False)
    assert r.model.head.out_channels == 5 and r.model.body.out_channels == 1 and r.meta["output_layers"] == ["head"]
