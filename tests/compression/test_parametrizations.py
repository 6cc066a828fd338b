"""Weight-normalized and spectrally normalized convs (torch.nn.utils.parametrizations and the older hooks):
pruned and compressed through their folded weights; the user's model keeps its parametrizations."""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils import parametrize

import cnn_redundancy as cr
import cnn_redundancy.testing as T
from cnn_redundancy.testing import TinyCNN, random_images

STYLES = ("parametrize", "hooks")


def _reparametrized(m) -> bool:
    return any(parametrize.is_parametrized(mod) or mod._forward_pre_hooks for mod in m.modules())


def _state(m):
    return {k: v.clone() for k, v in m.state_dict().items()}


@pytest.mark.parametrize("style", STYLES)
def test_folding_keeps_the_outputs_and_leaves_plain_weights(style):
    from cnn_redundancy.compression.pruning.surgeon import fold_parametrizations

    m, x = T.reparametrized_net(style=style), torch.randn(4, 1, 12, 12)
    with torch.no_grad():
        y = m(x)
    assert fold_parametrizations(m) == ["conv1.weight", "conv2.weight"]
    with torch.no_grad():
        assert torch.equal(m(x), y)
    assert not _reparametrized(m) and sorted(m.state_dict()) == sorted(TinyCNN().state_dict())
    assert fold_parametrizations(m) == []


def test_folded_weights_stay_frozen_or_trainable_as_their_originals():
    from cnn_redundancy.compression.pruning.surgeon import fold_parametrizations

    m = T.reparametrized_net()
    for p in m.conv1.parameters():
        p.requires_grad_(False)
    fold_parametrizations(m)
    assert isinstance(m.conv1.weight, torch.nn.Parameter) and not m.conv1.weight.requires_grad
    assert m.conv2.weight.requires_grad and type(m.conv1) is torch.nn.Conv2d


@pytest.mark.parametrize("style", STYLES)
def test_prune_removes_kernels_saves_and_reloads_and_leaves_the_model(style, tmp_path):
    spec = f"{T.__file__}:reparametrized_net"
    m, x = cr.get_model(spec, style=style), torch.randn(4, 1, 12, 12)
    before, y = _state(m), m(x).detach()
    res = cr.prune(m, random_images(16), criterion="l1", steps=2, progress=False)
    assert sum(res.kernels_before.values()) - sum(res.kernels_after.values()) == 2
    assert res.meta["folded"] == ["conv1.weight", "conv2.weight"]
    assert _reparametrized(m) and all(torch.equal(v, before[k]) for k, v in m.state_dict().items())
    with torch.no_grad():
        assert torch.equal(m(x), y)
        out = res.model(x)
    back = cr.load_checkpoint(cr.save_checkpoint(res.model, tmp_path / "p.pt"), model=spec)
    with torch.no_grad():
        assert torch.equal(back(x), out)


@pytest.mark.parametrize("style", STYLES)
def test_compress_and_its_baselines_leave_the_model_as_it_was(style):
    m, x = T.reparametrized_net(style=style), torch.randn(4, 1, 12, 12)
    y = m(x).detach()
    r = cr.compress(m, random_images(60, seed=3), target_macs=0.7, max_drop=None, criterion="l1", baselines=("l1", "taylor"),
                    progress=False)  # fmt: skip
    assert r.final["macs_fraction"] <= 0.7 and {b["method"] for b in r.baselines} >= {"torch-pruning l1", "torch-pruning taylor"}
    assert r.data["folded"] == ["conv1.weight", "conv2.weight"]
    assert any(line.startswith("reparametrized weights made plain") and line.endswith(": conv1.weight, conv2.weight")
               for line in r.headline())
    assert _reparametrized(m)  # the copies were folded, not the model (a deepcopy shares its parametrized class)
    with torch.no_grad():
        assert torch.equal(m(x), y)


def test_the_impulse_lens_copies_a_model_holding_a_weight_computed_with_gradients():
    m = T.reparametrized_net(style="hooks")
    assert m.conv1.weight.grad_fn is not None  # what copy.deepcopy refused
    res = cr.impulse_response(m, mode="both", progress=False)  # "linear" works on a linearized copy
    assert res.layers == ["conv1", "conv2"] and m.conv1.weight.grad_fn is not None
