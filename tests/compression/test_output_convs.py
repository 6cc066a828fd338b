"""A conv whose kernels are the model's output channels (SqueezeNet's classifier, a segmentation head):
every kernel is a class, so compress and prune leave it whole and say so."""

from __future__ import annotations

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
