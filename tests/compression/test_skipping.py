"""Layer skipping: strongest-activation labels, router, skip network, experiment, CLI."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import cnn_redundancy as cr
from cnn_redundancy.compression.skipnet import ExitDataset, RelabelledDataset, check_same_spatial_size
from cnn_redundancy.core.hooks import capture, count_calls, hook_count
from cnn_redundancy.experiments.layer_skipping import layer_skipping_experiment
from cnn_redundancy.testing import TinyCNN, layer_response_images, layer_response_net, random_images


def small_net(seed: int = 0, **kw) -> nn.Module:
    torch.manual_seed(seed)
    return cr.get_model("equal_width_cnn", channels=kw.pop("channels", (4, 4, 4)), input_size=kw.pop("input_size", 8), **kw)


# --- labels ---------------------------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [3, 256])
def test_labels_known_answer_and_deeper_layer_wins(batch_size):
    res = cr.strongest_activation_labels(layer_response_net(), layer_response_images(), feature_maps=1, top=2,
                                         batch_size=batch_size)
    assert res.layers == ["conv1", "conv2", "conv3"]
    assert res.observed == ["act1", "act2", "act3"]
    assert res.top_images == {"conv1": [[0, 1]], "conv2": [[2, 3]], "conv3": [[4, 1]]}
    # image 1 is selected by conv1 and conv3: the deeper layer wins
    assert res.indices == [0, 1, 2, 3, 4]
    assert res.labels == [0, 2, 1, 1, 2]
    assert res.counts == {"conv1": 1, "conv2": 2, "conv3": 2}
    assert res.selected_per_layer == {"conv1": 2, "conv2": 2, "conv3": 2}
    assert res.top_scores["conv3"][0] == pytest.approx([9.0, 7.0])
    assert res.images_of(2) == [4, 1]


def test_labels_ties_go_to_earlier_image_and_conv_scoring():
    data = torch.utils.data.TensorDataset(torch.ones(6, 3, 4, 4), torch.zeros(6, dtype=torch.long))
    res = cr.strongest_activation_labels(layer_response_net(), data, feature_maps=1, top=2, batch_size=4, where="conv")
    assert res.observed == ["conv1", "conv2", "conv3"]
    assert res.top_images["conv1"] == [[0, 1]]
    assert res.indices == [0, 1] and res.labels == [2, 2]


def test_labels_leave_model_unchanged_and_roundtrip(tmp_path):
    model = small_net().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    hooks = hook_count(model)
    data = random_images(20, (1, 8, 8))
    res = cr.strongest_activation_labels(model, data, feature_maps=3, top=4)
    assert model.training and all(m.training for m in model.modules())
    assert hook_count(model) == hooks
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert len(res.indices) == len(res.labels) == sum(res.counts.values()) <= 3 * 3 * 4
    assert cr.Result.load(res.save(tmp_path / "labels.json")) == res
    # same input, same labels
    assert cr.strongest_activation_labels(model, data, feature_maps=3, top=4) == res


def test_labels_bad_inputs_and_model_restored_on_error():
    model = small_net().train()
    data = random_images(10, (1, 8, 8))
    with pytest.raises(ValueError, match="only 4 feature maps"):
        cr.strongest_activation_labels(model, data, feature_maps=5)
    with pytest.raises(ValueError, match="only 10 images"):
        cr.strongest_activation_labels(model, data, feature_maps=2, top=11)
    with pytest.raises(ValueError, match="Unknown layer"):
        cr.strongest_activation_labels(model, data, layers="conv9", feature_maps=2, top=2)
    with pytest.raises(ValueError, match="does not fit"):  # wrong image size raises inside the hooked forward
        cr.strongest_activation_labels(model, random_images(10, (1, 6, 6)), feature_maps=2, top=2)
    assert hook_count(model) == 0 and model.training


def test_label_grid_figure():
    res = cr.strongest_activation_labels(layer_response_net(), layer_response_images(), feature_maps=1, top=2)
    fig = res.plot(layer_response_images(), per_layer=3)
    assert len(fig.axes) == 9
    assert len(fig.axes[0].images) == 1 and len(fig.axes[2].images) == 0  # conv1 labels a single image
    assert len(res.plot().axes) == 1


# --- model and skip network -----------------------------------------------------------------


def test_equal_width_model_shapes_and_errors():
    m = cr.get_model("equal_width_cnn", channels=(8, 8, 8))
    assert cr.conv_layers(m) == ["conv1", "conv2", "conv3"]
    assert m(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(ValueError, match="per_exit"):
        cr.get_model("equal_width_cnn", channels=(4, 8, 16))
    with pytest.raises(ValueError, match="odd"):
        cr.get_model("equal_width_cnn", kernel_size=2)
    per_exit = cr.get_model("equal_width_cnn", channels=(4, 8, 16), head="per_exit", input_size=8)
    skip = cr.SkipNetwork(per_exit)
    assert skip(torch.zeros(3, 1, 8, 8), [0, 1, 2]).shape == (3, 10)


def test_count_macs_and_exit_macs_known_answer():
    m = small_net()  # 4 maps, 8x8, 3x3 kernels, 10 classes
    macs = cr.count_macs(m, torch.zeros(1, 1, 8, 8))
    assert macs == {"conv1": 4 * 1 * 9 * 64, "conv2": 4 * 4 * 9 * 64, "conv3": 4 * 4 * 9 * 64, "fc": 4 * 64 * 10}
    skip = cr.SkipNetwork(m)
    fc = 4 * 64 * 10
    assert skip.exit_macs() == [2304 + fc, 2304 + 9216 + fc, 2304 + 2 * 9216 + fc]


def test_label_2_equals_full_network_and_mixed_exits_match_single_images():
    m = small_net()
    skip = cr.SkipNetwork(m)
    x = torch.randn(7, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(skip(x, 2), m(x))
        assert torch.equal(skip(x), m(x))
        exits = torch.tensor([0, 2, 1, 0, 2, 1, 1])
        out = skip(x, exits)
        for i in range(len(x)):
            alone = skip(x[i : i + 1], int(exits[i]))
            assert torch.allclose(out[i], alone[0], atol=1e-5)
        h = m.act1(m.conv1(x[:1]))
        assert torch.allclose(skip(x[:1], 0), m.fc(m.flatten(h)), atol=1e-6)


def test_skipped_layers_not_executed_and_get_no_gradient():
    m = small_net()
    skip = cr.SkipNetwork(m)
    x = torch.randn(6, 1, 8, 8)
    with count_calls(skip, ["base.conv1", "base.conv2", "base.conv3"]) as calls:
        skip(x, 0).sum().backward()
    assert calls == {"base.conv1": 1, "base.conv2": 0, "base.conv3": 0}
    assert m.conv1.weight.grad is not None and m.fc.weight.grad is not None
    assert m.conv2.weight.grad is None and m.conv3.weight.grad is None
    # mixed exits: conv3 only sees the images that need it
    with capture(skip, ["base.conv2", "base.conv3"], what="input", fn=lambda n, t: len(t)) as seen:
        skip(x, torch.tensor([0, 0, 1, 2, 2, 2]))
    assert seen == {"base.conv2": 4, "base.conv3": 3}


def test_routed_training_leaves_skipped_weights_untouched():
    m = small_net()
    skip = cr.SkipNetwork(m)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    data = ExitDataset(random_images(16, (1, 8, 8)), [0] * 16)
    hist = cr.train_skip_network(skip, data, epochs=2, batch_size=8)
    after = m.state_dict()
    for k in before:
        changed = not torch.equal(before[k], after[k])
        assert changed == (k.startswith(("conv1", "fc"))), k
    assert len(hist["loss"]) == 2 and not skip.training


def test_skip_network_bad_inputs():
    with pytest.raises(ValueError, match="height and width"):
        cr.SkipNetwork(TinyCNN(input_size=12))
    same_size = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Conv2d(2, 2, 3, padding=1))
    with pytest.raises(TypeError, match="exit_head"):
        cr.SkipNetwork(same_size, example_input=torch.zeros(1, 1, 8, 8))
    assert check_same_spatial_size(same_size, torch.zeros(1, 1, 8, 8)) == ["0", "2"]
    skip = cr.SkipNetwork(small_net())
    x = torch.zeros(2, 1, 8, 8)
    with pytest.raises(ValueError, match="0..2"):
        skip(x, [0, 3])
    with pytest.raises(ValueError, match="one exit per image"):
        skip(x, [0, 1, 2])
    with pytest.raises(ValueError, match="mode"):
        cr.train_skip_network(skip, ExitDataset(random_images(4, (1, 8, 8)), [0] * 4), mode="bogus")


def test_early_exit_thresholds():
    m = small_net()
    skip = cr.SkipNetwork(m)
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        outs = skip.all_exits(x)
        logits, ex = skip.early_exit(x, 0.0)  # every image is sure enough at the first exit
        assert ex.tolist() == [0] * 5 and torch.allclose(logits, outs[0], atol=1e-6)
        logits, ex = skip.early_exit(x, 1.01)  # never sure: full network
        assert ex.tolist() == [2] * 5 and torch.allclose(logits, m(x), atol=1e-6)
        t = float(outs[0].softmax(1).amax(1).median())
        logits, ex = skip.early_exit(x, t)
        assert ((ex == 0) == (outs[0].softmax(1).amax(1) >= t)).all()


# --- router and experiment ------------------------------------------------------------------


def test_router_learns_separable_labels():
    g = torch.Generator().manual_seed(0)
    k = torch.arange(30) % 3
    x = torch.rand(30, 3, 8, 8, generator=g) * 0.1
    x[torch.arange(30), k] += 1.0  # the bright channel is the label
    data = torch.utils.data.TensorDataset(x, torch.zeros(30, dtype=torch.long))
    trained = cr.train_router(data, (list(range(30)), k.tolist()), epochs=40, lr=3e-3, batch_size=10)
    router, hist = trained.model, trained.history
    assert hist["train_metric"][-1] == 1.0 and trained.n_images == 30 and trained.n_exits == 3
    assert torch.equal(cr.predict_exits(router, RelabelledDataset(data, list(range(30)), k.tolist())), k)
    with pytest.raises(ValueError, match="No labelled"):
        cr.train_router(data, ([], []))


def test_experiment_is_deterministic_and_complete():
    train = cr.subset(cr.load_dataset("mnist5k", "train"), 120, seed=0)
    test = cr.subset(cr.load_dataset("mnist5k", "test"), 30, seed=0)
    kw = {"channels": (4, 4, 4), "epochs": 1, "router_epochs": 1, "skip_epochs": 1, "feature_maps": 3, "top": 4,
          "latency_repeats": 1, "thresholds": (0.0, 0.9, 1.01)}
    a = layer_skipping_experiment(train, test, **kw)
    b = layer_skipping_experiment(train, test, **kw)
    art = a.artifacts
    # same seed, same JSON but for the timings, which live in meta
    assert json.dumps(a.comparable()) == json.dumps(b.comparable()) and a == b
    assert all("latency_ms" not in r for r in a.end_to_end) and a.meta["latency_ms"]["CNN 1 (full)"] > 0
    assert [r["method"] for r in a.end_to_end][0] == "CNN 1 (full)"
    assert all(sum(r["exit_histogram"]) == 30 for r in a.end_to_end + a.confidence)
    assert a.confidence[0]["mean_conv_layers"] == 1.0 and a.confidence[-1]["mean_conv_layers"] == 3.0
    assert a.end_to_end[0]["accuracy"] == pytest.approx(cr.evaluate(art["cnn1"], test))
    assert a.paper["n_train"] + a.paper["n_heldout"] == a.paper["n_labelled"] == len(art["labels"].indices)
    assert len(a.plot().axes) == 1


def test_cli_reproduce_routing_quick(tmp_path):
    from cnn_redundancy.cli import main

    out = tmp_path / "routing"
    assert main(["-q", "reproduce", "routing", "--quick", "--out", str(out)]) == 0
    res = cr.Result.load(out / "result.json")
    assert isinstance(res, cr.LayerSkippingResult)
    assert (out / "report.html").exists() and (out / "routing_tradeoff.png").exists()
    assert json.loads((out / "sections" / "routing.json").read_text())["title"].startswith("Layer skipping")
    ck = tmp_path / "cnn1.pt"
    cr.save_checkpoint(small_net(input_size=28), ck)
    assert main(["-q", "route", "-c", str(ck), "--limit", "60", "--feature-maps", "2", "--top", "3",
                 "--router-epochs", "1", "--out", str(tmp_path / "route")]) == 0
    labels = cr.Result.load(tmp_path / "route" / "labels.json")
    assert labels.feature_maps == 2 and (tmp_path / "route" / "router.pt").exists()
    assert cr.load_checkpoint(tmp_path / "route" / "router.pt")(torch.zeros(1, 1, 28, 28)).shape == (1, 3)
