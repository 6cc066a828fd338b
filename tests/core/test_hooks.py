import pytest
import torch

from cnn_redundancy import get_model
from cnn_redundancy.core.hooks import (
    capture,
    capture_after,
    count_calls,
    hook_count,
    preserved,
    replace_input,
    replace_output,
)


def test_capture_input_and_output():
    m = get_model("lenet5").eval()
    x = torch.randn(2, 1, 28, 28)
    with capture(m, ["conv2", "act2"]) as out, capture(m, ["conv2"], what="input") as inp:
        m(x)
    assert out["conv2"].shape == (2, 16, 10, 10)
    assert torch.equal(out["act2"], torch.relu(out["conv2"]))
    assert inp["conv2"].shape == (2, 6, 14, 14)
    assert hook_count(m) == 0


def test_capture_with_reduction():
    m = get_model("lenet5").eval()
    with capture(m, ["act1"], fn=lambda n, t: t.flatten(2).norm(dim=2)) as out:
        m(torch.randn(3, 1, 28, 28))
    assert out["act1"].shape == (3, 6)


def test_replace_output_and_input():
    m = get_model("lenet5").eval()
    x = torch.randn(2, 1, 28, 28)
    with replace_output(m, "conv2", torch.zeros_like):
        a = m(x)
    with replace_input(m, "fc1", torch.zeros_like):
        b = m(x)
    assert torch.allclose(a, b)  # both remove everything before fc1
    assert not torch.allclose(a, m(x))
    assert hook_count(m) == 0


def test_preserved_restores_on_exception(unchanged):
    m = get_model("lenet5").train()
    with pytest.raises(RuntimeError, match="boom"), unchanged(m):
        with preserved(m, weights=True):
            m.eval()
            m.conv1.register_forward_hook(lambda *a: None)
            with torch.no_grad():
                m.conv1.weight.zero_()
            raise RuntimeError("boom")
    assert m.training


def test_preserved_restores_on_keyboard_interrupt(unchanged):
    m = get_model("lenet5").eval()
    m.act1.train()  # mixed modes are restored module by module
    with pytest.raises(KeyboardInterrupt), unchanged(m):
        with preserved(m, weights=True):
            m.train()
            with torch.no_grad():
                m.fc1.bias.add_(1.0)
            raise KeyboardInterrupt
    assert m.act1.training and not m.conv1.training


def test_a_ctrl_c_during_the_restore_does_not_cut_it_short(unchanged, monkeypatch):
    """A second Ctrl-C that lands while preserved() and placed() put the model back: both finish, then it is raised."""
    from cnn_redundancy.core import hooks
    from cnn_redundancy.core.device import placed

    real, calls = hooks._restore_attributes, []

    def restore(saved):  # cut off after the first module's attributes, the first time
        calls.append(1)
        if len(calls) == 1:
            real(saved[:1])
            raise KeyboardInterrupt
        real(saved)

    monkeypatch.setattr(hooks, "_restore_attributes", restore)
    m = get_model("lenet5").eval()
    m.act1.train()
    with pytest.raises(KeyboardInterrupt), unchanged(m):
        with preserved(m, weights=True):
            m.train()
            m.conv1.register_forward_hook(lambda *a: None)
            with torch.no_grad():
                m.fc1.bias.add_(1.0)
    assert len(calls) == 2 and m.act1.training and not m.conv1.training
    weight = m.conv2.weight  # 6 input channels: channels-last is another layout
    original = weight.data_ptr()
    real_copy, copies = torch.Tensor.copy_, []

    def copy_(t, src, *a, **kw):  # placed(keep=True): cut off after copying back the first tensor
        copies.append(1)
        out = real_copy(t, src, *a, **kw)
        if len(copies) == 1:
            raise KeyboardInterrupt
        return out

    with pytest.raises(KeyboardInterrupt):
        with placed(m, torch.device("cpu"), channels_last=True, keep=True):  # a move: every 4-D weight is swapped
            assert weight.data_ptr() != original
            monkeypatch.setattr(torch.Tensor, "copy_", copy_)
    monkeypatch.setattr(torch.Tensor, "copy_", real_copy)
    assert m.conv2.weight is weight and weight.data_ptr() == original and len(copies) >= 2
    assert all(p.is_contiguous() for p in m.parameters())  # every tensor back, not only those before the cut


def test_preserved_keeps_user_hooks():
    m = get_model("lenet5")
    h = m.conv1.register_forward_hook(lambda *a: None)
    with preserved(m):
        m.conv2.register_forward_hook(lambda *a: None)
    assert hook_count(m) == 1
    h.remove()


def test_capture_after_takes_first_call_after_layer():
    m = get_model("torchvision:resnet18", num_classes=10).eval()
    x = torch.randn(1, 3, 32, 32)
    pairs = {"layer1.0.conv1": "layer1.0.relu", "layer1.0.conv2": "layer1.0.relu", "layer1.1.conv1": "layer1.1.conv1"}
    with capture_after(m, pairs) as store, capture(m, ["layer1.0.bn1", "layer1.0.bn2", "maxpool"], fn=lambda n, t: t.clone()) as c:
        m(x)
    # the relu is called twice in the block: after bn1 (first call after conv1), then on bn2 + identity
    # (references are copied at hook time: the block adds and applies ReLU in place)
    assert torch.equal(store["layer1.0.conv1"], torch.relu(c["layer1.0.bn1"]))
    assert torch.allclose(store["layer1.0.conv2"], torch.relu(c["layer1.0.bn2"] + c["maxpool"]))
    assert store["layer1.1.conv1"].shape == (1, 64, 8, 8)  # observe == layer: the layer's own output
    with capture_after(m, pairs, fn=lambda name, t: t.sum()) as sums:
        m(x)
    assert sums["layer1.0.conv1"] == store["layer1.0.conv1"].sum()
    assert hook_count(m) == 0


def test_count_calls():
    m = get_model("torchvision:resnet18", num_classes=10).eval()
    with count_calls(m, ["layer1.0.relu", "fc"]) as c:
        m(torch.randn(1, 3, 32, 32))
    assert c == {"layer1.0.relu": 2, "fc": 1}
