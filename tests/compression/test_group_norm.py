"""Group norms: a channel goes at the same place of every group of several channels (each group keeps as many,
as Torch-Pruning's own pruners cut them; before, one kernel of the conv feeding GroupNorm(4, 8) left it 7
channels in 4 groups and compress stopped), a group of one channel stays one, and a pruned model reloads."""

from __future__ import annotations

import pytest
import torch

import cnn_redundancy as cr
import cnn_redundancy.testing as T
from cnn_redundancy.compression.pruning.surgeon import Surgeon
from cnn_redundancy.testing import group_norm_net, random_images

X = torch.randn(4, 1, 12, 12)


def test_a_channel_goes_from_every_group_and_each_group_keeps_one():
    m = group_norm_net(groups=4)
    s = Surgeon(m, X)
    assert s.aligned("conv1", 1) == [1, 3, 5, 7] and s.room("conv1") == 4 and s.room("conv2") == 7
    s.remove("conv1", s.aligned("conv1", 1))
    assert (m.conv1.out_channels, m.norm1.num_channels, m.norm1.num_groups, m.conv2.in_channels) == (4, 4, 4, 4)
    assert s.original["conv1"] == [0, 2, 4, 6] and s.aligned("conv1", 0) == [0]  # now a channel a group
    s.remove("conv1", [2])
    assert (m.conv1.out_channels, m.norm1.num_groups, s.original["conv1"]) == (3, 3, [0, 2, 6])
    with torch.no_grad():
        assert m(X).shape == (4, 10)


def test_a_group_of_one_channel_stays_one_and_a_channel_the_next_conv_ignores_goes_without_a_change():
    m = group_norm_net(groups=8)  # a channel a group: each channel normalised on its own
    with torch.no_grad():
        m.conv2.weight[:, 3] = 0.0  # conv2 ignores channel 3
        y = m(X)
    s = Surgeon(m, X)
    assert s.aligned("conv1", 3) == [3] and s.room("conv1") == 7
    s.remove("conv1", [3])
    assert (m.norm1.num_channels, m.norm1.num_groups) == (7, 7)
    with torch.no_grad():
        assert torch.allclose(m(X), y, atol=1e-6, rtol=0)


def test_one_group_over_every_channel_is_not_aligned():
    s = Surgeon(group_norm_net(groups=1), X)
    assert s.aligned("conv1", 5) == [5] and s.room("conv1") == 7


@pytest.mark.parametrize("groups", [4, 8])
def test_compress_and_prune_cut_group_norms_and_the_checkpoint_reloads(groups, tmp_path):
    spec = f"{T.__file__}:group_norm_net"
    r = cr.compress(cr.get_model(spec, groups=groups), random_images(60, seed=3), target_macs=0.5, max_drop=None,
                    criterion="l1", baselines=("l1",), progress=False)  # fmt: skip
    norm = r.model.norm1
    assert r.final["macs_fraction"] <= 0.5 and norm.num_channels == r.model.conv1.out_channels < 8
    assert norm.num_channels % norm.num_groups == 0 and norm.num_groups == min(groups, norm.num_channels)
    assert r.baselines and r.baselines[0]["method"] == "torch-pruning l1"
    p = cr.prune(cr.get_model(spec, groups=groups), random_images(16), criterion="l1", steps=1, layers=["conv1"],
                 progress=False)  # fmt: skip
    assert 8 - p.model.conv1.out_channels == (4 if groups == 4 else 1)  # an aligned set: one channel of each group
    for model, name in ((r.model, "c.pt"), (p.model, "p.pt")):
        back = cr.load_checkpoint(cr.save_checkpoint(model, tmp_path / name), model=spec)
        with torch.no_grad():
            assert torch.equal(back(X), model(X))
