"""Checkpoints are data: they never run code they name, malformed records are refused before anything is
built, weights keep their dtype, and the weights files users have (plain state_dicts, wrapped or prefixed
ones, torchvision weights) load given the model that takes them."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import cnn_redundancy as cr
import cnn_redundancy.cli  # noqa: F401  (cr.cli.main below)
from cnn_redundancy import CheckpointError, get_model, load_checkpoint, save_checkpoint
from cnn_redundancy.checkpoint import read_checkpoint
from cnn_redundancy.testing import TinyCNN, random_images

EVIL = "import pathlib\npathlib.Path({marker!r}).write_text('ran')\ndef factory(**kw):\n    raise SystemExit\n"
USER_MODEL = """import torch.nn as nn
class Net(nn.Module):
    def __init__(self, width=4):
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, 6, 3, padding=1)
        self.head = nn.Linear(6, 3)
    def forward(self, x):
        return self.head(self.conv2(self.conv1(x).relu()).mean((2, 3)))
def build(width=4):
    return Net(width)
"""


@pytest.fixture
def good(tmp_path):
    return save_checkpoint(get_model("lenet5", seed=0), tmp_path / "good.pt")


@pytest.fixture
def user_file(tmp_path):
    f = tmp_path / "my_model.py"
    f.write_text(USER_MODEL)
    return f


@pytest.mark.parametrize("spec", ["abs", "rel", "missing_factory"])
def test_a_checkpoint_naming_a_file_never_runs_it(good, tmp_path, monkeypatch, spec):
    marker = tmp_path / "ran.txt"
    evil = tmp_path / "evil.py"
    evil.write_text(EVIL.format(marker=str(marker)))
    monkeypatch.chdir(tmp_path)
    name = {"abs": f"{evil}:factory", "rel": "evil.py:factory", "missing_factory": "evil.py:nothing_here"}[spec]
    payload = torch.load(good, weights_only=True)
    payload["model"] = name
    torch.save(payload, tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match=r"never runs code it names.*model="):
        load_checkpoint(tmp_path / "x.pt")
    assert not marker.exists()
    assert cr.cli.main(["-q", "layers", "-c", str(tmp_path / "x.pt")]) == 2
    assert not marker.exists()


def test_a_file_model_loads_when_the_caller_names_it(user_file, tmp_path):
    spec = f"{user_file}:build"
    m = get_model(spec, width=5, seed=1)
    path = save_checkpoint(m, tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match="never runs code"):
        load_checkpoint(path)
    back = load_checkpoint(path, model=spec)
    x = torch.randn(2, 1, 8, 8)
    assert back.conv1.out_channels == 5 and torch.equal(back(x), m.eval()(x))
    assert torch.equal(load_checkpoint(path, model=copy.deepcopy(m).train())(x), m(x))  # or a module


@pytest.mark.parametrize("change,match", [
    (lambda s: s[0]["removals"].__setitem__(0, ["conv1", [99]]), "do not fit: it has 4 kernels"),
    (lambda s: s[0]["removals"].__setitem__(0, ["conv7", [0]]), "no conv layer 'conv7'"),
    (lambda s: s[0].__setitem__("input_shape", [1, 3, 100_000, 100_000]), "more than"),
    (lambda s: s[0].__setitem__("input_shape", "big"), "input_shape must be"),
    (lambda s: s[0].__setitem__("removals", "conv1"), "removals must be a list"),
    (lambda s: s[0]["removals"].__setitem__(0, ["conv1", [-1]]), "removals must be a list"),
    (lambda s: s[0].__setitem__("kind", "rm -rf"), "unknown kind 'rm -rf'"),
    (lambda s: s[0].__setitem__("kind", ["list"]), "unknown kind"),
    (lambda s: s.append({"kind": "remove-branch", "blocks": ["conv1"]}), "not a residual block"),
    (lambda s: s.append({"kind": "remove-branch", "blocks": [3]}), "blocks must be a list"),
    (lambda s: s.append("junk"), "unknown kind"),
])  # fmt: skip
def test_malformed_surgery_is_a_checkpoint_error(tmp_path, change, match):
    import cnn_redundancy.testing as T

    res = cr.prune(get_model(f"{T.__file__}:TinyCNN", seed=0), random_images(8), steps=2, layers="conv1")
    path = save_checkpoint(res.model, tmp_path / "pruned.pt")
    payload = read_checkpoint(path)
    assert load_checkpoint(path, model=f"{T.__file__}:TinyCNN").conv1.out_channels == 2
    change(payload["surgery"])
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(tmp_path / "bad.pt", model=f"{T.__file__}:TinyCNN")


def test_a_pruned_model_built_elsewhere_saves_with_a_name(tmp_path):
    import cnn_redundancy.testing as T

    res = cr.prune(T.TinyCNN(), random_images(8), steps=2, layers="conv1")
    with pytest.raises(CheckpointError, match="pass name="):
        save_checkpoint(res.model, tmp_path / "p.pt")
    path = save_checkpoint(res.model, tmp_path / "p.pt", name=f"{T.__file__}:TinyCNN")
    assert load_checkpoint(path, model=f"{T.__file__}:TinyCNN").conv1.out_channels == 2


def test_surgery_that_is_not_a_list_is_refused(good, tmp_path):
    payload = read_checkpoint(good)
    payload["surgery"] = {"kind": "prune-channels"}
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="surgery must be a list"):
        load_checkpoint(tmp_path / "bad.pt")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_weights_keep_their_dtype(tmp_path, dtype):
    m = get_model("lenet5", seed=0).to(dtype)
    back = load_checkpoint(save_checkpoint(m, tmp_path / "m.pt"))
    assert back.conv1.weight.dtype == dtype and back.fc3.bias.dtype == dtype
    assert all(torch.equal(a, b) for a, b in zip(back.state_dict().values(), m.state_dict().values()))


def _outputs_equal(a: nn.Module, b: nn.Module) -> bool:
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        return torch.equal(a.eval()(x), b.eval()(x))


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "model", "module.", "model.", "lightning", "torch.compile"])
def test_user_weights_files_load(user_file, tmp_path, wrap):
    spec = f"{user_file}:build"
    m = get_model(spec, seed=3)
    sd = m.state_dict()
    payload = {
        "plain": sd, "state_dict": {"state_dict": sd, "epoch": 3}, "model": {"model": sd},
        "module.": {f"module.{k}": v for k, v in sd.items()}, "model.": {f"model.{k}": v for k, v in sd.items()},
        "lightning": {"state_dict": {f"model.{k}": v for k, v in sd.items()}, "global_step": 10},
        "torch.compile": {f"_orig_mod.{k}": v for k, v in sd.items()},
    }[wrap]  # fmt: skip
    torch.save(payload, tmp_path / "w.pth")
    back = load_checkpoint(tmp_path / "w.pth", model=spec)
    assert _outputs_equal(back, m)
    assert cr.cli.main(["-q", "layers", "-m", spec, "-c", str(tmp_path / "w.pth")]) == 0


def test_weights_under_an_unknown_key_say_how_to_take_them_out(user_file, tmp_path, capsys):
    sd = get_model(f"{user_file}:build").state_dict()
    torch.save({"epoch": 3, "model_ema": sd, "optimizer": {"state": {}}}, tmp_path / "ema.pt")
    assert cr.cli.main(["-q", "layers", "-m", f"{user_file}:build", "-c", str(tmp_path / "ema.pt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "found: epoch, model_ema, optimizer" in err[0]
    assert err[0].endswith(f"it holds weights under 'model_ema': save the ones you mean alone, e.g. "
                           f"torch.save(torch.load({str(tmp_path / 'ema.pt')!r})['model_ema'], 'weights.pt')")


def test_weights_that_do_not_fit_are_named_in_one_line(user_file, tmp_path, capsys):
    spec = f"{user_file}:build"
    sd = get_model(spec).state_dict()
    sd.pop("head.bias")
    sd["extra.weight"] = torch.zeros(1)
    torch.save(sd, tmp_path / "w.pth")
    with pytest.raises(CheckpointError, match=r"missing head\.bias; unexpected extra\.weight"):
        load_checkpoint(tmp_path / "w.pth", model=spec)
    with pytest.raises(CheckpointError, match=r"shape mismatch conv1\.weight \(4, 1, 3, 3\) vs model \(7, 1, 3, 3\)"):
        load_checkpoint(tmp_path / "w.pth", model=spec, model_kw={"width": 7})
    assert cr.cli.main(["-q", "layers", "-m", spec, "-c", str(tmp_path / "w.pth")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "missing head.bias" in err[0]


def test_a_pickled_module_is_refused_with_the_reason(tmp_path, capsys):
    torch.save(TinyCNN(), tmp_path / "whole.pt")
    with pytest.raises(CheckpointError, match=r"pickled Python objects.*run code.*state_dict\(\)"):
        load_checkpoint(tmp_path / "whole.pt", model="lenet5")
    assert cr.cli.main(["-q", "layers", "-c", str(tmp_path / "whole.pt")]) == 2
    assert "torch.save(model.state_dict()" in capsys.readouterr().err


def test_torchvision_weights_file(tmp_path, capsys):
    m = get_model("torchvision:squeezenet1_1", num_classes=10, seed=0)
    torch.save(m.state_dict(), tmp_path / "squeezenet.pth")
    back = load_checkpoint(tmp_path / "squeezenet.pth", model="torchvision:squeezenet1_1", model_kw={"num_classes": 10})
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(back(x), m.eval()(x))
    assert cr.cli.main(["-q", "layers", "-m", "torchvision:squeezenet1_1", "--model-kw", "num_classes=10",
                        "--weights", str(tmp_path / "squeezenet.pth")]) == 0  # fmt: skip
    assert "features.0" in capsys.readouterr().out


def test_save_refuses_an_architecture_its_spec_does_not_rebuild(tmp_path):
    m = get_model("lenet5")
    m.conv1 = nn.Conv2d(3, 6, 5, padding=2)  # a stem swapped after construction
    with pytest.raises(CheckpointError, match=r"rebuilds a different architecture.*conv1\.weight"):
        save_checkpoint(m, tmp_path / "m.pt")
    assert not (tmp_path / "m.pt").exists()
    assert load_checkpoint(save_checkpoint(get_model("lenet5", in_channels=3), tmp_path / "ok.pt")).conv1.in_channels == 3


def test_save_check_leaves_the_random_state_alone(tmp_path):
    m = get_model("lenet5")
    torch.manual_seed(7)
    save_checkpoint(m, tmp_path / "m.pt")
    after_save = torch.rand(3)
    torch.manual_seed(7)
    assert torch.equal(torch.rand(3), after_save)
