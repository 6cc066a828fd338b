"""``analyze`` on planted answers: dead kernels, a duplicated kernel, a trivial residual block, a user's
own residual model, the budget, the held-out estimate, the report and the command line."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

import cnn_redundancy as cr
from cnn_redundancy.core.hooks import hook_count
from cnn_redundancy.survey import Interrupted, analyze
from cnn_redundancy.survey.report import answer_lines
from cnn_redundancy.testing import TinyCNN, random_images, zero_branch_resnet


def _labelled(model, n=120, shape=(1, 12, 12), seed=4):
    """Images labelled by the model itself: its accuracy is 1, so any harmful removal shows."""
    x = random_images(n, shape, seed=seed).tensors[0]
    with torch.no_grad():
        y = model(x).argmax(1)
    return torch.utils.data.TensorDataset(x, y)


def _planted() -> TinyCNN:
    torch.manual_seed(0)
    m = TinyCNN(c1=6, c2=8).eval()
    with torch.no_grad():
        m.conv1.weight[1] = m.conv1.weight[0]  # kernel 1 duplicates kernel 0
        m.conv1.bias[1] = m.conv1.bias[0]
        m.conv2.bias[5] = -100.0  # never above zero under the ReLU
        m.conv2.weight[7] = 0.0  # zero weights and bias: dead too
        m.conv2.bias[7] = 0.0
    return m


@pytest.fixture(scope="module")
def planted():
    m = _planted()
    return m, analyze(m, _labelled(m), progress=False, seed=1)


def test_planted_dead_and_duplicated_kernels_are_found(planted):
    m, res = planted
    pk = res.per_kernel
    assert [i for i, d in enumerate(pk["conv2"]["dead"]) if d] == [5, 7] and not any(pk["conv1"]["dead"])
    assert res.answer["dead"] == 2 and res.answer["kernels"] == 14
    assert pk["conv1"]["angle"][0] == pytest.approx(0.0, abs=1e-3) and pk["conv1"]["angle_partner"][0] == 1
    assert pk["conv1"]["ncc"][0] == pytest.approx(1.0, abs=1e-9) and pk["conv1"]["ncc_partner"][0] == 1
    assert res.answer["near_duplicate_activations"] >= 2 and res.answer["near_duplicate_impulse"] >= 2
    assert res.lenses["blocks"]["status"] == "skipped" and "no residual block" in res.lenses["blocks"]["note"]
    assert res.lenses["skipping"]["status"] == "skipped" and "equal-width" in res.lenses["skipping"]["note"]
    assert all(res.lenses[x]["status"] == "ran" for x in ("dead", "distinctiveness", "impulse", "shuffle", "scores",
                                                             "ablation", "cka"))  # fmt: skip


def test_removable_estimate_keeps_the_metric_on_held_out_data(planted):
    m, res = planted
    est = res.answer["removable"]
    assert res.data["validation"] == 24 and res.data["analysis"] == 96 and "held out" in res.data["how"]
    assert est["baseline"] - est["metric_after"] <= est["max_drop"] + 1e-12
    assert est["kernels"] >= 2 and 0 < est["fraction"] < 1  # the dead kernels cost nothing
    assert [x for x in est["removed"][:2]] == [["conv2", 5], ["conv2", 7]]
    assert est["evaluations"][0] == 1.0  # the model labelled the data itself
    # 24 validation images: one of them is 1/24 of the accuracy, more than the allowed drop of 0.01
    assert est["caveat"] == ("a coarse estimate: only 24 validation images, each 0.0417 of the accuracy, more than the "
                             "allowed drop 0.01: one changed prediction exceeds it; more validation images give a "
                             "finer one")
    line = next(x for x in answer_lines(res) if x.startswith("Estimated removable"))
    assert line.endswith(f"Note: {est['caveat']}.")


def test_a_drop_on_enough_images_carries_no_caveat():
    from cnn_redundancy.core.metrics import coarse

    assert coarse(100, "accuracy", 0.01, "validation") is None
    assert coarse(99, "accuracy", 0.05, "test") == "only 99 test images, each 0.0101 of the accuracy"
    assert coarse(50, "dice", 0.01, "validation") == "only 50 validation images"
    assert coarse(50, "accuracy", None, "test") == "only 50 test images, each 0.02 of the accuracy"


def test_lenses_agree_matrix_and_report(planted, tmp_path):
    m, res = planted
    ag = res.agreement
    assert ag["lenses"][:3] == ["max_activation", "angle", "ncc"]
    assert all(ag["matrix"][i][i] == pytest.approx(1.0) for i in range(len(ag["lenses"])) if not math.isnan(ag["matrix"][i][i]))
    html = res.save_report(tmp_path).read_text()
    assert "What is redundant in TinyCNN" in html and "Dead kernels: 2 of 14" in html
    assert "lens_map.png" in html and (tmp_path / "lens_map.png").stat().st_size > 0
    assert (tmp_path / "lenses" / "cka.json").exists()
    back = cr.Result.load(tmp_path / "analysis.json")
    assert back.to_dict() == res.to_dict()


def test_same_seed_same_answer_and_model_as_found():
    m = _planted().train()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    data = _labelled(m.eval())
    m.train()
    a = analyze(m, data, lenses=["dead", "distinctiveness", "shuffle"], progress=False, seed=3)
    b = analyze(m, data, lenses=["dead", "distinctiveness", "shuffle"], progress=False, seed=3)
    strip = lambda d: {k: v for k, v in d.items() if k != "meta"}  # noqa: E731  (timings live in meta)
    assert json.dumps(strip(a.to_dict())) == json.dumps(strip(b.to_dict()))
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items()) and m.training and hook_count(m) == 0


def test_trivial_residual_block_is_found():
    m = zero_branch_resnet()
    res = analyze(m, _labelled(m, 96), lenses=["blocks", "dead"], progress=False)
    assert res.blocks["layer1.1"]["drop"] == 0.0 and res.blocks["layer1.1"]["trivial"]
    assert res.blocks["layer1.1"]["convs"] == ["layer1.1.conv1", "layer1.1.conv2"]
    assert "layer1.1" in res.answer["trivial_blocks"]


class UserNet(nn.Module):
    """A user's model: inline ``x + f(x)`` blocks and a concatenation, no torchvision classes."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 6, 3, padding=1)
        self.f1 = nn.Sequential(nn.Conv2d(6, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1))
        self.side = nn.Conv2d(6, 4, 1)
        self.head = nn.Linear(10, 10)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.relu(x + self.f1(x))
        return self.head(torch.cat([x, self.side(x)], 1).mean((2, 3)))


def test_user_model_with_residual_additions_and_concatenation_end_to_end(tmp_path):
    torch.manual_seed(0)
    m = UserNet().eval()
    res = analyze(m, _labelled(m, 80), progress=False)
    assert list(res.blocks) == ["add"] and res.blocks["add"]["convs"] == ["f1.0", "f1.2"]
    assert "shuffle_cosine" in res.per_kernel["f1.0"] and "shuffle_cosine" not in res.per_kernel["side"]
    assert res.save_report(tmp_path).exists()


def test_budget_samples_and_says_so():
    m = _planted()
    res = analyze(m, _labelled(m, 200), budget_minutes=1e-4, progress=False)
    skipped = {k: v["note"] for k, v in res.lenses.items() if v["status"] == "skipped"}
    assert any("budget" in note for note in skipped.values())
    assert res.meta["params"]["budget_minutes"] == 1e-4


def test_the_impulse_lens_is_planned_by_its_ncc_work_not_by_the_data():
    """Its NCC depends on the kernels and the map sizes, not on the images: in passes over n images it costs
    1/n as much, and the planner counts it so (it counted half a pass whatever the model)."""
    from cnn_redundancy.core.metrics import ncc_cost
    from cnn_redundancy.survey.plan import impulse_passes

    m = _planted()
    x0 = torch.zeros(1, 1, 12, 12)
    macs = sum(cr.count_macs(m, x0).values())
    one, two = (impulse_passes(m, ["conv1", "conv2"], x0, macs, n) for n in (100, 200))
    assert one == pytest.approx(2 * two) and one > 0
    # conv1 responds in 12x12 maps, conv2 in 6x6 (after pool1): within each layer, and across the two
    work = ncc_cost((6, 1, 12, 12)) + ncc_cost((8, 1, 6, 6)) + ncc_cost((6, 1, 12, 12), (8, 1, 6, 6))
    assert one == pytest.approx(2.5 * work / macs / 100)
    bigger = torch.zeros(1, 1, 24, 24)
    wide = TinyCNN(c1=6, c2=8, input_size=24).eval()
    assert impulse_passes(wide, ["conv1", "conv2"], bigger, sum(cr.count_macs(wide, bigger).values()), 100) > one
    res = analyze(m, _labelled(m, 60), lenses=["impulse"], progress=False)
    assert res.lenses["impulse"]["passes"] == pytest.approx(impulse_passes(m, ["conv1", "conv2"], x0, macs, 48))


def test_bad_arguments():
    m = TinyCNN().eval()
    with pytest.raises(ValueError, match="unknown lenses"):
        analyze(m, random_images(40), lenses=["dead", "magic"])
    with pytest.raises(ValueError, match="max_drop"):
        analyze(m, random_images(40), max_drop=2)
    with pytest.raises(ValueError, match="at least 10 images"):
        analyze(m, random_images(6))


def test_cli_analyze(tmp_path, capsys):
    from cnn_redundancy.cli import main

    ckpt = tmp_path / "m.pt"
    torch.manual_seed(0)
    cr.save_checkpoint(cr.get_model("lenet5"), ckpt)
    out = tmp_path / "analysis"
    assert main(["-q", "analyze", "-c", str(ckpt), "--limit", "120", "--lenses", "dead", "distinctiveness",
                 "ablation", "--out", str(out)]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "Dead kernels:" in printed and "report:" in printed
    res = cr.Result.load(out / "analysis.json")
    assert res.meta["complete"] is True and set(res.lenses) == {"dead", "distinctiveness", "ablation"}
    assert (out / "report.html").exists()


def test_an_interrupted_analysis_keeps_the_lenses_that_finished_and_its_report(tmp_path, capsys, monkeypatch):
    """Ctrl-C in the middle of the scores lens (after it filed one layer): the finished lenses' answer
    and report, the cut lens leaving nothing behind, the later lenses named as not started."""
    from cnn_redundancy.cli import main
    from cnn_redundancy.survey import lenses

    def cut_short(ctx):
        ctx.file(ctx.layers[0], l1=[1.0] * 6)  # filed before the interrupt: must not be read as a finished lens
        ctx.results["scores"] = "half"
        raise KeyboardInterrupt

    monkeypatch.setitem(lenses.RUNNERS, "scores", cut_short)
    m = _planted()
    data = _labelled(m)
    with pytest.raises(Interrupted) as stop:
        analyze(m, data, lenses=["dead", "scores", "cka"], progress=False, partial=tmp_path / "a.json")
    res = stop.value.result
    assert res.meta["complete"] is False and res.lenses["dead"]["status"] == "ran"
    assert res.lenses["scores"] == {"status": "not run", "note": "interrupted before it finished"}
    assert res.lenses["cka"] == {"status": "not run", "note": "not started: the run was interrupted"}
    assert all("l1" not in fields for fields in res.per_kernel.values()) and set(res.results) == {"dead"}
    assert res.answer["dead"] == 2 and res.answer["removable"] is None  # the planted dead kernels, no estimate
    assert res.headline()[0].startswith("Interrupted: scores, cka did not run, and no removable-MACs estimate")
    assert cr.Result.load(tmp_path / "a.json").lenses == res.lenses
    ckpt, out = tmp_path / "m.pt", tmp_path / "cli"
    torch.manual_seed(0)
    cr.save_checkpoint(cr.get_model("lenet5"), ckpt)
    assert main(["-q", "analyze", "-c", str(ckpt), "--limit", "120", "--lenses", "dead", "scores", "--out", str(out)]) == 130
    err = capsys.readouterr().err
    assert f"report of the lenses that finished: {out / 'report.html'}" in err and "interrupted; files" in err
    assert "Interrupted: scores did not run" in (out / "report.html").read_text()


def test_an_interrupt_after_the_last_lens_still_gives_the_result(monkeypatch):
    """Ctrl-C while the lenses' agreement is computed (after every lens): still Interrupted with every lens's answer."""
    import cnn_redundancy.survey as survey

    real, calls = survey.agreement, []

    def agreement(per_kernel):
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt
        return real(per_kernel)

    monkeypatch.setattr(survey, "agreement", agreement)
    m = _planted()
    with pytest.raises(Interrupted) as stop:
        analyze(m, _labelled(m), lenses=["dead", "scores"], progress=False)
    res = stop.value.result
    assert [v["status"] for v in res.lenses.values()] == ["ran", "ran"] and res.answer["dead"] == 2
    assert res.answer["removable"] is not None and res.headline()[0].startswith("Interrupted: after every lens")


USER_FILE = """import torch, torch.nn as nn
class Net(nn.Module):
    def __init__(self, num_classes=2):
        super().__init__()
        self.stem = nn.Conv2d(1, 6, 3, padding=1)
        self.f = nn.Sequential(nn.Conv2d(6, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1))
        self.fc = nn.Linear(6, num_classes)
    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.relu(x + self.f(x))
        return self.fc(x.mean((2, 3)))
def build(num_classes=2):
    return Net(num_classes)
"""


def test_cli_analyze_a_user_file_a_plain_state_dict_and_pngs(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    from cnn_redundancy.cli import main

    root = tmp_path / "pngs"
    rng = np.random.default_rng(1)
    for cls in ("circle", "square"):
        (root / cls).mkdir(parents=True)
        for i in range(15):
            Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(root / cls / f"{i}.png")
    (tmp_path / "net.py").write_text(USER_FILE)
    model = cr.get_model(f"{tmp_path / 'net.py'}:build", seed=0)
    torch.save(model.state_dict(), tmp_path / "weights.pth")  # a plain state_dict, as users save them
    out = tmp_path / "analysis"
    assert main(["-q", "analyze", "-m", f"{tmp_path / 'net.py'}:build", "-c", str(tmp_path / "weights.pth"),
                 "-d", "imagefolder", "--root", str(root), "--split", "all", "--grayscale", "--image-size", "16",
                 "--lenses", "dead", "blocks", "shuffle", "--out", str(out)]) == 0  # fmt: skip
    res = cr.Result.load(out / "analysis.json")
    assert res.layers == ["stem", "f.0", "f.2"] and list(res.blocks) == ["add"]
    assert res.data["analysis"] + res.data["validation"] == 30 and (out / "report.html").exists()
    assert "Dead kernels:" in capsys.readouterr().out


def test_long_lists_in_the_answer_say_how_many_more():
    from types import SimpleNamespace

    from cnn_redundancy.survey.report import answer_lines

    layers = [f"features.{i}" for i in range(15)]
    answer = {"thresholds": {"max_drop": 0.01}, "trivial_layers": layers, "layers_ablated": 20,
              "trivial_blocks": layers[:3], "blocks": 4}  # fmt: skip
    lines = answer_lines(SimpleNamespace(answer=answer))
    assert lines[0].endswith(": " + ", ".join(layers[:12]) + " and 3 more (analysis.json lists them all).")
    assert lines[0].startswith("Trivial layers (zeroing one drops the metric by <= 0.01): 15 of 20")
    assert lines[1].endswith(": features.0, features.1, features.2.")


def test_images_far_from_the_first_batchnorms_statistics_open_the_answer_with_a_warning():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 6, 3), nn.ReLU(),
                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3)).eval()  # fmt: skip
    x = torch.rand(60, 1, 12, 12)
    cr.recompute_bn_stats(m, torch.utils.data.TensorDataset(x, torch.zeros(60, dtype=torch.long)))  # trained on [0, 1]
    with torch.no_grad():
        labels = m(x).argmax(1)
    as_trained = analyze(m, torch.utils.data.TensorDataset(x, labels), lenses=["dead"], progress=False)
    assert as_trained.data["input_shift"]["layer"] == "1" and not as_trained.data["input_shift"]["far"]
    assert not any(x.startswith("Warning: The images reach") for x in answer_lines(as_trained))
    scaled = 2 * x - 1  # read as (x - 0.5) / 0.5
    res = analyze(m, torch.utils.data.TensorDataset(scaled, labels), lenses=["dead"], progress=False)
    shift = res.data["input_shift"]
    assert shift["far"] and shift["variance_ratio"] == pytest.approx(4.0, rel=0.01)
    first = answer_lines(res)[0]
    assert first.startswith("Warning: The images reach '1' (the model's first BatchNorm) far from its training statistics")
    assert "every metric and data-driven lens below may mean little" in first
    assert json.loads(json.dumps(res.to_dict()))["data"]["input_shift"]["far"] is True


def test_a_dict_output_model_gets_its_plain_twins_analysis():
    """``metric`` naming the output is read by every lens that evaluates, by the Taylor scores and by the
    held-out estimate: the answer is the plain model's. Before, analyze kept only the metric's name and raised."""
    from cnn_redundancy.testing import DictTinyCNN

    m = _planted()
    twin = DictTinyCNN(c1=6, c2=8).eval()
    twin.load_state_dict(m.state_dict())
    data = _labelled(m, n=60)
    lenses = ["dead", "distinctiveness", "scores", "ablation"]
    plain = analyze(m, data, lenses=lenses, progress=False, seed=2)
    got = analyze(twin, data, lenses=lenses, metric=cr.get_metric("accuracy", output="logits"), progress=False, seed=2)
    assert got.meta["params"].pop("output") == "logits" and got.meta["params"] == plain.meta["params"]
    strip = lambda d: {k: v for k, v in d.items() if k not in ("meta", "model")}  # noqa: E731
    assert json.dumps(strip(got.to_dict())) == json.dumps(strip(plain.to_dict()))
    assert got.answer["removable"]["evaluations"][0] == 1.0 and got.answer["removable"]["kernels"] >= 2
    assert any(v > 0 for v in got.per_kernel["conv2"]["taylor"])


def test_a_model_no_better_than_the_most_frequent_class_opens_the_answer_with_a_warning():
    m = _planted()
    with torch.no_grad():  # always class 9, which no image is
        m.fc.weight.zero_()
        m.fc.bias.zero_()
        m.fc.bias[9] = 1.0
    x = random_images(60, seed=5).tensors[0]
    y = torch.tensor([0, 0, 1] * 20)
    data, val = (torch.utils.data.TensorDataset(x[s], y[s]) for s in (slice(0, 30), slice(30, 60)))
    res = analyze(m, data, val=val, lenses=["dead"], progress=False)
    est = res.answer["removable"]
    assert est["baseline"] == 0.0 and est["chance"] == 2 / 3  # 20 of the 30 validation images are class 0
    assert answer_lines(res)[0] == (
        "Warning: on the validation images the model's accuracy (0.0000) is no better than always answering their "
        "most frequent class (0.6667): it has not learned what these images ask (untrained weights, labels in another "
        "order, other images), so the trivial layers and the removable MACs below say nothing about it.")


def test_validation_images_of_one_class_are_said_to_show_nothing_even_at_accuracy_one():
    m = _planted()
    with torch.no_grad():  # always class 9, as every validation image is: accuracy 1, and nothing learned
        m.fc.weight.zero_()
        m.fc.bias.zero_()
        m.fc.bias[9] = 1.0
    x = random_images(40, seed=5).tensors[0]
    data, val = torch.utils.data.TensorDataset(x[:30], torch.zeros(30, dtype=torch.long)), \
        torch.utils.data.TensorDataset(x[30:], torch.full((10,), 9))  # fmt: skip
    res = analyze(m, data, val=val, lenses=["dead"], progress=False)
    assert res.answer["removable"]["baseline"] == res.answer["removable"]["chance"] == 1.0
    assert answer_lines(res)[0] == (
        "Warning: the validation images are all of one class, so their accuracy (1.0000) cannot tell this model from "
        "one that always answers that class: the trivial layers and the removable MACs below say nothing about it; "
        "validate on images of every class.")


def test_a_learned_model_gets_no_chance_warning(planted):
    _, res = planted
    assert res.answer["removable"]["chance"] < res.answer["removable"]["baseline"] == 1.0
    assert not any(x.startswith("Warning") for x in answer_lines(res))


def test_a_conv_the_forward_pass_never_calls_is_left_out_or_named():
    from cnn_redundancy.testing import AuxHeadCNN as Aux

    res = analyze(Aux().eval(), random_images(40, seed=1), lenses=["impulse", "dead"], progress=False)
    assert res.layers == ["conv1", "conv2"] and res.data["not_called"] == ["aux"]  # left out by default, and said
    assert ("Not analysed: 1 conv layer(s) a forward pass in eval mode never calls (heads used in training only): aux."
            in answer_lines(res))  # fmt: skip
    for lens in ("impulse", "dead"):  # named by the user, it is named back: by the lens, not the planner
        with pytest.raises(ValueError, match=r"'aux': no activation in the forward pass\. A layer the forward pass in "
                                             r"eval mode never calls \(a head used in training only"):  # fmt: skip
            analyze(Aux().eval(), random_images(40, seed=1), layers=["conv1", "aux"], lenses=[lens], progress=False)
