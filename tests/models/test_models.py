import pytest
import torch

from cnn_redundancy import get_model, list_models
from cnn_redundancy.models import model_spec


def test_lenet5_widths_and_shapes():
    m = get_model("lenet5")
    assert (m.conv1.out_channels, m.conv2.out_channels, m.conv1.padding) == (6, 16, (2, 2))
    assert (m.fc1.out_features, m.fc2.out_features, m.fc3.out_features) == (120, 84, 10)
    w = get_model("lenet5", width=10)
    assert (w.conv1.out_channels, w.conv2.out_channels, w.fc1.out_features, w.fc2.out_features) == (60, 160, 1200, 840)
    assert w(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert model_spec(w) == {"name": "lenet5", "kwargs": {"width": 10}, "surgery": []}
    assert "lenet5" in list_models()


def test_torchvision_and_user_file_models(tmp_path):
    m = get_model("torchvision:resnet18", num_classes=7)
    assert m.fc.out_features == 7
    f = tmp_path / "mynet.py"
    f.write_text("import torch.nn as nn\ndef make(c=3):\n    return nn.Sequential(nn.Conv2d(1, c, 3), nn.ReLU())\n")
    u = get_model(f"{f}:make", c=5)
    assert u[0].out_channels == 5 and model_spec(u)["name"] == f"{f}:make"


def test_a_torchvision_segmentation_model_is_built_without_downloading_its_backbone(monkeypatch):
    """Segmentation builders default to ImageNet weights for the backbone: building one tried the network."""
    import torchvision.models._api as api

    from cnn_redundancy.models import data_fitted_parameters

    def no_network(*a, **k):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(api, "load_state_dict_from_url", no_network)  # what torchvision's weights call
    m = get_model("torchvision:lraspp_mobilenet_v3_large", num_classes=3, seed=0).eval()
    with torch.no_grad():
        assert m(torch.rand(1, 3, 32, 32))["out"].shape == (1, 3, 32, 32)
    assert data_fitted_parameters("torchvision:deeplabv3_resnet50") == {"num_classes"}
    assert data_fitted_parameters("torchvision:fasterrcnn_resnet50_fpn") == set()
    with pytest.raises(AssertionError, match="download"):  # the guard itself works: asked for, it would download
        get_model("torchvision:lraspp_mobilenet_v3_large", weights_backbone="DEFAULT")


def test_bad_model_names():
    with pytest.raises(ValueError, match="Unknown model 'lenet6'.*lenet5"):
        get_model("lenet6")
    with pytest.raises(ValueError, match="Unknown torchvision model 'resnet19'"):
        get_model("torchvision:resnet19")
    with pytest.raises(ValueError, match="takes no argument depth"):
        get_model("lenet5", depth=3)
    with pytest.raises(ValueError, match="does not exist"):
        get_model("/nonexistent/file.py:make")


def test_a_broken_model_file_is_one_line_with_its_line(tmp_path):
    files = {"syntax.py": "import torch\ndef build(:\n    pass\n",
             "raises.py": "import torch\ndef build():\n    x = 1\n    raise RuntimeError('boom')\n",
             "imports.py": "import no_such_package_here\ndef build():\n    pass\n",
             "number.py": "def build():\n    return 3\n"}  # fmt: skip
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(ValueError, match=r"syntax.py fails when run: SyntaxError: invalid syntax \(line 2: def build\(:\)"):
        get_model(f"{tmp_path / 'syntax.py'}:build")
    with pytest.raises(ValueError, match=r"raises.py:build fails when called: RuntimeError: boom \(line 4: raise"):
        get_model(f"{tmp_path / 'raises.py'}:build")
    with pytest.raises(ValueError, match=r"imports.py fails when run: ModuleNotFoundError: .*no_such_package_here.*\(line 1"):
        get_model(f"{tmp_path / 'imports.py'}:build")
    with pytest.raises(ValueError, match="number.py:build returned int 3, not a torch.nn.Module"):
        get_model(f"{tmp_path / 'number.py'}:build")


def test_seed_builds_the_same_weights_and_leaves_the_random_state_alone():
    torch.manual_seed(5)
    a = get_model("lenet5", width=2, seed=0)
    after = torch.rand(3)
    torch.manual_seed(5)
    b = get_model("lenet5", width=2, seed=0)
    assert torch.equal(torch.rand(3), after)  # the global stream is where it was
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(get_model("lenet5", width=2, seed=1).conv1.weight, a.conv1.weight)
    assert model_spec(a)["kwargs"] == {"width": 2}  # the seed is not a model argument


def test_model_arguments_of_the_wrong_type_are_one_clear_error():
    with pytest.raises(ValueError, match=r"lenet5: argument width must be an integer \(default 1\), not 'abc'"):
        get_model("lenet5", width="abc")
    with pytest.raises(ValueError, match="argument in_channels must be an integer .* not True"):
        get_model("lenet5", in_channels=True)
    with pytest.raises(ValueError, match="argument depths must be a list"):
        get_model("pspnet_resnet", depths=3)
    assert get_model("pspnet_resnet", depths=[1, 1, 1, 1], width=4).encoder.layer1[0].conv1.out_channels == 4


def test_googlenets_notice_of_a_future_default_is_not_passed_on():
    """Built without weights, GoogLeNet warned about a torchvision default change: a `warning:` line a user can do
    nothing about, on every command."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = get_model("torchvision:googlenet", num_classes=3, seed=0)
    assert m.fc.out_features == 3
