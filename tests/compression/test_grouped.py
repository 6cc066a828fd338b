"""Grouped (not depthwise) convs: one kernel goes at the same place of every group, each group keeps two
(with one, Torch-Pruning takes the conv for a depthwise one and cuts the layer feeding it wrong), a step
counts every kernel it removes, and a baseline Torch-Pruning fails on is named while the others run."""

from __future__ import annotations

import pytest
import torch

import cnn_redundancy as cr
from cnn_redundancy.compression.pruning.schedule import Shrinker, mac_share
from cnn_redundancy.compression.pruning.surgeon import Surgeon
from cnn_redundancy.core.cost import count_macs
from cnn_redundancy.testing import grouped_conv_net, random_images

X = torch.randn(2, 1, 12, 12)


def test_a_grouped_conv_keeps_two_kernels_per_group_and_the_layer_before_it_still_prunes():
    m = grouped_conv_net()
    s = Surgeon(m, X)
    assert s.room("conv2") == 4 and s.room("conv1") == 7  # 8 kernels in 2 groups keep 2 each; conv1 keeps one
    s.remove("conv2", s.aligned("conv2", 0))
    s.remove("conv2", s.aligned("conv2", 0))
    assert m.conv2.out_channels == 4 and s.room("conv2") == 0 and not s.can_remove("conv2")
    with pytest.raises(ValueError, match="2 kernel\\(s\\) of 'conv2' cannot go: at most 0 can"):
        s.remove("conv2", s.aligned("conv2", 0))
    s.remove("conv1", s.aligned("conv1", 0))  # with one kernel per group left in conv2, this broke the model
    assert (m.conv1.out_channels, m.conv2.in_channels, m.conv2.out_channels) == (6, 6, 4)
    with torch.no_grad():
        assert m(X).shape == (2, 10)


def test_a_step_counts_every_kernel_of_the_aligned_set_it_removes():
    sh = Shrinker(grouped_conv_net(), X, ["conv2"], 0)
    share = mac_share(sh.surgeon, "conv2", count_macs(sh.model, X))[0]
    picks = sh.pick({"conv2": torch.arange(8.0)}, budget=2 * share)  # one kernel from each group: one pick
    assert picks == [("conv2", 0)]
    assert sh.remove(picks) == {"conv2": [0, 4]}


def test_compress_keeps_two_kernels_per_group_however_low_the_target():
    r = cr.compress(grouped_conv_net(), random_images(60, seed=3), target_macs=0.05, max_drop=None, criterion="l1",
                    baselines=(), progress=False)  # fmt: skip
    assert r.model.conv2.out_channels == 2 * r.model.conv2.groups
    with torch.no_grad():
        assert r.model(X).shape == (2, 10)


def test_a_baseline_torch_pruning_fails_on_is_named_and_the_others_run(monkeypatch):
    import torch_pruning as tp

    from cnn_redundancy.compression import baselines

    def fails(self, group):  # as Torch-Pruning's magnitude importance fails on ResNeXt and RegNet
        return torch.zeros(1)[torch.tensor([1])]

    fails.__code__ = fails.__code__.replace(co_filename=tp.pruner.importance.__file__)  # raised inside Torch-Pruning
    broken = type("Broken", (tp.importance.Importance,), {"__call__": fails})
    real = baselines._importance
    monkeypatch.setattr(baselines, "_importance", lambda kind, seed: broken() if kind == "l1" else real(kind, seed))
    r = cr.compress(grouped_conv_net(), random_images(60, seed=3), target_macs=0.5, max_drop=None, criterion="l1",
                    baselines=("l1", "random"), progress=False)  # fmt: skip
    assert [b["method"] for b in r.baselines] == ["random"] and "torch-pruning l1" not in r.curves
    why = r.data["baselines_failed"]["torch-pruning l1"]
    assert why.startswith("IndexError in its importance.py, fails: index 1 is out of bounds")
    assert f"torch-pruning l1 at the same MACs: not measured, Torch-Pruning failed ({why})" in r.headline()
