"""Pruning: least-distinct choice, Gedeon-Harris merge/complementary, criteria, real removal, save/load."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import cnn_redundancy as cr
import cnn_redundancy.testing as T
from cnn_redundancy.compression.pruning.importance import FPGMImportance, input_rows
from cnn_redundancy.core.hooks import hook_count
from cnn_redundancy.testing import TinyCNN, duplicated_kernels_net, grouped_conv_net, random_images


def _state(m):
    return {k: v.clone() for k, v in m.state_dict().items()}


def test_least_distinct_removes_duplicates_first_and_leaves_input_untouched():
    m, d = duplicated_kernels_net().train(), random_images(48)
    before, hooks = _state(m), hook_count(m)
    res = cr.prune(m, d, steps=2)
    got = [(h["layer"], h["kernel"], h["partner"]) for h in res.history]
    assert sorted(got) == [("conv1", 1, 0), ("conv2", 3, 2)]  # equal norms: the higher index goes
    assert all(h["angle"] == pytest.approx(0.0, abs=1e-3) for h in res.history)
    assert res.model.conv1.out_channels == 3 and res.model.conv2.out_channels == 5
    assert res.model.conv2.in_channels == 3 and res.model.fc.in_features == 5 * 9
    assert res.params_after < res.params_before and res.macs_after < res.macs_before
    # the input model is untouched
    assert m.conv1.out_channels == 4 and all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    assert m.training and hook_count(m) == hooks
    # removing a duplicate (not merged) changes the output; the pruned model runs
    assert res.model(torch.randn(2, 1, 12, 12)).shape == (2, 10)


def test_gedeon_harris_merge_of_duplicates_keeps_outputs():
    m, d = duplicated_kernels_net(), random_images(48)
    res = cr.prune(m, d, rule="gedeon-harris", steps=2)
    assert [h["action"] for h in res.history] == ["merge", "merge"]
    assert res.params_after < res.params_before
    x = torch.randn(6, 1, 12, 12)
    with torch.no_grad():
        assert torch.allclose(res.model(x), m(x), atol=1e-5)
    # the plain least-distinct rule (no merge) does change the outputs
    plain = cr.prune(m, d, steps=2)
    with torch.no_grad():
        assert not torch.allclose(plain.model(x), m(x), atol=1e-3)


def test_gedeon_harris_complementary_pair_removed_with_centering_only():
    m, d = T.complementary_pair_net(), T.constant_images(64)
    centered = cr.prune(m, d, rule="gedeon-harris", center="mean", steps=1)
    assert centered.history[0]["action"] == "remove-pair"
    assert centered.history[0]["removed"] == {"conv": [0, 1]}
    assert centered.model.conv.out_channels == 1
    plain = cr.prune(m, d, rule="gedeon-harris", steps=1)  # no pair under 15 or over 165 degrees
    assert plain.history == [] and "no pair" in plain.stopped
    # folding: on the mean input the pruned model's output stays close to the original's
    x = torch.full((1, 1, 12, 12), 0.5)
    with torch.no_grad():
        assert torch.allclose(centered.model(x), m(x), atol=0.05)


def test_random_is_reproducible_with_a_seed():
    m, d = TinyCNN().eval(), random_images(16)
    a = cr.prune(m, d, criterion="random", steps=4, seed=3)
    b = cr.prune(m, d, criterion="random", steps=4, seed=3)
    c = cr.prune(m, d, criterion="random", steps=4, seed=4)
    assert a.to_dict() == b.to_dict()
    assert [h["removed"] for h in a.history] != [h["removed"] for h in c.history]


@pytest.mark.parametrize("criterion", ["l1", "l2", "fpgm", "taylor"])
def test_standard_criteria_remove_the_least_important(criterion):
    m, d = TinyCNN().eval(), random_images(16)
    with torch.no_grad():
        m.conv2.weight[5] *= 1e-3  # a near-zero filter
        m.conv2.bias[5] = 0.0
    res = cr.prune(m, d, criterion=criterion, steps=1)
    assert res.model.conv1.out_channels + res.model.conv2.out_channels == 9
    if criterion in ("l1", "l2", "taylor"):
        assert (res.history[0]["layer"], res.history[0]["kernel"]) == ("conv2", 5)


def test_distinctiveness_as_torch_pruning_importance():
    import torch_pruning as tp

    m = duplicated_kernels_net()
    dg = tp.DependencyGraph().build_dependency(m, torch.zeros(1, 1, 12, 12))
    group = dg.get_pruning_group(m.conv1, tp.prune_conv_out_channels, [0, 1, 2, 3])
    scores = cr.DistinctivenessImportance(random_images(32))(group)
    assert scores.shape == (4,) and int(scores.argmin()) in (0, 1) and float(scores.min()) < 1e-3
    rnd = cr.SeededRandomImportance(1)(group), cr.SeededRandomImportance(1)(group)
    assert torch.equal(*rnd)
    pruner = tp.pruner.MetaPruner(m, torch.zeros(1, 1, 12, 12), importance=cr.DistinctivenessImportance(random_images(32)),
                                  pruning_ratio=0.25, ignored_layers=[m.fc])
    pruner.step()
    assert m.conv1.out_channels == 3


@pytest.mark.parametrize(
    "name,kw,shape",
    [("torchvision:resnet18", {"num_classes": 10}, (3, 32, 32)),
     ("torchvision:mobilenet_v2", {"num_classes": 10, "width_mult": 0.25}, (3, 32, 32)),
     (f"{T.__file__}:grouped_conv_net", {}, (1, 12, 12))],
)
def test_pruned_models_run_and_save_load(name, kw, shape, tmp_path):
    torch.manual_seed(0)
    m = cr.get_model(name, **kw).eval()
    layers = {"torchvision:resnet18": ["layer1.0.conv1", "layer1.0.conv2", "layer2.0.conv1"],
              "torchvision:mobilenet_v2": ["features.2.conv.1.0", "features.1.conv.0.0"]}.get(name)
    res = cr.prune(m, random_images(8, shape), steps=3, layers=layers)
    assert res.params_after < res.params_before and res.macs_after < res.macs_before
    x = torch.randn(2, *shape)
    with torch.no_grad():
        y = res.model(x)
    assert y.shape == m(x).shape
    path = cr.save_checkpoint(res.model, tmp_path / "p.pt")
    if ".py:" in name:  # a checkpoint never runs the file it names: the caller names it
        with pytest.raises(cr.CheckpointError, match="never runs code"):
            cr.load_checkpoint(path)
    back = cr.load_checkpoint(path, model=name if ".py:" in name else None)
    with torch.no_grad():
        assert torch.allclose(back(x), y, atol=1e-6)
    if "grouped" in name:  # one kernel per group goes: groups stay equal
        assert all(len(v) % 2 == 0 for h in res.history for k, v in h["removed"].items() if k in ("conv1", "conv2"))
    if "mobilenet" in name:  # depthwise conv pruned together with the conv feeding it
        assert any(len(h["removed"]) >= 2 for h in res.history)


def test_bad_inputs():
    m, d = TinyCNN().eval(), random_images(8)
    with pytest.raises(ValueError, match="Unknown criterion"):
        cr.prune(m, d, criterion="magic")
    with pytest.raises(ValueError, match="removable kernels"):
        cr.prune(m, d, steps=9)  # 3 + 5 removable
    with pytest.raises(ValueError, match="Unknown rule"):
        cr.prune(m, d, rule="most-distinct")
    one = TinyCNN(c1=1).eval()
    with pytest.raises(ValueError, match="one kernel"):
        cr.prune(one, d, layers="conv1", steps=1)


def test_prune_result_round_trip(tmp_path):
    res = cr.prune(duplicated_kernels_net(), random_images(16), steps=2, track_macs=True)
    again = cr.Result.load(res.save(tmp_path / "p.json"))
    assert again == res and again.model is None
    assert res.history[-1]["macs"] == res.macs_after
    assert len(res.plot().axes) == 2


def test_pruning_trials_tables_and_gap():
    tr = cr.subset(cr.load_dataset("mnist5k", "train"), 96)
    te = cr.subset(cr.load_dataset("mnist5k", "test"), 48)
    r = cr.pruning_trials("lenet5", tr, te, trials=2, steps=2, epochs=1, batch_size=32)
    assert set(r.test_acc) == {"distinctiveness", "random"}
    assert all(len(row) == 3 for rows in r.test_acc.values() for row in rows)
    # both criteria start from the same trained baseline in each trial
    assert [row[0] for row in r.test_acc["random"]] == [row[0] for row in r.test_acc["distinctiveness"]]
    table = r.table("random")
    assert table[0][0] == "Accuracy on test set" and len(table[0]) == 4
    assert set(r.gap["random"]) == {"train", "test"}
    assert len(r.removed["distinctiveness"][0]) == 2 and r.meta["seconds"] > 0


def test_cli_reproduce_quick_and_prune(tmp_path):
    from cnn_redundancy.cli import main

    out = tmp_path / "rep"
    assert main(["-q", "reproduce", "distinctiveness", "--quick", "--out", str(out)]) == 0
    assert (out / "report.html").exists() and (out / "distinctiveness_trials.png").exists()
    section = (out / "sections" / "distinctiveness.json").read_text()
    assert "Table 1" in section and "Average gap" in section
    trials = cr.Result.load(out / "distinctiveness_trials.json")
    assert trials.trials == 2 and len(trials.test_acc["distinctiveness"][0]) == 3 and trials.meta["complete"] is True
    h2h = cr.Result.load(out / "head_to_head_lenet5.json")  # latencies are timings, kept in meta
    assert "latency_ms" not in h2h.baseline and all("latency_ms" not in r for r in h2h.rows)
    unpruned, rows = h2h.latency()
    assert unpruned > 0 and len(rows) == len(h2h.rows) and all(v > 0 for v in rows)
    assert main(["-q", "prune", "--model", "lenet5", "--limit", "64", "--steps", "2", "--criterion", "l1",
                 "--out", str(tmp_path / "pr")]) == 0
    pruned = cr.load_checkpoint(tmp_path / "pr" / "model.pt")
    assert pruned.conv1.out_channels + pruned.conv2.out_channels == 20


@pytest.mark.parametrize("criterion", ["l1", "taylor", "distinctiveness", "random"])
def test_frozen_layers_are_pruned_and_stay_frozen(criterion):
    m = TinyCNN()
    m.conv1 = torch.nn.Conv2d(1, 4, 3, padding=1, bias=False)  # a bias-free stem, frozen as in transfer learning
    m.conv1.weight.requires_grad_(False)
    m.fc.weight.requires_grad_(False)
    res = cr.prune(m, random_images(16), criterion=criterion, steps=2, layers="conv1")
    assert res.model.conv1.out_channels == 2 and res.model.conv1.weight.shape == (2, 1, 3, 3)
    assert not res.model.conv1.weight.requires_grad and not res.model.fc.weight.requires_grad
    assert res.model.conv2.weight.requires_grad and not m.conv1.weight.requires_grad
    assert all(p.grad is None for p in m.parameters())


def test_a_model_that_cannot_be_copied_gets_a_clear_message():
    import threading

    m = TinyCNN()
    m.lock = threading.Lock()
    with pytest.raises(ValueError, match=r"TinyCNN cannot be copied \(copy.deepcopy failed.*make the model deep-copyable"):
        cr.prune(m, random_images(8), steps=1)


def test_prune_keeps_the_steps_done_when_interrupted(tmp_path):
    def stop(entry, model):
        if entry["step"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cr.prune(TinyCNN(), random_images(16), steps=5, callback=stop, partial=tmp_path / "prune.json")
    kept = cr.Result.load(tmp_path / "prune.json")
    assert [h["step"] for h in kept.history] == [1, 2] and kept.meta["complete"] is False
    done = cr.prune(TinyCNN(), random_images(16), steps=2, partial=tmp_path / "done.json")
    assert cr.Result.load(tmp_path / "done.json") == done and done.meta["complete"] is True


def test_pruning_trials_keep_the_finished_runs_when_interrupted(tmp_path, interrupt_at):
    from cnn_redundancy.compression.pruning import trials as TR

    interrupt_at(TR, "_pruned_trial", 2)  # Ctrl-C during the second (trial, criterion) run
    tr = cr.subset(cr.load_dataset("mnist5k", "train"), 64)
    with pytest.raises(KeyboardInterrupt):
        cr.pruning_trials("lenet5", tr, tr, trials=2, steps=1, epochs=1, partial=tmp_path / "t.json")
    kept = cr.Result.load(tmp_path / "t.json")
    assert len(kept.test_acc["distinctiveness"]) == 1 and kept.test_acc["random"] == [] and kept.meta["complete"] is False


def test_prune_writes_partial_results_as_it_goes(tmp_path, monkeypatch):
    import cnn_redundancy.core.results as results

    monkeypatch.setattr(results, "PARTIAL_EVERY", 0.0)  # the 30 s cadence, shortened
    on_disk = []

    def look(entry, model):
        on_disk.append(len(cr.Result.load(tmp_path / "p.json").history))

    cr.prune(TinyCNN(), random_images(16), steps=3, callback=look, partial=tmp_path / "p.json")
    assert on_disk == [1, 2, 3]


def test_pruning_trials_write_partial_results_as_they_go(tmp_path, monkeypatch):
    import cnn_redundancy.core.results as results
    from cnn_redundancy.compression.pruning import trials as TR

    monkeypatch.setattr(results, "PARTIAL_EVERY", 0.0)  # the 30 s cadence, shortened
    real, on_disk = TR._pruned_trial, []

    def look(*a, **kw):
        path = tmp_path / "t.json"
        on_disk.append(sum(map(len, cr.Result.load(path).test_acc.values())) if path.exists() else None)
        return real(*a, **kw)

    monkeypatch.setattr(TR, "_pruned_trial", look)
    tr = cr.subset(cr.load_dataset("mnist5k", "train"), 64)
    cr.pruning_trials("lenet5", tr, tr, trials=1, steps=1, epochs=1, partial=tmp_path / "t.json")
    assert on_disk == [None, 1]


def test_fpgm_ranks_as_torch_pruning_where_torch_pruning_runs():
    import torch_pruning as tp
    import torchvision

    for m, x in [(TinyCNN().eval(), torch.zeros(1, 1, 12, 12)),
                 (torchvision.models.resnet18(num_classes=10).eval(), torch.zeros(1, 3, 32, 32))]:
        dg = tp.DependencyGraph().build_dependency(m, x)
        for conv in [mod for mod in m.modules() if isinstance(mod, torch.nn.Conv2d)]:
            group = dg.get_pruning_group(conv, tp.prune_conv_out_channels, list(range(conv.out_channels)))
            assert torch.equal(FPGMImportance(p=2)(group), tp.importance.FPGMImportance(p=2)(group))


def test_fpgm_reads_a_grouped_conv_input_channel_from_its_own_group():
    conv = torch.nn.Conv2d(6, 4, 1, groups=2)  # input channels 0-2 read by kernels 0-1, channels 3-5 by kernels 2-3
    with torch.no_grad():
        for o in range(4):
            for p in range(3):
                conv.weight[o, p] = 100 * o + (o // 2) * 3 + p  # encodes the kernel and the input channel it reads
    rows = input_rows(conv)
    assert rows.shape == (6, 2)
    for c in range(6):
        assert sorted((rows[c] % 100).long().tolist()) == [c, c]
        assert sorted((rows[c] // 100).long().tolist()) == ([0, 1] if c < 3 else [2, 3])


@pytest.mark.parametrize("criterion", ["fpgm", "auto"])
def test_a_model_with_a_grouped_conv_prunes_and_compresses_by_every_criterion(criterion):
    data = random_images(40, seed=2)
    if criterion == "fpgm":  # Torch-Pruning 1.6.1's own FPGM raised here
        res = cr.prune(grouped_conv_net(), data, criterion="fpgm", steps=2)
        assert len(res.history) == 2
        assert all(len(v) % 2 == 0 for h in res.history for k, v in h["removed"].items() if k in ("conv1", "conv2"))
        return
    from cnn_redundancy.compression.compress import compress

    r = compress(grouped_conv_net(), data, target_macs=0.8, max_drop=None, stages=("channels",), finetune_epochs=0,
                 baselines=(), progress=False)  # fmt: skip
    assert set(r.candidates) >= {"fpgm", "l1", "taylor", "distinctiveness"}
    assert r.final["macs"] < r.original["macs"]


@pytest.mark.parametrize("weaker", [0, 1])
def test_the_reason_names_the_weaker_kernel_whichever_its_index(weaker):
    m = duplicated_kernels_net()
    with torch.no_grad():  # the same direction (ReLU(z / 2) = ReLU(z) / 2), half the norm
        m.conv1.weight[weaker] = m.conv1.weight[1 - weaker] / 2
        m.conv1.bias[weaker] = m.conv1.bias[1 - weaker] / 2
    step = cr.prune(m, random_images(32), layers="conv1", steps=1).history[0]
    assert (step["kernel"], step["partner"]) == (weaker, 1 - weaker)
    assert step["reason"] == "the weaker of the pair (smaller mean activation norm)"
    tie = cr.prune(duplicated_kernels_net(), random_images(32), layers="conv1", steps=1).history[0]
    assert (tie["kernel"], tie["reason"]) == (1, "the higher index of the pair (equal mean activation norms)")


class _ChannelShuffle(nn.Module):
    """conv1 -> ShuffleNet's channel shuffle (reshape, transpose, reshape) -> conv2: Torch-Pruning maps conv1's
    channels through it wrongly, and the pruned model cannot run."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, 10)

    def forward(self, x):
        x = self.conv1(x).relu()
        b, c, h, w = x.shape
        x = x.view(b, 2, c // 2, h, w).transpose(1, 2).reshape(b, c, h, w)
        return self.fc(self.conv2(x).relu().mean((2, 3)))


def test_a_removal_torch_pruning_cannot_carry_is_one_clear_error():
    """It surfaced as a reshape error from the user's forward pass, or a ZeroDivisionError inside Torch-Pruning."""
    torch.manual_seed(0)
    m = _ChannelShuffle().eval()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(ValueError, match=r"removing kernels of 'conv1' left _ChannelShuffle unable to run .*compress "
                                         r"and prune cannot run on this model"):  # fmt: skip
        cr.prune(m, random_images(16), criterion="l1", steps=1, layers="conv1", progress=False)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    shufflenet = cr.get_model("torchvision:shufflenet_v2_x0_5", num_classes=3, seed=0).eval()
    with pytest.raises(ValueError, match=r"Torch-Pruning cannot trace which channels of ShuffleNetV2 depend on each other "
                                         r"\(ZeroDivisionError in its index_mapping\.py"):  # fmt: skip
        cr.prune(shufflenet, random_images(4, (3, 32, 32)), criterion="l1", steps=1, progress=False)


def test_the_models_own_error_during_the_graph_trace_is_its_own():
    class Broken(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)

        def forward(self, x):
            raise RuntimeError("boom in the user's forward")

    with pytest.raises(RuntimeError, match="boom in the user's forward"):
        cr.prune(Broken(), random_images(4), criterion="l1", steps=1, progress=False)


def test_prune_leaves_a_head_used_in_training_only_as_it_is():
    from cnn_redundancy.testing import AuxHeadCNN as Aux

    torch.manual_seed(0)
    r = cr.prune(Aux().eval(), random_images(32), steps=2, progress=False)  # distinctiveness stopped on aux before
    assert r.meta["not_called"] == ["aux"] and r.layers == ["conv1", "conv2"] and r.model.aux.out_channels == 2
    assert sum(r.kernels_before.values()) - sum(r.kernels_after.values()) == 2
