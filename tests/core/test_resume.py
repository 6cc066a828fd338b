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


@pytest.mark.parametrize("change, what", [
    ({"model": 1}, "its model weights"),
    ({"data": 2}, "its data"),
    ({"channels": [0, 1]}, "its units"),
    ({"seed": 5}, "its settings"),
    ({"metric": None}, "its settings"),
])  # fmt: skip
def test_another_runs_state_is_refused(tmp_path, stop_at, change, what):
    base = {"model": 0, "data": 1, "channels": None, "seed": 0, "metric": "accuracy"}

    def run(c, **kw):
        return cr.channel_shuffle(_tiny(c["model"]), random_images(40, seed=c["data"]), "conv2",
                                  channels=c["channels"], seed=c["seed"], metric=c["metric"], **KW, **kw)  # fmt: skip

    _stopped(lambda **kw: run(base, **kw), tmp_path / "r.json", 2, stop_at)
    with pytest.raises(ValueError, match=f"differs from this one in {what}"):
        run({**base, **change}, partial=tmp_path / "r.json", resume=True)
    assert state_path(tmp_path / "r.json").exists()  # refused, not thrown away


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
        cr.channel_shuffle(_tiny(), random_images(16), "conv2", metric=Odd(), partial=tmp_path / "o.json", **KW)
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
