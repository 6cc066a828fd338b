"""Zero-ablation and branch removal: known answers, fast path = full passes, restoration, errors."""

from __future__ import annotations

import pytest
import torch

import cnn_redundancy as cr
from cnn_redundancy.analyses.ablation import AblationResult, zero_ablation
from cnn_redundancy.compression.removal import RemovalResult, remove_branches, remove_trivial
from cnn_redundancy.core.hooks import hook_count
from cnn_redundancy.testing import PlainNet, random_images, zero_branch_resnet


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def net():
    return zero_branch_resnet(seed=0)


@pytest.fixture(scope="module")
def data():
    return random_images(48, (1, 12, 12), seed=1)


def _labels_from(model, data):
    """Relabel the data with the model's own predictions: baseline accuracy 1, so any change shows."""
    with torch.no_grad():
        y = model(data.tensors[0]).argmax(1)
    return torch.utils.data.TensorDataset(data.tensors[0], y)


def test_zero_bn_branch_is_trivial_under_both_modes(net, data):
    d = _labels_from(net, data)
    for mode, unit in (("zero-kernel", "layer1.1.conv1"), ("zero-kernel", "layer1.1.conv2"), ("remove-branch", "layer1.1")):
        res = zero_ablation(net, d, mode=mode, progress=False)
        assert res.baseline == 1.0
        assert res.scores[unit] == 1.0 and res.trivial[unit]
        assert res.unchanged == [unit] if mode == "remove-branch" else unit in res.unchanged
        others = [u for u in res.units if not u.startswith("layer1.1")]
        assert all(res.changed[u] for u in others)  # every other ablation really changed the output


def test_plain_conv_zeroed_collapses_the_net(data):
    torch.manual_seed(0)
    m = PlainNet().eval()
    res = zero_ablation(m, data, progress=False)
    # no biases: a zeroed conv makes every later activation and the logits exactly zero -> argmax 0
    frac0 = float((data.tensors[1] == 0).float().mean())
    assert res.units == ["conv1", "conv2", "conv3"]
    assert all(res.scores[u] == pytest.approx(frac0) for u in res.units)
    assert res.decomposition == ["conv1", "conv3"]
    with pytest.raises(ValueError, match="needs residual blocks"):
        zero_ablation(m, data, mode="remove-branch", progress=False)
    blocks = zero_ablation(m, data, scope="block", adjacent="none", progress=False)
    assert blocks.members == {"block1": ["conv2"]}


@pytest.mark.parametrize("scope,mode", [("layer", "zero-kernel"), ("layer", "remove-branch"), ("decomposition", "zero-kernel")])
def test_fast_path_equals_full_passes(net, data, scope, mode):
    a = zero_ablation(net, data, scope=scope, mode=mode, batch_size=20, progress=False)
    b = zero_ablation(net, data, scope=scope, mode=mode, batch_size=20, engine="naive", progress=False)
    assert a.meta["fast_path"] and not b.meta["fast_path"]
    assert a.baseline == b.baseline and a.scores == b.scores and a.changed == b.changed
    for u in a.units:
        assert a.max_change[u] == pytest.approx(b.max_change[u], rel=1e-5, abs=1e-6)


def test_fast_path_equals_full_passes_with_inplace_activations(data):
    """A plain net whose convs are each overwritten by a LeakyReLU(inplace=True) (applied twice, it would
    shrink negatives again): the split path takes every clean value as it was computed."""
    torch.manual_seed(4)
    act = lambda: torch.nn.LeakyReLU(0.3, inplace=True)  # noqa: E731
    m = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), act(), torch.nn.Conv2d(4, 4, 3, padding=1), act(),
                            torch.nn.Conv2d(4, 4, 3, padding=1), act(),
                            torch.nn.Flatten(), torch.nn.Linear(4 * 12 * 12, 10)).eval()  # fmt: skip
    labelled = _labels_from(m, data)
    a = zero_ablation(m, labelled, batch_size=20, progress=False)
    b = zero_ablation(m, labelled, batch_size=20, engine="naive", progress=False)
    assert a.meta["fast_path"] and a.scores == b.scores and a.changed == b.changed
    assert min(a.scores.values()) < 1.0  # zeroing some conv does change predictions


class _ViewInplaceNet(torch.nn.Module):
    """Each conv's output is changed in place through a view (``x.view(...).relu_()``) whose result nothing reads."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.c1, self.c2 = torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.Conv2d(4, 6, 3, padding=1)
        self.fc = torch.nn.Linear(6 * 12 * 12, 10)

    def forward(self, x):
        x = self.c1(x)
        x.view(x.shape[0], -1).relu_()
        y = self.c2(x)
        y.flatten(1).relu_()
        return self.fc(y.flatten(1))


def test_fast_path_equals_full_passes_with_inplace_ops_through_views(data):
    m = _ViewInplaceNet().eval()
    labelled = _labels_from(m, data)
    a = zero_ablation(m, labelled, batch_size=20, progress=False)
    b = zero_ablation(m, labelled, batch_size=20, engine="naive", progress=False)
    assert a.meta["fast_path"] and a.scores == b.scores and a.changed == b.changed
    assert min(a.scores.values()) < 1.0


def test_block_scope_members_and_decomposition_scope(net, data):
    res = zero_ablation(net, data, scope="block", progress=False)
    assert res.members == {
        "layer1": ["layer1.0.conv2", "layer1.1.conv1", "layer1.1.conv2", "layer1.2.conv1"],
        "layer2": ["layer2.1.conv2", "layer2.2.conv1"],
        "layer3": ["layer3.1.conv2", "layer3.2.conv1", "layer3.2.conv2"],
    }
    rb = zero_ablation(net, data, scope="block", mode="remove-branch", progress=False)
    assert rb.members["layer2"] == ["layer2.1", "layer2.2"]
    dec = zero_ablation(net, data, scope="decomposition", progress=False)
    assert dec.units == ["layer2.0.downsample.0", "layer3.0.downsample.0"] and dec.stages[dec.units[0]] == "layer2"


def test_model_left_bit_identical_also_on_error(net, data):
    net.train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    hooks = hook_count(net)
    for kw in ({"mode": "remove-branch", "engine": "naive"}, {"scope": "block"}, {"engine": "naive"}):
        zero_ablation(net, data, progress=False, **kw)
    with pytest.raises(ValueError, match="dice"):
        zero_ablation(net, data, metric="dice", engine="naive", progress=False)
    with pytest.raises(ValueError, match="dice"):
        zero_ablation(net, data, scope="block", mode="remove-branch", metric="dice", progress=False)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert hook_count(net) == hooks and all(m.training for m in net.modules())
    net.eval()


def test_bad_inputs(net, data):
    with pytest.raises(ValueError, match="scope must be"):
        zero_ablation(net, data, scope="layers")
    with pytest.raises(ValueError, match="mode must be"):
        zero_ablation(net, data, mode="zero")
    with pytest.raises(ValueError, match="mode='zero-kernel'"):
        zero_ablation(net, data, scope="decomposition", mode="remove-branch")
    with pytest.raises(ValueError, match="tolerance"):
        zero_ablation(net, data, tolerance=-1)
    with pytest.raises(TypeError, match="nn.Module"):
        zero_ablation("resnet20", data)
    with pytest.raises(ValueError, match="residual blocks; not blocks"):
        zero_ablation(net, data, mode="remove-branch", layers="layer1.0.conv1")
    with pytest.raises(ValueError, match="Unknown layer"):
        zero_ablation(net, data, layers="layer9.0.conv1")
    with pytest.raises(ValueError, match="residual block"):
        remove_branches(net, ["layer1.0.conv1"])


def test_result_round_trip_and_plot(net, data, tmp_path):
    res = zero_ablation(net, data, progress=False)
    again = AblationResult.load(res.save(tmp_path / "a.json"))
    assert again == res and again.verdict(1.0) == {u: True for u in res.units}
    assert len(res.table()) == len(res.units)
    fig = res.plot()
    assert len(fig.axes[0].patches) >= len(res.units)


def test_remove_trivial_smaller_model_within_tolerance_saves_and_loads(net, data, tmp_path):
    d = _labels_from(net, data)
    exact = remove_trivial(net, d, tolerance=0.0, measure=False, progress=False)
    assert "layer1.1" in exact.removed and exact.final == 1.0  # the zero-BN branch goes at zero tolerance
    res = remove_trivial(net, d, tolerance=0.25, progress=False)
    assert res.after["params"] < res.before["params"] and res.after["macs"] < res.before["macs"]
    # the measured latency is a timing: in meta, outside the same-seed comparison
    assert "latency_ms" not in res.before and res.meta["latency_ms"]["before"] > 0 and res.meta["complete"] is True
    assert remove_trivial(net, d, tolerance=0.25, progress=False) == res
    assert res.baseline - res.final <= 0.25
    assert cr.evaluate(res.model, d) == pytest.approx(res.final)
    path = cr.save_checkpoint(res.model, tmp_path / "m.pt")
    loaded = cr.load_checkpoint(path)
    x = d.tensors[0][:8]
    with torch.no_grad():
        assert torch.equal(loaded(x), res.model.eval()(x))
    assert sum(p.numel() for p in loaded.parameters()) == res.after["params"]
    assert type(loaded.get_submodule(res.removed[0])).__name__ == "BranchRemoved"
    assert RemovalResult.load(res.save(tmp_path / "r.json")).removed == res.removed


def test_cli_reproduce_quick(tmp_path):
    from cnn_redundancy.cli import main

    assert main(["-q", "reproduce", "ablation", "--quick", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "report.html").exists() and (tmp_path / "sections" / "zero-ablation.json").exists()
    res = AblationResult.load(tmp_path / "resnet20-mnist5k-layer-zero-kernel.json")
    assert len(res.units) == 21
    assert cr.load_checkpoint(tmp_path / "resnet20-trimmed.pt") is not None


def test_remove_trivial_keeps_the_branches_tried_when_interrupted(net, data, tmp_path, interrupt_at):
    import cnn_redundancy.compression.removal as R

    d = _labels_from(net, data)
    interrupt_at(R, "evaluate", 2)  # Ctrl-C while the second branch is tried
    with pytest.raises(KeyboardInterrupt):
        remove_trivial(net, d, tolerance=1.0, measure=False, progress=False, partial=tmp_path / "removal.json")
    kept = RemovalResult.load(tmp_path / "removal.json")
    assert len(kept.trials) == 1 and kept.meta["complete"] is False
    ranking = AblationResult.load(tmp_path / "removal-ranking.json")  # the ranking sweep had finished
    assert ranking.meta["complete"] is True and ranking.mode == "remove-branch"


def test_remove_trivial_writes_partial_results_as_it_goes(net, data, tmp_path, monkeypatch):
    import cnn_redundancy.compression.removal as R
    import cnn_redundancy.core.results as results

    monkeypatch.setattr(results, "PARTIAL_EVERY", 0.0)  # the 30 s cadence, shortened
    d, real, on_disk = _labels_from(net, data), R.evaluate, []

    def look(*a, **kw):
        path = tmp_path / "removal.json"
        on_disk.append(len(RemovalResult.load(path).trials) if path.exists() else None)
        return real(*a, **kw)

    monkeypatch.setattr(R, "evaluate", look)
    remove_trivial(net, d, tolerance=1.0, measure=False, progress=False, partial=tmp_path / "removal.json")
    assert on_disk[:3] == [None, 1, 2]


def _interrupt_at(module: torch.nn.Module, call: int):
    """A forward hook that raises KeyboardInterrupt at ``module``'s ``call``-th call (from 1)."""
    calls = []

    def hook(*_):
        calls.append(1)
        if len(calls) == call:
            raise KeyboardInterrupt

    return module.register_forward_hook(hook)


@pytest.mark.parametrize("engine", ["fast", "naive"])
def test_an_interrupt_within_the_first_batch_keeps_the_convs_measured_so_far(engine, tmp_path):
    """Each conv measured before the interrupt is in the partial result with its score, change and verdict,
    over the same samples as the baseline; the others are absent."""
    from cnn_redundancy.testing import TinyCNN

    m, data = TinyCNN().eval(), random_images(64, seed=1)
    full = zero_ablation(m, data, batch_size=64, engine=engine, progress=False)
    part = tmp_path / "partial.json"
    # fc's calls: two input checks, the clean pass, then one per ablated conv: stopped at conv2's
    handle = _interrupt_at(m.fc, 5)
    try:
        with pytest.raises(KeyboardInterrupt):
            zero_ablation(m, data, batch_size=64, engine=engine, progress=False, partial=part)
    finally:
        handle.remove()
    kept = cr.Result.load(part)
    assert kept.meta["complete"] is False and kept.units == ["conv1"]
    assert kept.baseline == full.baseline and kept.scores["conv1"] == full.scores["conv1"]
    assert kept.changed["conv1"] == full.changed["conv1"] and kept.max_change["conv1"] == full.max_change["conv1"]
    assert kept.headline() and kept.unchanged == full.unchanged


def test_an_interrupt_within_a_later_batch_keeps_whole_batches_with_their_baseline(tmp_path):
    """Stopped within the second batch, the partial result covers the first batch only: the baseline and
    every score over the same 32 samples (labels right in the first batch and wrong in the second)."""
    from cnn_redundancy.testing import TinyCNN

    m = TinyCNN().eval()
    x = random_images(64, seed=3).tensors[0]
    with torch.no_grad():
        pred = m(x).argmax(1)
    y = torch.cat([pred[:32], (pred[32:] + 1) % 10])
    data = torch.utils.data.TensorDataset(x, y)
    first = zero_ablation(m, torch.utils.data.Subset(data, range(32)), batch_size=32, progress=False)
    part = tmp_path / "partial.json"
    handle = _interrupt_at(m.fc, 2 + 3 + 3)  # the input checks; batch 0's clean pass and 2 convs; batch 1's at conv2
    try:
        with pytest.raises(KeyboardInterrupt):
            zero_ablation(m, data, batch_size=32, progress=False, partial=part, engine="fast")
    finally:
        handle.remove()
    kept = cr.Result.load(part)
    assert kept.meta["complete"] is False and kept.baseline == first.baseline == 1.0
    assert kept.scores == first.scores
