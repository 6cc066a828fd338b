import pytest
import torch
import torch.nn.functional as F

from cnn_redundancy import get_model
from cnn_redundancy.analyses.impulse import ImpulseResult, impulse_response, linearized
from cnn_redundancy.core.results import Result
from cnn_redundancy.testing import cascade_net, duplicated_kernels_net, single_conv


def test_single_conv_response_is_the_rotated_kernel(unchanged):
    k = torch.randn(3, 2, 5, 5)
    m = single_conv(k, bias=0.5)
    with unchanged(m):
        res = impulse_response(m, input_shape=(2, 9, 9), mode="both")
    r = res.response("conv")  # [kernels, impulses, H, W]
    for o in range(3):
        for i in range(2):
            assert torch.allclose(r[o, i, 2:7, 2:7], torch.rot90(k[o, i], 2).double() + 0.5, atol=1e-6)
            lin = res.response("conv", linear=True)[o, i, 2:7, 2:7]
            assert torch.allclose(lin, torch.rot90(k[o, i], 2).double(), atol=1e-6)  # bias removed


def test_duplicated_kernels_have_ncc_one():
    res = impulse_response(duplicated_kernels_net())
    m = res.ncc("conv1")
    assert m[0, 1] == pytest.approx(1.0) and m[2, 3] < 0.999
    assert res.max_ncc("conv1")[:2] == pytest.approx([1.0, 1.0])
    assert res.max_ncc("conv2")[2:4] == pytest.approx([1.0, 1.0])
    assert res.redundant_fraction(0.999) == {"conv1": 0.5, "conv2": pytest.approx(1 / 3)}


def test_linear_mode_is_the_cascaded_kernel():
    k1, k2 = torch.randn(3, 3), torch.randn(5, 5)
    res = impulse_response(cascade_net(k1, k2), input_shape=(1, 15, 15), mode="linear")
    # the impulse through conv1 is rot180(k1); conv2 cross-correlates that with k2 (ReLU removed)
    expected = F.conv2d(F.pad(torch.rot90(k1, 2)[None, None], (4, 4, 4, 4)), k2[None, None])[0, 0]
    got = res.response("conv2")[0, 0, 4:11, 4:11]
    assert torch.allclose(got, expected.double(), atol=1e-5)
    assert res.response("conv2")[0, 0, :4].abs().max() == 0  # nothing outside the 7x7 support
    network = impulse_response(cascade_net(k1, k2), input_shape=(1, 15, 15))
    assert not torch.allclose(network.response("conv2"), res.response("conv2"))  # the ReLU matters


def test_linearized_copy_leaves_model_alone(unchanged):
    m = get_model("torchvision:resnet18", num_classes=10).eval()
    with unchanged(m):
        lin = linearized(m)
    assert not any(isinstance(x, torch.nn.ReLU | torch.nn.MaxPool2d) for x in lin.modules())
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(lin(2 * x), 2 * lin(x), atol=1e-4)  # homogeneous: really linear


def test_cross_depth_and_round_trip(tmp_path):
    res = impulse_response(get_model("lenet5"))
    m = res.ncc("conv1", "conv2")
    assert m.shape == (6, 16) and res.response("conv1").shape == (6, 1, 28, 28)
    assert len(res.cross_depth("conv1", "conv2")) == 16
    back = Result.load(res.save(tmp_path / "i.json"))
    assert isinstance(back, ImpulseResult) and back == res
    assert torch.equal(back.ncc("conv2"), res.ncc("conv2"))


def test_bad_inputs():
    m = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3))
    with pytest.raises(ValueError, match="pass input_shape"):
        impulse_response(m)
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        impulse_response(m, input_shape=(1, 8))
    with pytest.raises(ValueError, match="expected|does not fit"):
        impulse_response(get_model("lenet5"), input_shape=(3, 28, 28))
    with pytest.raises(ValueError, match="mode must be"):
        impulse_response(m, input_shape=(1, 8, 8), mode="linearish")
    res = impulse_response(m, input_shape=(1, 8, 8))
    with pytest.raises(ValueError, match="analysed layers: 0"):
        res.ncc("conv9")
    with pytest.raises(ValueError, match="network responses only"):
        res.response("0", linear=True)


def test_plots():
    import matplotlib

    matplotlib.use("Agg")
    res = impulse_response(duplicated_kernels_net())
    fig = res.plot("conv2", kind="responses")
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["0", "1", "2", "3", "4", "5"]
    assert res.plot("conv1", kind="ncc").axes[0].get_xlabel() == "kernel of conv1"
    assert res.plot("conv1", kind="max_ncc").axes[0].get_ylabel() == "max NCC with another kernel"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_float64_and_float16_models(dtype):
    m = duplicated_kernels_net().to(dtype)
    res = impulse_response(m, input_shape=(1, 12, 12), progress=False)
    assert m.conv1.weight.dtype == dtype and res.max_ncc("conv1")[0] == pytest.approx(1.0, abs=1e-3)


def test_negative_max_lag_is_refused():
    with pytest.raises(ValueError, match="max_lag must be None or an integer >= 0, not -3"):
        impulse_response(duplicated_kernels_net(), input_shape=(1, 12, 12), max_lag=-3)
    res = impulse_response(duplicated_kernels_net(), input_shape=(1, 12, 12), progress=False)
    with pytest.raises(ValueError, match="max_lag must be"):
        res.ncc("conv1", max_lag=-3)
