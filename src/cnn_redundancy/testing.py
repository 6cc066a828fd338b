"""Tiny models with known answers, for tests, docs and users checking the toolkit on their machine.

Each builder returns a model in eval mode whose analysis results are known in advance.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

__all__ = ["TinyCNN", "DictTinyCNN", "AuxHeadCNN", "reparametrized_net", "single_conv", "duplicated_kernels_net", "ignored_channel_net", "cascade_net", "random_images"]


class TinyCNN(nn.Module):
    """conv1 (c_in->c1, 3x3, pad 1) -> act1 -> pool -> conv2 (c1->c2, 3x3, pad 1) -> act2 -> pool -> fc."""

    def __init__(self, in_channels: int = 1, c1: int = 4, c2: int = 6, num_classes: int = 10, input_size: int = 12) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, c1, 3, padding=1)
        self.act1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1)
        self.act2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(c2 * (input_size // 4) ** 2, num_classes)
        self.input_shape = (in_channels, input_size, input_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.act1(self.conv1(x)))
        x = self.pool2(self.act2(self.conv2(x)))
        return self.fc(self.flatten(x))


class DictTinyCNN(TinyCNN):
    """A :class:`TinyCNN` returning ``{"features": ..., "logits": ...}``, as models that hand back their
    embedding do: its weights load from a TinyCNN's, ``logits`` is that TinyCNN's output and ``features``
    the flattened input of its ``fc`` (conv2's channels: removing one of them changes its shape; traced
    first among the outputs, it misled Torch-Pruning's graph about ``fc``'s inputs)."""

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:  # type: ignore[override]
        x = self.pool1(self.act1(self.conv1(x)))
        features = self.flatten(self.pool2(self.act2(self.conv2(x))))
        return {"features": features, "logits": self.fc(features)}


class AuxHeadCNN(TinyCNN):
    """A :class:`TinyCNN` with a conv ``aux`` that only training runs, as GoogLeNet's and Inception's auxiliary
    classifiers: a forward pass in eval mode never calls it."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.aux = nn.Conv2d(self.conv1.out_channels, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pool1(self.act1(self.conv1(x)))
        if self.training:
            self.aux(h)
        return self.fc(self.flatten(self.pool2(self.act2(self.conv2(h)))))


def reparametrized_net(*, style: str = "parametrize", seed: int = 0, input_size: int = 12) -> TinyCNN:
    """A :class:`TinyCNN` whose ``conv1`` is weight-normalized and ``conv2`` spectrally normalized, with
    ``torch.nn.utils.parametrizations`` (``style="parametrize"``) or the older hooks of
    ``torch.nn.utils.weight_norm`` and ``spectral_norm`` (``style="hooks"``). In eval mode, after one
    forward pass with gradients on, as after training: the hooks then hold a weight computed in it."""
    import warnings

    from torch.nn.utils import parametrizations, spectral_norm, weight_norm

    if style not in ("parametrize", "hooks"):
        raise ValueError(f"style must be 'parametrize' or 'hooks', not {style!r}")
    torch.manual_seed(seed)
    m = TinyCNN(input_size=input_size)
    with warnings.catch_warnings():  # the hooks are deprecated
        warnings.simplefilter("ignore", FutureWarning)
        wn, sn = (parametrizations.weight_norm, parametrizations.spectral_norm) if style == "parametrize" \
            else (weight_norm, spectral_norm)  # fmt: skip
        m.conv1, m.conv2 = wn(m.conv1), sn(m.conv2)
    m.eval()
    m(torch.randn(2, 1, input_size, input_size))
    return m


def _seeded(seed: int):
    return torch.Generator().manual_seed(seed)


def single_conv(kernel: torch.Tensor, *, bias: float | None = None) -> nn.Sequential:
    """One conv layer (named ``conv``) whose weight is ``kernel`` ``[out, in, kh, kw]``; padding keeps the size."""
    out_c, in_c, kh, kw = kernel.shape
    conv = nn.Conv2d(in_c, out_c, (kh, kw), padding=(kh // 2, kw // 2), bias=bias is not None)
    with torch.no_grad():
        conv.weight.copy_(kernel)
        if bias is not None:
            conv.bias.fill_(bias)
    return nn.Sequential(OrderedDict(conv=conv)).eval()


def duplicated_kernels_net(*, seed: int = 0, in_channels: int = 1, input_size: int = 12) -> TinyCNN:
    """A TinyCNN whose conv1 kernels 0 and 1 are identical (weights and bias), and conv2 kernel 3 a copy of 2."""
    torch.manual_seed(seed)
    m = TinyCNN(in_channels=in_channels, input_size=input_size)
    with torch.no_grad():
        m.conv1.weight[1] = m.conv1.weight[0]
        m.conv1.bias[1] = m.conv1.bias[0]
        m.conv2.weight[3] = m.conv2.weight[2]
        m.conv2.bias[3] = m.conv2.bias[2]
    return m.eval()


def ignored_channel_net(channel: int = 2, *, seed: int = 0, input_size: int = 12) -> TinyCNN:
    """A TinyCNN whose conv2 ignores input channel ``channel`` (all its weights are zero)."""
    torch.manual_seed(seed)
    m = TinyCNN(input_size=input_size)
    with torch.no_grad():
        m.conv2.weight[:, channel] = 0.0
    return m.eval()


def cascade_net(k1: torch.Tensor, k2: torch.Tensor) -> nn.Sequential:
    """Two single-channel convs in a row (``conv1``, ``act``, ``conv2``), no bias, ReLU between them."""
    c1 = nn.Conv2d(1, 1, k1.shape[-2:], padding=(k1.shape[-2] // 2, k1.shape[-1] // 2), bias=False)
    c2 = nn.Conv2d(1, 1, k2.shape[-2:], padding=(k2.shape[-2] // 2, k2.shape[-1] // 2), bias=False)
    with torch.no_grad():
        c1.weight.copy_(k1.reshape(c1.weight.shape))
        c2.weight.copy_(k2.reshape(c2.weight.shape))
    return nn.Sequential(OrderedDict(conv1=c1, act=nn.ReLU(), conv2=c2)).eval()


def random_images(n: int = 64, shape: tuple[int, int, int] = (1, 12, 12), classes: int = 10, *, seed: int = 0):
    """A TensorDataset of ``n`` random images and labels (for tests that need no real data)."""
    g = _seeded(seed)
    x = torch.randn(n, *shape, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    return torch.utils.data.TensorDataset(x, y)


# --------------------------------------------------------------------------- zero-ablation (issue 4)


def zero_branch_resnet(*, seed: int = 0, input_size: int = 12, zero_block: str = "layer1.1") -> nn.Module:
    """A ResNet-20 of width 4 (4/8/16 channels, one input channel) with random BN parameters whose block
    ``zero_block`` ends in a BN with zero weight and bias: its branch adds exactly nothing, so
    zeroing its convs or removing its branch leaves the output unchanged."""
    from .models import get_model

    torch.manual_seed(seed)
    m = get_model("resnet20", in_channels=1, num_classes=10, width=4, input_size=input_size)
    g = _seeded(seed)
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            with torch.no_grad():
                mod.weight.copy_(1 + 0.3 * torch.randn(mod.num_features, generator=g))
                mod.bias.copy_(0.2 * torch.randn(mod.num_features, generator=g))
                mod.running_mean.copy_(0.1 * torch.randn(mod.num_features, generator=g))
                mod.running_var.copy_(0.5 + torch.rand(mod.num_features, generator=g))
    bn = m.get_submodule(zero_block).bn2
    with torch.no_grad():
        bn.weight.zero_()
        bn.bias.zero_()
    return m.eval()


class PlainNet(nn.Module):
    """A VGG-like net without shortcuts: conv1 -> relu -> conv2 -> relu -> conv3 -> relu -> pool -> fc (no bias)."""

    def __init__(self, in_channels: int = 1, width: int = 6, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(width, 2 * width, 3, padding=1, bias=False)
        self.relu3 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(2 * width, num_classes, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu2(self.conv2(self.relu1(self.conv1(x))))
        return self.fc(self.flatten(self.pool(self.relu3(self.conv3(x)))))


# --- layer skipping (routing.py, skipnet.py) -------------------------------------------------

__all__ += ["layer_response_net", "layer_response_images"]


def layer_response_net(input_size: int = 4) -> nn.Module:
    """An ``equal_width_cnn`` (3 conv layers, 3 maps, 1x1 kernels, no bias) whose layer ``k`` map 0 is input channel ``k``.

    conv1 is the identity, conv2 copies channel 1 to its map 0 (and keeps 1, 2), conv3 copies
    channel 2 to its map 0 (and keeps 1, 2). With non-negative images, the mean absolute
    activation of map 0 of layer ``k`` is the mean of input channel ``k``: which images excite
    which layer is known in advance (see :func:`layer_response_images`).
    """
    from .models import get_model

    m = get_model("equal_width_cnn", channels=[3, 3, 3], in_channels=3, kernel_size=1, input_size=input_size)
    with torch.no_grad():
        for conv, src in ((m.conv1, (0, 1, 2)), (m.conv2, (1, 1, 2)), (m.conv3, (2, 1, 2))):
            conv.weight.zero_()
            conv.bias.zero_()
            for out_c, in_c in enumerate(src):
                conv.weight[out_c, in_c] = 1.0
    return m.eval()


def layer_response_images(input_size: int = 4) -> torch.utils.data.TensorDataset:
    """Eight 3-channel constant images for :func:`layer_response_net`; channel ``k`` drives layer ``k``.

    With ``top=2`` and ``feature_maps=1``: layer 0 selects images 0 and 1, layer 1 images 2 and 3,
    layer 2 images 4 and 1. Image 1 is selected by layers 0 and 2, so it is labelled 2.
    Expected: indices ``[0, 1, 2, 3, 4]``, labels ``[0, 2, 1, 1, 2]``.
    """
    levels = torch.tensor(
        [  # channel 0, 1, 2
            [9.0, 0.0, 0.0],
            [8.0, 0.0, 7.0],
            [0.0, 9.0, 0.0],
            [1.0, 8.0, 0.0],
            [0.0, 1.0, 9.0],
            [2.0, 2.0, 2.0],
            [3.0, 3.0, 1.0],
            [0.5, 0.5, 0.5],
        ]
    )
    x = levels[:, :, None, None].expand(-1, -1, input_size, input_size).contiguous()
    return torch.utils.data.TensorDataset(x, torch.arange(len(x)) % 2)


# --- distinctiveness pruning (issue 3) -----------------------------------------------------------

__all__ += ["GroupedConvNet", "grouped_conv_net", "group_norm_net", "complementary_pair_net", "constant_images"]


class GroupedConvNet(nn.Module):
    """conv1 (c_in->8) -> act1 -> conv2 (8->8, groups=2) -> act2 -> conv3 (8->4) -> act3 -> pool -> fc."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, input_size: int = 12) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 8, 3, padding=1)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.act2 = nn.ReLU()
        self.conv3 = nn.Conv2d(8, 4, 3, padding=1)
        self.act3 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(4, num_classes)
        self.input_shape = (in_channels, input_size, input_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act2(self.conv2(self.act1(self.conv1(x))))
        return self.fc(self.flatten(self.pool(self.act3(self.conv3(x)))))


def grouped_conv_net(*, seed: int = 0, in_channels: int = 1, input_size: int = 12) -> GroupedConvNet:
    """A small net with a grouped (groups=2, not depthwise) conv, seeded weights, eval mode."""
    torch.manual_seed(seed)
    return GroupedConvNet(in_channels=in_channels, input_size=input_size).eval()


def group_norm_net(*, groups: int = 4, seed: int = 0, input_size: int = 12) -> nn.Sequential:
    """``conv1`` (1->8) -> ``norm1`` (GroupNorm of ``groups`` groups) -> relu -> ``conv2`` (8->8) -> relu -> pool -> fc,
    seeded weights, eval mode."""
    torch.manual_seed(seed)
    net = nn.Sequential(OrderedDict(conv1=nn.Conv2d(1, 8, 3, padding=1), norm1=nn.GroupNorm(groups, 8), act1=nn.ReLU(),
                                    conv2=nn.Conv2d(8, 8, 3, padding=1), act2=nn.ReLU(), pool=nn.AdaptiveAvgPool2d(1),
                                    flatten=nn.Flatten(), fc=nn.Linear(8, 10)))  # fmt: skip
    with torch.no_grad():  # affine parameters away from their defaults, so that a wrong cut shows
        net.norm1.weight.uniform_(0.5, 1.5)
        net.norm1.bias.uniform_(-0.2, 0.2)
    net.input_shape = (1, input_size, input_size)
    return net.eval()


def complementary_pair_net(*, seed: int = 0, input_size: int = 12) -> nn.Sequential:
    """``conv`` (1->3 kernels, 1x1) -> ``act`` (ReLU) -> pool -> fc, on inputs in [0, 1] (see below).

    Kernel 0 computes ``x``, kernel 1 ``1 - x`` (weight -1, bias 1) and kernel 2 ``relu(x - 0.5)``.
    For images constant per sample (value ``t`` in [0, 1], :func:`constant_images`), the
    activation norms of kernels 0 and 1 are ``s t`` and ``s (1 - t)`` (``s`` = image side):
    complementary, yet both non-negative, so their plain angle is under 90 degrees while their
    centered angle is 180.
    """

    torch.manual_seed(seed)
    conv = nn.Conv2d(1, 3, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, -1.0, 1.0]).reshape(3, 1, 1, 1))
        conv.bias.copy_(torch.tensor([0.0, 1.0, -0.5]))
    return nn.Sequential(OrderedDict(conv=conv, act=nn.ReLU(), pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(),
                                     fc=nn.Linear(3, 2))).eval()


def constant_images(n: int = 32, *, input_size: int = 12, seed: int = 0):
    """A TensorDataset of ``n`` single-channel images, each constant with a value drawn in [0, 1]."""
    g = _seeded(seed)
    t = torch.rand(n, generator=g)
    x = t[:, None, None, None].expand(n, 1, input_size, input_size).contiguous()
    return torch.utils.data.TensorDataset(x, torch.zeros(n, dtype=torch.long))
