"""CIFAR ResNets, the PSPNet-style segmentation model, the shapes data set and Dice."""

from __future__ import annotations

import pytest
import torch

import cnn_redundancy as cr
from cnn_redundancy.core.metrics import Dice
from cnn_redundancy.core.structure import decomposition_layers, layer_blocks, residual_blocks, shortcut_convs


@pytest.mark.parametrize("name,blocks,params", [("resnet20", 9, 272_474), ("resnet32", 15, 466_906), ("resnet56", 27, 855_770)])
def test_cifar_resnet_sizes(name, blocks, params):
    m = cr.get_model(name)
    assert len(residual_blocks(m)) == blocks
    assert sum(p.numel() for p in m.parameters()) == params  # He et al.'s 0.27M / 0.46M / 0.85M (with projections)
    assert m.eval()(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_resnet34_cifar_and_one_channel_input():
    m = cr.get_model("resnet34_cifar", width=8)
    assert [len(getattr(m, f"layer{i}")) for i in range(1, 5)] == [3, 4, 6, 3]
    assert shortcut_convs(m) == ["layer2.0.downsample.0", "layer3.0.downsample.0", "layer4.0.downsample.0"]
    m1 = cr.get_model("resnet20", in_channels=1, input_size=28).eval()
    assert m1(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    with pytest.raises(ValueError, match="depths and widths"):
        cr.models.resnet.CifarResNet([1, 1], [4])


def test_decomposition_layers_cifar_and_torchvision():
    assert decomposition_layers(cr.get_model("resnet20")) == [
        "conv1", "layer2.0.conv1", "layer2.0.downsample.0", "layer3.0.conv1", "layer3.0.downsample.0"]
    r18 = cr.get_model("torchvision:resnet18")
    assert decomposition_layers(r18) == ["conv1"] + [
        f"layer{i}.0.{c}" for i in (2, 3, 4) for c in ("conv1", "downsample.0")]
    r50 = cr.get_model("torchvision:resnet50")
    d = decomposition_layers(r50)
    # every bottleneck's conv3 expands and (except layer1.0's) conv1 reduces; each stage has a projection
    assert all(f"{b}.conv3" in d and f"{b}.conv2" not in d for b in residual_blocks(r50))
    assert "layer1.0.conv1" not in d and "layer1.1.conv1" in d
    assert shortcut_convs(r50) == [f"layer{i}.0.downsample.0" for i in (1, 2, 3, 4)]
    assert len(d) == 1 + 16 + 15 + 4
    assert list(layer_blocks(r18)) == ["layer1", "layer2", "layer3", "layer4"]


def test_pspnet_shapes_and_segmentation_data():
    m = cr.get_model("pspnet_resnet", in_channels=1, num_classes=3, depths=(1, 1, 1, 1), width=4).eval()
    assert m(torch.zeros(2, 1, 32, 32)).shape == (2, 3, 32, 32)
    a = cr.load_dataset("shapes", "train", n_train=6, n_test=3)
    b = cr.load_dataset("shapes", "train", n_train=6, n_test=3)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    t = cr.load_dataset("shapes", "test", n_train=6, n_test=3)
    assert len(t) == 3 and not torch.equal(t.images, a.images[:3])
    x, mask = a[0]
    assert x.shape == (1, 32, 32) and mask.shape == (32, 32) and set(mask.unique().tolist()) <= {0, 1, 2}
    # shapes are brighter than the background
    assert a.images[:, 0][a.labels > 0].float().mean() > a.images[:, 0][a.labels == 0].float().mean() + 50


def test_dice_known_masks():
    target = torch.zeros(1, 4, 4, dtype=torch.long)
    target[0, :2] = 1  # 8 foreground pixels
    pred = torch.zeros(1, 4, 4, dtype=torch.long)
    pred[0, :1] = 1  # 4 predicted, all correct
    logits = torch.nn.functional.one_hot(pred, 2).permute(0, 3, 1, 2).float()
    d = Dice()
    d.update(logits, target)
    assert d.compute() == pytest.approx(2 * 4 / (4 + 8))
    assert cr.evaluate(torch.nn.Identity(), torch.utils.data.TensorDataset(logits, target), "dice") == pytest.approx(2 / 3)
