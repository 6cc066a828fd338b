"""The promises every registered analysis keeps, tested over the registry: a new analysis gets these
tests by registering itself (and, where the tiny model needs smaller settings, an ``example``).

- the shared shape: ``(model, data, layers, *, batch_size, seed, device, progress, partial, ...)``;
- the model is left exactly as found (weights, hooks, train/eval flags, attributes its forward
  writes), also when the analysis raises or is interrupted;
- the same seed gives byte-identical JSON; JSON round-trips exactly, NaN included, as strict JSON;
- ``plot()`` returns a figure; a DataLoader gives the same result as its Dataset;
- ``device="cpu"`` is honoured; layers by glob; a partial result file that ends complete.
"""

from __future__ import annotations

import inspect
import json

import matplotlib
import pytest
import torch

from cnn_redundancy.core.hooks import hook_count
from cnn_redundancy.core.registry import COMMON, list_analyses
from cnn_redundancy.core.results import Result
from cnn_redundancy.testing import TinyCNN, random_images

matplotlib.use("Agg")

ANALYSES = list_analyses()
IDS = [a.name for a in ANALYSES]


class CachingCNN(TinyCNN):
    """A TinyCNN whose forward writes attributes (a cached tensor, a call counter), as user models do."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.features = None

    def forward(self, x):
        self.calls += 1
        h = self.pool1(self.act1(self.conv1(x)))
        self.features = h
        h = self.pool2(self.act2(self.conv2(h)))
        return self.fc(self.flatten(h))


def _model() -> CachingCNN:
    torch.manual_seed(0)
    return CachingCNN().eval()


@pytest.fixture(scope="module")
def data():
    return random_images(24, (1, 12, 12), seed=3)


def _run(a, model, data, **kw):
    args = {"batch_size": 8, "progress": False, **a.example, **kw}
    return a.fn(model, data, args.pop("layers", None), **args)


def _state(model):
    return ({k: v.detach().clone() for k, v in model.state_dict().items()}, [m.training for m in model.modules()],
            hook_count(model), {id(m): dict(vars(m)) for m in model.modules()})  # fmt: skip


def _assert_same(model, before):
    weights, modes, hooks, attrs = before
    now = model.state_dict()
    assert all(torch.equal(now[k], v) for k, v in weights.items()), "weights changed"
    assert [m.training for m in model.modules()] == modes, "train/eval flags changed"
    assert hook_count(model) == hooks, "hooks left behind"
    for m in model.modules():
        was = attrs[id(m)]
        assert vars(m).keys() == was.keys(), f"attributes added or removed on {type(m).__name__}"
        changed = [k for k, v in vars(m).items() if k not in ("_forward_hooks", "_forward_pre_hooks") and v is not was[k]]
        assert not changed, f"attributes {changed} of {type(m).__name__} changed"


def test_every_method_is_registered():
    assert IDS == ["channel-shuffle", "pixel-shuffle", "impulse", "distinctiveness", "zero-ablation",
                   "strongest-activations", "dead-kernels", "kernel-scores", "cka"]  # fmt: skip


@pytest.mark.parametrize("a", ANALYSES, ids=IDS)
def test_shared_shape(a):
    params = list(inspect.signature(a.fn).parameters.values())
    assert [p.name for p in params[:3]] == ["model", "data", "layers"] and params[2].default is None
    kwonly = {p.name: p for p in params if p.kind is p.KEYWORD_ONLY}
    assert set(COMMON) <= kwonly.keys()
    assert kwonly["seed"].default == 0 and kwonly["device"].default is None and kwonly["partial"].default is None
    assert kwonly["batch_size"].default == 256
    assert a.result.__name__ in __import__("cnn_redundancy").__all__ and a.fn.__name__ in __import__("cnn_redundancy").__all__


@pytest.mark.parametrize("a", ANALYSES, ids=IDS)
def test_model_left_exactly_as_found(a, data):
    model = _model().train()
    before = _state(model)
    _run(a, model, data)
    _assert_same(model, before)
    assert model.calls == 0 and model.features is None and model.training


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
@pytest.mark.parametrize("a", ANALYSES, ids=IDS)
def test_model_left_as_found_when_interrupted(a, data, error):
    model = _model().train()
    calls = {"n": 0}

    def count(mod, args):
        calls["n"] += 1

    h = model.conv2.register_forward_pre_hook(count)
    _run(a, model, data)
    h.remove()
    stop_at = max(1, calls["n"] // 2)

    def fail(mod, args):
        calls["seen"] = calls.get("seen", 0) + 1
        if calls["seen"] == stop_at:
            raise error("stopped half way")

    handle = model.conv2.register_forward_pre_hook(fail)
    before = _state(model)
    with pytest.raises(error, match="stopped half way"):
        _run(a, model, data)
    _assert_same(model, before)
    handle.remove()


@pytest.mark.parametrize("a", ANALYSES, ids=IDS)
def test_same_seed_same_json_and_exact_round_trip(a, data, tmp_path):
    first = _run(a, _model(), data, seed=5).save(tmp_path / "a.json").read_text()
    second = _run(a, _model(), data, seed=5).save(tmp_path / "b.json").read_text()
    assert first == second
    json.loads(first, parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))
    res = Result.load(tmp_path / "a.json")
    assert isinstance(res, a.result) and res.to_dict() == json.loads(first)
    res.meta["probe"] = [float("nan"), 1.0]
    back = Result.load(res.save(tmp_path / "nan.json"))
    assert back == res and back.to_dict() == res.to_dict()
    json.loads((tmp_path / "nan.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))


@pytest.mark.parametrize("a", ANALYSES, ids=IDS)
def test_plot_returns_a_figure(a, data):
    import matplotlib.pyplot as plt

    fig = _run(a, _model(), data).plot()
    assert isinstance(fig, matplotlib.figure.Figure) and fig.axes
    for ax in fig.axes:
        if ax.get_label() != "<colorbar>" and ax.has_data():
            assert ax.get_xlabel() or ax.get_ylabel() or ax.get_title(), "an unlabelled panel"
    plt.close(fig)


@pytest.mark.parametrize("a", ANALYSES, ids=IDS)
def test_dataloader_gives_the_dataset_answer(a, data):
    from_dataset = _run(a, _model(), data, batch_size=8)
    from_loader = _run(a, _model(), torch.utils.data.DataLoader(data, batch_size=8))
    assert from_loader.to_dict() == from_dataset.to_dict()


@pytest.mark.parametrize("a", ANALYSES, ids=IDS)
def test_device_cpu_and_layer_globs(a, data):
    plain = _run(a, _model(), data)
    on_cpu = _run(a, _model(), data, device="cpu")
    assert on_cpu.to_dict() == plain.to_dict()
    by_glob = _run(a, _model(), data, layers="conv*")
    assert by_glob.to_dict() == plain.to_dict()


@pytest.mark.parametrize("a", ANALYSES, ids=IDS)
def test_partial_result_file_ends_complete(a, data, tmp_path):
    res = _run(a, _model(), data, partial=tmp_path / "partial.json")
    kept = Result.load(tmp_path / "partial.json")
    assert kept.meta["complete"] is True and res.meta["complete"] is True
    assert kept.to_dict() == res.to_dict()


NEEDS_DATA = [a for a in ANALYSES if a.needs_data]


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("a", NEEDS_DATA, ids=[a.name for a in NEEDS_DATA])
def test_non_finite_data_is_refused_naming_the_sample(a, data, bad):
    x, y = data.tensors
    x = x.clone()
    x[19, 0, 3, 4] = bad
    model = _model()
    before = _state(model)
    with pytest.raises(ValueError, match=r"sample 19 of the data \(batch 2, position 3\) has a NaN or infinite"):
        _run(a, model, torch.utils.data.TensorDataset(x, y))
    _assert_same(model, before)


@pytest.mark.parametrize("a", NEEDS_DATA, ids=[a.name for a in NEEDS_DATA])
def test_raw_uint8_images_are_refused_with_the_fix(a, data):
    x, y = data.tensors
    raw = torch.utils.data.TensorDataset((x * 40 + 128).clamp(0, 255).to(torch.uint8), y)
    with pytest.raises(TypeError, match=r"inputs are torch\.uint8.*x\.float\(\) / 255"):
        _run(a, _model(), raw)


EVALUATES = [a for a in ANALYSES if a.evaluates]


@pytest.mark.parametrize("a", EVALUATES, ids=[a.name for a in EVALUATES])
def test_labels_outside_the_classes_are_refused(a, data):
    x, y = data.tensors
    with pytest.raises(ValueError, match="label 10 is outside the model's 10 classes"):
        _run(a, _model(), torch.utils.data.TensorDataset(x, torch.full_like(y, 10)))


class DictCNN(CachingCNN):
    """A CachingCNN returning a dict, as segmentation heads with an auxiliary output do."""

    def forward(self, x):
        out = super().forward(x)
        return {"out": out, "aux": out.flip(1)}


@pytest.mark.parametrize("a", ANALYSES, ids=IDS)
def test_a_dict_output_gives_the_plain_answer_with_an_output_selector(a, data):
    """Where the analysis evaluates, ``metric=get_metric(..., output=key)`` reads a dict output and gives the
    plain model's answer (without it: an error naming ``output=``); where it reads the output itself (the
    Taylor scores), ``output=key`` does; elsewhere the dict is either not read (the plain answer) or
    refused with a typed error, the model left as found."""
    from cnn_redundancy.core.metrics import get_metric

    plain = _run(a, _model(), data)
    torch.manual_seed(0)
    model = DictCNN().eval()
    if a.evaluates:
        assert _run(a, model, data, metric=get_metric("accuracy", output="out")) == plain
        with pytest.raises(TypeError, match=r"output='out'"):
            _run(a, model, data)
        return
    if a.reads_output:
        got = _run(a, model, data, output="out")
        assert got.meta["params"].pop("output") == "out" and got == plain
        with pytest.raises(TypeError, match=r"output='out'"):
            _run(a, model, data)
        return
    before = _state(model)
    try:
        assert _run(a, model, data) == plain
    except (TypeError, ValueError):
        _assert_same(model, before)


@pytest.mark.parametrize("a", ANALYSES, ids=IDS)
def test_partial_results_are_written_while_the_work_goes(a, data, tmp_path, monkeypatch):
    """With the 30 s cadence set to 0, a partial file (``"complete": false``) appears before the end."""
    import cnn_redundancy.core.results as results

    monkeypatch.setattr(results, "PARTIAL_EVERY", 0.0)
    seen, save = [], results.Result.save

    def recording(self, path):
        seen.append(self.meta.get("complete"))
        return save(self, path)

    monkeypatch.setattr(results.Result, "save", recording)
    _run(a, _model(), data, partial=tmp_path / "p.json")
    assert False in seen and seen[-1] is True
