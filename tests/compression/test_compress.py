"""compress: the plan's stages on planted answers, the guarantee on held-out data, the target, reloading."""

from __future__ import annotations

import pytest
import torch

import cnn_redundancy as cr
from cnn_redundancy.compression.compress import compress
from cnn_redundancy.compression.pruning.schedule import Shrinker
from cnn_redundancy.compression.stages import merge_duplicates, remove_dead
from cnn_redundancy.core.observe import resolve_observe
from cnn_redundancy.testing import TinyCNN, duplicated_kernels_net, random_images


def _shrinker(m, x):
    names = cr.conv_layers(m)
    return Shrinker(m, x[:1], names, cr.count_macs_params(m, x[:1])[0]), resolve_observe(m, names)


def test_removing_every_dead_kernel_leaves_the_output_unchanged():
    torch.manual_seed(0)
    m = TinyCNN(c1=6, c2=8).eval()
    with torch.no_grad():
        m.conv1.bias[[1, 4]] = -100.0
        m.conv2.bias[[0, 2, 5]] = -100.0
    data = random_images(64, seed=3)
    x = data.tensors[0]
    with torch.no_grad():
        before = m(x)
    sh, obs = _shrinker(m, x)
    rec = remove_dead(sh, data, obs, batch_size=32, device="cpu")
    assert rec["kernels"] == 5 and rec["removed"] == {"conv1": [1, 4], "conv2": [0, 2, 5]}
    assert sh.model.conv1.out_channels == 4 and sh.model.conv2.in_channels == 4 and sh.model.conv2.out_channels == 5
    with torch.no_grad():
        assert torch.allclose(sh.model(x), before, atol=1e-5)


def _merge_exact(m, data):
    """merge_duplicates of pairs at angle 0 with no budget: ``(shrinker, record)``; asserts the output is unchanged."""
    x = data.tensors[0]
    with torch.no_grad():
        before = m(x)
    sh, obs = _shrinker(m, x)
    rec = merge_duplicates(sh, data, obs, lambda model: 1.0, base=1.0, budget=0.0, angle=1e-3, batch_size=32,
                           device="cpu")  # fmt: skip
    with torch.no_grad():
        assert torch.allclose(sh.model(x), before, atol=1e-5)
    return sh, rec


def test_merging_exact_duplicates_leaves_the_output_unchanged():
    sh, rec = _merge_exact(duplicated_kernels_net(), random_images(64, seed=4))
    assert rec["kernels"] == 2 and sorted(rec["removed"]) == ["conv1", "conv2"]
    assert sh.model.conv1.out_channels == 3 and sh.model.conv2.out_channels == 5


def _transposed_consumer_net():
    """conv1 (kernels 0 and 1 the same) -> ReLU -> ConvTranspose2d -> ReLU -> pool -> linear: conv1's channels are
    read by a transposed conv, whose weight is [in, out, kh, kw], not [out, in, kh, kw]."""
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.ConvTranspose2d(4, 3, 2, stride=2),
                            torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, 10)).eval()  # fmt: skip
    with torch.no_grad():
        m[0].weight[1], m[0].bias[1] = m[0].weight[0], m[0].bias[0]
    return m


def test_merging_a_duplicate_read_by_a_transposed_conv_leaves_the_output_unchanged():
    sh, rec = _merge_exact(_transposed_consumer_net(), random_images(32, seed=6))
    assert rec["kernels"] == 1 and sh.model[0].out_channels == 3 and sh.model[2].in_channels == 3


def test_compress_prunes_channels_read_by_a_transposed_conv():
    m = _transposed_consumer_net()
    r = compress(m, random_images(60, seed=7), target_macs=0.8, max_drop=None, stages=("channels",), criterion="l1",
                 finetune_epochs=0, baselines=(), progress=False)  # fmt: skip
    # the transposed conv costs 4 x 3 x 2 x 2 MACs per input pixel (of 12 x 12): it is counted, and loses an input
    assert r.original["macs"] == 144 * 4 * 9 + 144 * 4 * 3 * 4 + 3 * 10
    assert r.model[2].in_channels < 4 and r.final["macs"] <= 0.8 * r.original["macs"]


@pytest.fixture(scope="module")
def trained():
    train = cr.subset(cr.load_dataset("mnist5k", "train"), 1200, seed=0)
    model = cr.get_model("lenet5", width=2, seed=0)
    cr.fit(model, train, epochs=2, seed=0, progress=False)
    return model, train


def test_the_guarantee_holds_on_the_test_split(trained):
    model, train = trained
    before = {k: v.clone() for k, v in model.state_dict().items()}
    r = compress(model, train, max_drop=0.02, criterion="l1", baselines=(), progress=False)
    assert r.data["test"] == 240 and r.data["validation"] == 240 and r.data["train"] == 720
    assert r.guarantee["val_drop"] <= 0.02 and r.guarantee["holds_on_test"] and r.guarantee["test_drop"] <= 0.02
    assert r.final["macs"] < r.original["macs"] and r.stopped
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the original is never pruned
    assert "caveat" not in r.guarantee  # 240 images each: enough
    assert "warning" not in r.guarantee  # it learned: far above always answering the most frequent class


def test_a_model_no_better_than_the_most_frequent_class_is_warned_about():
    m = TinyCNN().eval()
    with torch.no_grad():  # always class 9, which no image is
        m.fc.weight.zero_()
        m.fc.bias.zero_()
        m.fc.bias[9] = 1.0
    x, y = random_images(90, seed=6).tensors[0], torch.tensor([0, 0, 1] * 30)
    train, val, test = (torch.utils.data.TensorDataset(x[s], y[s]) for s in (slice(0, 30), slice(30, 60), slice(60, 90)))
    r = compress(m, train, val=val, test=test, target_macs=0.9, max_drop=0.01, stages=("channels",), criterion="l1",
                 baselines=(), progress=False)  # fmt: skip
    assert r.guarantee["holds_on_test"]  # true, and empty: there was nothing to keep
    assert r.headline()[0] == (
        "warning: on the validation images the model's accuracy (0.0000) is no better than always answering their most "
        "frequent class (0.6667): it has not learned what these images ask (untrained weights, labels in another order, "
        "other images), so keeping its accuracy keeps nothing")


def test_a_guarantee_on_few_images_says_how_coarse_it_is():
    torch.manual_seed(0)
    data = random_images(60, seed=5)  # 12 test, 12 validation images
    r = compress(TinyCNN().eval(), data, target_macs=0.8, max_drop=0.05, stages=("channels",), finetune_epochs=0,
                 baselines=(), progress=False)  # fmt: skip
    assert r.data["test"] == 12 and r.data["validation"] == 12
    assert r.guarantee["caveat"] == ("coarse: only 12 validation images, each 0.0833 of the accuracy, more than the "
                                     "allowed drop 0.05: one changed prediction exceeds it; only 12 test images, each "
                                     "0.0833 of the accuracy, more than the allowed drop 0.05: one changed prediction "
                                     "exceeds it; more images give a finer guarantee")  # fmt: skip
    assert f"note: the guarantee is {r.guarantee['caveat']}" in r.headline()


def test_target_macs_is_reached_within_one_step_and_the_model_reloads(trained, tmp_path):
    model, train = trained
    r = compress(model, train, target_macs=0.5, max_drop=None, criterion="distinctiveness", stages=("channels",),
                 step_fraction=0.05, baselines=("l1",), progress=False)  # fmt: skip
    assert 0.45 <= r.final["macs_fraction"] <= 0.5
    assert r.baselines[0]["macs"] <= r.final["macs"] and r.curves["torch-pruning l1"]
    path = cr.save_checkpoint(r.model, tmp_path / "small.pt")
    back = cr.load_checkpoint(path)
    x = train[0][0][None]
    with torch.no_grad():
        assert torch.equal(back(x), r.model(x))
    assert sum(p.numel() for p in back.parameters()) == r.final["params"]
    assert cr.Result.load(r.save(tmp_path / "c.json")).to_dict() == r.to_dict()


def test_a_residual_coupled_removal_lists_every_conv_it_touched():
    model = cr.get_model("resnet20", in_channels=1, input_size=12, width=4, seed=0).eval()
    data = random_images(150, (1, 12, 12), seed=5)
    r = compress(model, data, target_macs=0.8, max_drop=None, criterion="l1", stages=("channels",), baselines=(),
                 progress=False)  # fmt: skip
    touched = [s["removed"] for s in r.steps]
    # a channel of the second stage's residual stream: the projection and every block's last conv go together
    stream = [rm for rm in touched if "layer2.0.downsample.0" in rm]
    assert stream and all({"layer2.0.conv2", "layer2.1.conv2", "layer2.2.conv2"} <= set(rm) for rm in stream)
    assert all(len({tuple(v) for k, v in rm.items() if k.startswith("layer2") and not k.endswith("conv1")}) == 1
               for rm in stream)  # the same channel everywhere


def test_bad_arguments():
    m = TinyCNN().eval()
    with pytest.raises(ValueError, match="target_macs .*max_drop"):
        compress(m, random_images(40), target_macs=None, max_drop=None)
    with pytest.raises(ValueError, match="fraction in"):
        compress(m, random_images(40), target_macs=1.5)
    with pytest.raises(ValueError, match="criterion must be"):
        compress(m, random_images(40), criterion="magic")


def test_cli_compress_and_reproduce_quick(tmp_path, capsys):
    from cnn_redundancy.cli import main

    ck = cr.save_checkpoint(cr.get_model("lenet5", seed=0), tmp_path / "m.pt")
    out = tmp_path / "c"
    assert main(["-q", "compress", "-c", str(ck), "--limit", "300", "--target-macs", "0.6", "--criterion", "l1",
                 "--baselines", "l1", "--out", str(out)]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "MACs" in printed and "torch-pruning l1 at the same MACs" in printed
    res = cr.Result.load(out / "compress.json")
    assert res.final["macs_fraction"] <= 0.6 and res.data["test"] == 300 and (out / "report.html").exists()
    assert cr.load_checkpoint(out / "model.pt") is not None
    assert main(["-q", "reproduce", "compress", "--quick", "--out", str(tmp_path / "r")]) == 0
    assert "Test accuracy at the same MACs" in (tmp_path / "r" / "report.html").read_text()
    quick = cr.Result.load(tmp_path / "r" / "compress-lenet5-50-0.json")  # validation held out before training
    assert (quick.data["train"], quick.data["validation"]) == (450, 150) and "the given 150" in quick.data["how"]


@pytest.mark.parametrize(("kind", "width", "targets"), [("random", 1, (0.2886,)), ("l1", 4, (0.5, 0.1))])
def test_torch_pruning_baseline_lands_at_the_target_even_far_down(kind, width, targets):
    """A pruner whose steps are spent is followed by a fresh one (no silent stop above the target, and
    none of Torch-Pruning's "no pruning will be performed" warnings); an overshooting step is redone finer."""
    import warnings

    from cnn_redundancy.compression.baselines import torch_pruning_baseline
    from cnn_redundancy.core.cost import count_macs

    model = cr.get_model("lenet5", width=width, seed=0).eval()
    x = torch.zeros(1, 1, 28, 28)
    full = sum(count_macs(model, x).values())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for target in targets:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            pruned = torch_pruning_baseline(model, x, ["conv1", "conv2"], int(target * full), kind=kind, calib=None,
                                            batch_size=32, seed=0, device="cpu")  # fmt: skip
        got = sum(count_macs(pruned, x).values()) / full
        assert got <= target, (target, got)
        if width > 1:  # (LeNet-5's six conv1 channels are 13% of its MACs each: it lands a channel below)
            assert got >= 0.85 * target, (target, got)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())  # the original is untouched


def _dict_twin(m: TinyCNN) -> torch.nn.Module:
    from cnn_redundancy.testing import DictTinyCNN

    twin = DictTinyCNN(c1=m.conv1.out_channels, c2=m.conv2.out_channels).eval()
    twin.load_state_dict(m.state_dict())
    return twin


def test_a_dict_output_model_compresses_as_its_plain_twin():
    """With the metric naming the output, every stage, the Taylor gradients and Torch-Pruning's Taylor baseline
    read it: the result is the plain model's (the dead stage checks the logits, not the features, whose shape
    its removals change). Before, compress dropped the metric's output key and raised."""
    torch.manual_seed(0)
    m = TinyCNN(c1=6, c2=8).eval()
    with torch.no_grad():
        m.conv2.bias[[1, 6]] = -100.0  # dead: removed, the logits unchanged, the features two channels narrower
    data = random_images(100, seed=8)
    kw = dict(target_macs=0.6, max_drop=None, stages=("dead", "channels"), criterion="taylor", baselines=("taylor",),
              progress=False)  # fmt: skip
    plain = compress(m, data, **kw)
    twin = compress(_dict_twin(m), data, metric=cr.get_metric("accuracy", output="logits"), **kw)
    assert twin.stages[0]["kernels"] == plain.stages[0]["kernels"] == 2 and "output unchanged" in twin.stages[0]["note"]
    assert twin.final == plain.final and twin.steps == plain.steps and twin.baselines == plain.baselines
    assert twin.meta["params"]["output"] == "logits" and "output" not in plain.meta["params"]
    with pytest.raises(TypeError, match=r"output='logits'"):
        compress(_dict_twin(m), data, **kw)


def test_prune_by_taylor_reads_the_output_it_is_told():
    m = TinyCNN(c1=6, c2=8).eval()
    data = random_images(48, seed=9)
    plain = cr.prune(m, data, criterion="taylor", steps=3, progress=False)
    twin = cr.prune(_dict_twin(m), data, criterion="taylor", steps=3, output="logits", progress=False)
    assert [h["removed"] for h in twin.history] == [h["removed"] for h in plain.history]
    assert [h["score"] for h in twin.history] == [h["score"] for h in plain.history]


DICT_FILE = """from cnn_redundancy.testing import DictTinyCNN
def build(c1=6, c2=8):
    return DictTinyCNN(c1=c1, c2=c2)
"""


def test_a_pruned_dict_output_model_reloads_from_its_checkpoint(tmp_path):
    """The surgery record keeps the output key: the rebuilt graph is the one the pruning used."""
    (tmp_path / "dictnet.py").write_text(DICT_FILE)
    m = cr.get_model(f"{tmp_path / 'dictnet.py'}:build", seed=0).eval()
    r = cr.prune(m, random_images(48, seed=9), criterion="l1", steps=3, output="logits", progress=False)
    assert r.model.fc.in_features == 9 * r.model.conv2.out_channels  # 3x3 maps of each of conv2's channels
    back = cr.load_checkpoint(cr.save_checkpoint(r.model, tmp_path / "small.pt"), model=f"{tmp_path / 'dictnet.py'}:build")
    x = random_images(4, seed=1).tensors[0]
    with torch.no_grad():
        assert torch.equal(back(x)["logits"], r.model(x)["logits"])


def test_a_head_used_in_training_only_is_left_as_it_is():
    """GoogLeNet's auxiliary classifiers run in training only: compress stopped on them; now it leaves them."""

    from cnn_redundancy.testing import AuxHeadCNN as Aux

    torch.manual_seed(0)
    r = compress(Aux().eval(), random_images(60, seed=3), target_macs=0.8, max_drop=None, criterion="l1",
                 baselines=("l1",), progress=False)  # fmt: skip
    assert r.data["not_called"] == ["aux"] and r.meta["params"]["layers"] == ["conv1", "conv2"]
    assert r.model.aux.out_channels == 2 and r.final["macs_fraction"] <= 0.8
    assert ("left as they are: 1 conv layer(s) a forward pass in eval mode never calls (heads used in training only): "
            "aux") in r.headline()
