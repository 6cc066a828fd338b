"""A stopped sweep resumed from its state gives the uninterrupted run's result, bit for bit; a state that is
not the run's is refused with the reason (the distributed test resumes with another number of processes)."""

from __future__ import annotations

import json

import pytest
import torch

import cnn_redundancy as cr
from cnn_redundancy.core import results as core_results
from cnn_redundancy.core import sweep as core_sweep
from cnn_redundancy.core.metrics import Accuracy
from cnn_redundancy.core.resume import state_path
from cnn_redundancy.testing import TinyCNN, random_images

KW = {"batch_size": 8, "progress": False}


def _tiny(seed: int = 0) -> TinyCNN:
    torch.manual_seed(seed)
    return TinyCNN().eval()


def _json(res) -> str:
    d = res.to_dict()
    d["meta"].pop("seconds", None)
    return json.dumps(d, sort_keys=True)


@pytest.fixture
def stop_at(monkeypatch):
    """``stop_at(i)``: the next sweeps raise KeyboardInterrupt as they start measuring batch ``i``."""
    measure = core_sweep._Run.measure

    def arm(index: int) -> None:
        def stopping(self, b, dev, tick):
            if b.index == index:
                raise KeyboardInterrupt
            return measure(self, b, dev, tick)

        monkeypatch.setattr(core_sweep._Run, "measure", stopping)

    yield arm
    monkeypatch.setattr(core_sweep._Run, "measure", measure)


def _stopped(run, path, index: int, stop_at) -> dict:
    stop_at(index)
    with pytest.raises(KeyboardInterrupt):
        run(partial=path)
    stop_at(-1)
    assert json.loads(path.read_text())["meta"]["complete"] is False
    return torch.load(state_path(path), weights_only=True)  # data only: no code runs


@pytest.mark.parametrize("index", [1, 3])
def test_channel_shuffle_resumed_equals_uninterrupted(tmp_path, stop_at, index):
    data = random_images(40, seed=1)  # 5 batches

    def run(**kw):
        return cr.channel_shuffle(_tiny(), data, repeats=2, **KW, **kw)

    whole = run()
    saved = _stopped(run, tmp_path / "s.json", index, stop_at)
    assert saved["batches"] == index and saved["n_seen"] == 8 * index
    resumed = run(partial=tmp_path / "s.json", resume=True)
    assert _json(resumed) == _json(whole)
    assert json.loads((tmp_path / "s.json").read_text())["meta"]["complete"] is True
    assert not state_path(tmp_path / "s.json").exists()  # removed once complete


def test_zero_ablation_resumed_equals_uninterrupted(tmp_path, stop_at):
    data = random_images(24, (1, 12, 12), seed=2)

    def run(**kw):
        torch.manual_seed(0)
        return cr.zero_ablation(cr.get_model("resnet20", in_channels=1, input_size=12).eval(), data, **KW, **kw)

    whole = run()
    assert _stopped(run, tmp_path / "z.json", 2, stop_at)["batches"] == 2
    assert _json(run(partial=tmp_path / "z.json", resume=True)) == _json(whole)


def test_remove_trivial_resumes_its_ranking_sweep(tmp_path, stop_at):
    from cnn_redundancy.compression.removal import remove_trivial
    from cnn_redundancy.testing import zero_branch_resnet

    data = random_images(24, (1, 12, 12), seed=2)
    kw = {"tolerance": 0.05, "measure": False, "batch_size": 8, "progress": False}
    whole = remove_trivial(zero_branch_resnet(), data, **kw)
    stop_at(1)
    with pytest.raises(KeyboardInterrupt):
        remove_trivial(zero_branch_resnet(), data, partial=tmp_path / "r.json", **kw)
    stop_at(-1)
    assert torch.load(tmp_path / "r-ranking.state.pt", weights_only=True)["batches"] == 1
    resumed = remove_trivial(zero_branch_resnet(), data, partial=tmp_path / "r.json", resume=True, **kw)
    assert resumed.removed == whole.removed and resumed.final == whole.final
    ranking = cr.zero_ablation(zero_branch_resnet(), data, scope="layer", mode="remove-branch", tolerance=0.05,
                               batch_size=8, progress=False)  # what the resumed ranking sweep must have found
    assert json.loads((tmp_path / "r-ranking.json").read_text())["scores"] == ranking.to_dict()["scores"]
    assert not (tmp_path / "r-ranking.state.pt").exists()


def test_a_batch_half_added_is_never_kept(tmp_path, monkeypatch):
    """Stopped while a batch's numbers are being added: the state kept is the one before that batch."""
    data = random_images(40, seed=1)
    whole = cr.channel_shuffle(_tiny(), data, "conv2", **KW)
    monkeypatch.setattr(core_results, "PARTIAL_EVERY", 0.0)  # the state is written at every unit
    apply_unit, calls = core_sweep._Run._apply_unit, []

    def stopping(self, unit, size):
        calls.append(1)
        if len(calls) == 4 * 3 + 2:  # batches 0 (streamed), 1 and 2 whole; batch 3 stopped after 2 units of 4
            raise KeyboardInterrupt
        return apply_unit(self, unit, size)

    monkeypatch.setattr(core_sweep._Run, "_apply_unit", stopping)
    with pytest.raises(KeyboardInterrupt):
        cr.channel_shuffle(_tiny(), data, "conv2", partial=tmp_path / "h.json", **KW)
    monkeypatch.setattr(core_sweep._Run, "_apply_unit", apply_unit)
    assert torch.load(state_path(tmp_path / "h.json"), weights_only=True)["batches"] == 3
    assert _json(cr.channel_shuffle(_tiny(), data, "conv2", partial=tmp_path / "h.json", resume=True, **KW)) == _json(whole)


def test_stopped_within_the_first_batch_starts_again(tmp_path, stop_at):
    """Nothing whole to keep: resume starts from the first batch, and says so."""
    data = random_images(16, seed=1)
    model = _tiny()
    calls = []

    def stop(*_):  # the third channel of the first batch
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt

    handle = model.fc.register_forward_hook(stop)
    with pytest.raises(KeyboardInterrupt):
        cr.channel_shuffle(model, data, "conv2", partial=tmp_path / "f.json", **KW)
    handle.remove()
    assert json.loads((tmp_path / "f.json").read_text())["meta"]["complete"] is False
    assert not state_path(tmp_path / "f.json").exists()
    with pytest.warns(UserWarning, match="starting from the first batch"):
        again = cr.channel_shuffle(model, data, "conv2", partial=tmp_path / "f.json", resume=True, **KW)
    assert _json(again) == _json(cr.channel_shuffle(_tiny(), data, "conv2", **KW))


def _one_sample_changed(seed: int):
    data = random_images(40, seed=seed)
    data.tensors[0][22] += 1.0  # the same size and first sample
    return data


def _shuffled(seed: int):
    return torch.utils.data.DataLoader(random_images(40, seed=1), batch_size=8, shuffle=True,
                                       generator=torch.Generator().manual_seed(seed))  # fmt: skip


@pytest.mark.parametrize("change, what", [
    ({"model": 1}, "its model weights"),
    ({"data": lambda: random_images(40, seed=2)}, "its data"),
    ({"data": lambda: _one_sample_changed(1)}, "its data"),
    ({"data": lambda: _shuffled(0)}, "its data"),  # the same samples in another order
    ({"channels": [2, 3]}, "its settings"),  # as many channels, others
    ({"seed": 5}, "its settings"),
    ({"metric": None}, "its settings"),
])  # fmt: skip
def test_another_runs_state_is_refused(tmp_path, stop_at, change, what):
    base = {"model": 0, "data": lambda: random_images(40, seed=1), "channels": [0, 1], "seed": 0, "metric": "accuracy"}

    def run(c, **kw):
        return cr.channel_shuffle(_tiny(c["model"]), c["data"](), "conv2", channels=c["channels"], seed=c["seed"],
                                  metric=c["metric"], **KW, **kw)  # fmt: skip

    _stopped(lambda **kw: run(base, **kw), tmp_path / "r.json", 2, stop_at)
    with pytest.raises(ValueError, match=f"differs from this one in {what}"):
        run({**base, **change}, partial=tmp_path / "r.json", resume=True)
    assert state_path(tmp_path / "r.json").exists()  # refused, not thrown away


def test_a_seeded_shuffling_loader_resumes(tmp_path, stop_at):
    """A DataLoader that shuffles with a seeded generator: the same order again, so the stopped run continues;
    without a generator every pass has another order, so no state is kept and resume says why."""

    def run(**kw):
        return cr.channel_shuffle(_tiny(), _shuffled(3), "conv2", progress=False, **kw)

    whole = run()
    assert _stopped(run, tmp_path / "l.json", 2, stop_at)["batches"] == 2
    assert _json(run(partial=tmp_path / "l.json", resume=True)) == _json(whole)
    unseeded = torch.utils.data.DataLoader(random_images(40, seed=1), batch_size=8, shuffle=True)
    with pytest.warns(UserWarning, match="cannot be resumed .*shuffles without a seeded generator"):
        cr.channel_shuffle(_tiny(), unseeded, "conv2", progress=False, partial=tmp_path / "u.json", resume=True)
    assert not state_path(tmp_path / "u.json").exists()


def test_the_data_fingerprint_sees_listings_and_order():
    from cnn_redundancy.core.resume import data_fingerprint

    data = random_images(40, seed=1)
    subset = lambda idx: torch.utils.data.DataLoader(torch.utils.data.Subset(data, idx), batch_size=8)  # noqa: E731
    a, b = data_fingerprint(subset(list(range(20)))), data_fingerprint(subset([*range(19), 30]))
    assert a["listing"] != b["listing"] and a["samples"] == b["samples"]

    class Folder(torch.utils.data.Dataset):  # lists its files as torchvision's ImageFolder does
        def __init__(self, files):
            self.samples = [(f, 0) for f in files]

        def __len__(self):
            return len(self.samples)

        def __getitem__(self, i):
            return torch.zeros(1, 2, 2), 0

    files = [f"{i}.png" for i in range(10)]
    one, other = (data_fingerprint(torch.utils.data.DataLoader(Folder(f), batch_size=4)) for f in (files, [*files[:9], "x.png"]))
    assert one["listing"] != other["listing"] and one["samples_hash"] == other["samples_hash"]
    joined = [data_fingerprint(torch.utils.data.DataLoader(torch.utils.data.ConcatDataset([Folder(files), Folder(f)]),
                                                           batch_size=4)) for f in (files, [*files[:9], "x.png"])]  # fmt: skip
    assert joined[0]["listing"] != joined[1]["listing"]  # the train and test folders of --split all
    g = torch.Generator().manual_seed(0)
    loader = torch.utils.data.DataLoader(data, batch_size=8, shuffle=True, generator=g)
    state = g.get_state()
    assert data_fingerprint(loader)["order"] != data_fingerprint(torch.utils.data.DataLoader(data, batch_size=8))["order"]
    assert torch.equal(g.get_state(), state)  # the order it will draw is left as it was


class _Stream(torch.utils.data.IterableDataset):
    """An iterable data set with a length: the DataLoader's batch sampler over it never ends."""

    def __init__(self, data):
        self.data = data

    def __len__(self):
        return len(self.data)

    def __iter__(self):
        return iter(self.data)


class _Zeroing(torch.utils.data.DataLoader):
    """A DataLoader subclass that iterates in its own way (its batches, zeroed)."""

    def __iter__(self):
        for x, y in super().__iter__():
            yield x * 0, y


@pytest.mark.parametrize("loader, why", [
    (lambda d: torch.utils.data.DataLoader(_Stream(d), batch_size=8), "an iterable data set"),
    (lambda d: torch.utils.data.DataLoader(d, batch_size=8, shuffle=True), "shuffles without a seeded generator"),
    (lambda d: torch.utils.data.DataLoader(d, batch_size=8, sampler=torch.utils.data.SubsetRandomSampler(range(30))),
     "shuffles without a seeded generator"),
    (lambda d: torch.utils.data.DataLoader(d, batch_sampler=torch.utils.data.BatchSampler(
        torch.utils.data.RandomSampler(d), 8, False)), "shuffles without a seeded generator"),
    (lambda d: _Zeroing(d, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(0)), "iterates in its own way"),
])  # fmt: skip
def test_loaders_that_cannot_resume_keep_no_state_and_change_nothing(tmp_path, loader, why):
    """No state for them (resume says why), and a partial path changes neither the result nor torch's random
    state: the fingerprint that is not taken draws nothing."""
    data = random_images(40, seed=1)

    def run(**kw):
        torch.manual_seed(7)
        res = cr.channel_shuffle(_tiny(), loader(data), "conv2", progress=False, **kw)
        return _json(res), torch.get_rng_state()

    plain = run()
    with pytest.warns(UserWarning, match=f"cannot be resumed .*{why}"):
        kept = run(partial=tmp_path / "n.json", resume=True)
    assert kept[0] == plain[0] and torch.equal(kept[1], plain[1])
    assert not state_path(tmp_path / "n.json").exists()


def test_a_loader_subclass_is_read_as_it_iterates():
    """One process reads a DataLoader subclass through its own iteration, shuffling with a seed or not."""
    data = random_images(40, seed=1)
    zeroed = cr.channel_shuffle(_tiny(), _Zeroing(data, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(0)),
                                "conv2", metric=None, progress=False)  # fmt: skip
    assert all(c == 1.0 for row in zeroed.mean_cosine.values() for c in row)  # all-zero maps: cosine 1 by definition


def test_a_custom_batch_samplers_order_is_part_of_the_data(tmp_path, stop_at):
    def loader(seed):
        g = torch.Generator().manual_seed(seed)
        return torch.utils.data.DataLoader(random_images(40, seed=1), batch_sampler=torch.utils.data.BatchSampler(
            torch.utils.data.RandomSampler(random_images(40, seed=1), generator=g), 8, False))  # fmt: skip

    def run(seed, **kw):
        return cr.channel_shuffle(_tiny(), loader(seed), "conv2", progress=False, **kw)

    whole = run(0)
    _stopped(lambda **kw: run(0, **kw), tmp_path / "c.json", 2, stop_at)
    with pytest.raises(ValueError, match="differs from this one in its data"):
        run(1, partial=tmp_path / "c.json", resume=True)
    assert _json(run(0, partial=tmp_path / "c.json", resume=True)) == _json(whole)


def test_bad_state_files_and_arguments(tmp_path):
    data = random_images(16)
    state_path(tmp_path / "b.json").write_bytes(b"not a state")
    with pytest.raises(ValueError, match="is not a sweep's saved state"):
        cr.channel_shuffle(_tiny(), data, "conv2", partial=tmp_path / "b.json", resume=True, **KW)
    torch.save({"format": "something else"}, state_path(tmp_path / "b.json"))
    with pytest.raises(ValueError, match="is not a sweep's saved state"):
        cr.channel_shuffle(_tiny(), data, "conv2", partial=tmp_path / "b.json", resume=True, **KW)
    with pytest.raises(ValueError, match="resume=True needs partial"):
        cr.zero_ablation(_tiny(), data, resume=True, **KW)
    with pytest.raises(TypeError, match="resume must be True or False"):
        cr.channel_shuffle(_tiny(), data, "conv2", partial=tmp_path / "c.json", resume="yes", **KW)


def test_a_metric_holding_objects_cannot_be_kept(tmp_path):
    class Odd(Accuracy):
        def reset(self) -> None:
            super().reset()
            self.log = object()  # not plain data

    with pytest.warns(UserWarning, match="cannot be resumed"):
        cr.channel_shuffle(_tiny(), random_images(16), "conv2", metric=Odd(), partial=tmp_path / "o.json", resume=True, **KW)
    assert (tmp_path / "o.json").exists() and not state_path(tmp_path / "o.json").exists()


def test_the_command_line_says_how_to_resume(tmp_path, monkeypatch, capsys):
    """Ctrl-C in a sweep: the command says where the state is and that --resume continues it; --resume then
    writes the uninterrupted run's result."""
    from cnn_redundancy.cli import main

    ckpt = tmp_path / "m.pt"
    torch.manual_seed(0)
    cr.save_checkpoint(cr.get_model("lenet5"), ckpt)
    args = ["-q", "zero-ablation", "-c", str(ckpt), "--limit", "48", "--batch-size", "8", "--device", "cpu"]
    assert main([*args, "--out", str(tmp_path / "whole")]) == 0
    measure = core_sweep._Run.measure

    def stopping(self, b, dev, tick):
        if b.index == 3:
            raise KeyboardInterrupt
        return measure(self, b, dev, tick)

    monkeypatch.setattr(core_sweep._Run, "measure", stopping)
    assert main([*args, "--out", str(tmp_path / "cut")]) == 130
    err = capsys.readouterr().err
    assert f"{tmp_path / 'cut' / 'zero-ablation.state.pt'}: the same command with --resume continues it" in err
    monkeypatch.setattr(core_sweep._Run, "measure", measure)
    assert main([*args, "--out", str(tmp_path / "cut"), "--resume"]) == 0
    cut, whole = (json.loads((tmp_path / d / "zero-ablation.json").read_text()) for d in ("cut", "whole"))
    for d in (cut, whole):
        d["meta"].pop("seconds", None)
    assert cut == whole
