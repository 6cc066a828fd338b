import pytest
import torch
from torch import nn

from cnn_redundancy import conv_layers, get_model
from cnn_redundancy.core.layers import get_module, resolve_layer, resolve_layers


def test_conv_layers_in_forward_order():
    assert conv_layers(get_model("lenet5")) == ["conv1", "conv2"]
    names = conv_layers(get_model("torchvision:resnet18", num_classes=10))
    assert names[0] == "conv1" and names[1] == "layer1.0.conv1" and "layer2.0.downsample.0" in names
    assert len(names) == 20


def test_conv_layers_forward_order_by_example_input():
    class Reversed(nn.Module):
        def __init__(self):
            super().__init__()
            self.b = nn.Conv2d(2, 1, 1)
            self.a = nn.Conv2d(1, 2, 1)

        def forward(self, x):
            return self.b(self.a(x))

    m = Reversed()
    assert conv_layers(m) == ["b", "a"]
    assert conv_layers(m, example_input=torch.zeros(1, 1, 4, 4)) == ["a", "b"]


def test_globs_modules_and_dedup():
    m = get_model("torchvision:resnet18", num_classes=10)
    assert resolve_layers(m, "layer1.*.conv*") == ["layer1.0.conv1", "layer1.0.conv2", "layer1.1.conv1", "layer1.1.conv2"]
    assert resolve_layers(m, [m.conv1, "conv1"]) == ["conv1"]
    assert resolve_layer(m, "layer4.0.conv2") == "layer4.0.conv2"


def test_unknown_layer_lists_close_names():
    m = get_model("lenet5")
    with pytest.raises(ValueError, match="Unknown layer 'conv3'.*conv2"):
        resolve_layers(m, "conv3")
    with pytest.raises(ValueError, match="Unknown layer"):
        resolve_layers(m, "nothing*")
    with pytest.raises(ValueError, match="Closest: conv1"):
        get_module(m, "conv_1")


def test_non_conv_layer_is_a_type_error():
    with pytest.raises(TypeError, match="'fc1' is a Linear, not a Conv2d"):
        resolve_layers(get_model("lenet5"), "fc1")


def test_module_outside_model():
    with pytest.raises(ValueError, match="not a submodule"):
        resolve_layers(get_model("lenet5"), nn.Conv2d(1, 1, 1))


def test_one_layer_expected():
    with pytest.raises(ValueError, match="Expected one layer"):
        resolve_layer(get_model("lenet5"), "conv*")


def _signal_net() -> nn.Module:
    return nn.Sequential(nn.Conv1d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv1d(4, 4, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(4, 3))


def test_model_without_2d_convs_names_what_it_has():
    with pytest.raises(ValueError, match=r"no layers of type Conv2d: it has 2 Conv1d, and the toolkit analyses 2-D"):
        resolve_layers(_signal_net())
    with pytest.raises(ValueError, match=r"^Sequential has no layers of type Conv2d$"):
        resolve_layers(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)))


@pytest.mark.parametrize("entry", ["analyze", "compress"])
def test_analyze_and_compress_refuse_a_model_without_2d_convs(entry):
    """They ran on without any layer: analyze failed on an empty max(), compress divided by zero."""
    from torch.utils.data import TensorDataset

    import cnn_redundancy as cr

    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.rand(60, 1, 20, generator=g), torch.randint(0, 3, (60,), generator=g))
    with pytest.raises(ValueError, match="it has 2 Conv1d"):
        getattr(cr, entry)(_signal_net(), data, progress=False)
