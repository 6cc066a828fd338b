import math

import pytest
import torch
from torch import nn

from cnn_redundancy import get_model
from cnn_redundancy.analyses.shuffle import ShuffleResult, channel_shuffle, pixel_shuffle, shuffle
from cnn_redundancy.core.results import Result
from cnn_redundancy.testing import TinyCNN, ignored_channel_net, random_images


def _flat(rows):
    return [v for r in rows for v in r]


@pytest.fixture(scope="module")
def data():
    return random_images(96, seed=1)


@pytest.mark.parametrize("fn", [channel_shuffle, pixel_shuffle])
def test_ignored_channel_has_cosine_one_and_no_metric_change(fn, data, unchanged):
    m = ignored_channel_net(2)
    with unchanged(m):
        res = fn(m, data, "conv2", batch_size=32)
    assert res.observed == {"conv2": "act2"} and res.channels == {"conv2": [0, 1, 2, 3]}
    assert res.mean_cosine["conv2"][2] == pytest.approx(1.0, abs=1e-12)
    assert all(c == pytest.approx(1.0, abs=1e-12) for c in res.cosine["conv2"][2])
    assert res.metric["conv2"][2] == res.baseline
    assert res.max_change["conv2"][2] == 0.0 and min(res.max_change["conv2"][i] for i in (0, 1, 3)) > 0
    assert min(res.mean_cosine["conv2"][i] for i in (0, 1, 3)) < 0.99  # the others do change the activation
    cos_only = fn(m, data, "conv2", batch_size=32, metric=None)  # the change check on the observation itself
    assert cos_only.meta["params"]["engine"] == "fast" and cos_only.mean_cosine["conv2"][2] == 1.0
    assert cos_only.max_change["conv2"][2] == 0.0 and min(cos_only.max_change["conv2"][i] for i in (0, 1, 3)) > 0


@pytest.mark.parametrize("mode", ["channel", "pixel"])
def test_fast_and_naive_engines_agree(mode, data):
    m = ignored_channel_net(1)
    kw = dict(mode=mode, batch_size=32, repeats=2, seed=5)
    fast = shuffle(m, data, "conv2", engine="fast", **kw)
    naive = shuffle(m, data, "conv2", engine="naive", **kw)
    assert fast.meta["params"]["engine"] == "fast" and naive.meta["params"]["engine"] == "naive"
    assert fast.metric == naive.metric and fast.baseline == naive.baseline
    assert _flat(fast.cosine["conv2"]) == pytest.approx(_flat(naive.cosine["conv2"]), abs=1e-6)
    cos_only = shuffle(m, data, "conv2", engine="fast", metric=None, **kw)
    # the cosine-only sweep sums in channels-last order: float32 rounding apart, the same numbers
    assert _flat(cos_only.cosine["conv2"]) == pytest.approx(_flat(fast.cosine["conv2"]), abs=1e-6)
    assert cos_only.metric == {}


class _Grouped(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1, groups=2, padding_mode="reflect")
        self.act = nn.ReLU()
        self.fc = nn.Linear(6 * 12 * 12, 10)

    def forward(self, x):
        return self.fc(self.act(self.conv2(self.conv1(x))).flatten(1))


def test_grouped_reflect_padded_conv_fast_equals_naive(data):
    m = _Grouped().eval()
    fast = channel_shuffle(m, data, "conv2", batch_size=48, engine="fast")
    naive = channel_shuffle(m, data, "conv2", batch_size=48, engine="naive")
    assert _flat(fast.cosine["conv2"]) == pytest.approx(_flat(naive.cosine["conv2"]), abs=1e-6)
    assert fast.metric == naive.metric


def test_resnet_layer_with_shortcut(unchanged):
    m = get_model("torchvision:resnet18", num_classes=10).eval()
    d = random_images(8, (3, 32, 32), seed=2)
    with unchanged(m):
        fast = channel_shuffle(m, d, "layer2.0.conv2", channels=[0, 5], batch_size=4, engine="fast")
        naive = channel_shuffle(m, d, "layer2.0.conv2", channels=[0, 5], batch_size=4, engine="naive")
    assert _flat(fast.cosine["layer2.0.conv2"]) == pytest.approx(_flat(naive.cosine["layer2.0.conv2"]), abs=1e-5)
    assert fast.metric == naive.metric


def test_seeded_and_json_round_trip(data, tmp_path):
    m = TinyCNN().eval()
    a = channel_shuffle(m, data, "conv2", batch_size=32, seed=3, repeats=2)
    b = channel_shuffle(m, data, "conv2", batch_size=32, seed=3, repeats=2)
    c = channel_shuffle(m, data, "conv2", batch_size=32, seed=4, repeats=2)
    assert a.to_dict() == b.to_dict() and a.cosine != c.cosine
    back = Result.load(a.save(tmp_path / "p.json"))
    assert isinstance(back, ShuffleResult) and back == a and back.to_dict() == a.to_dict()
    assert (tmp_path / "p.json").read_text() == b.save(tmp_path / "q.json").read_text()
    assert len(a.metric_std["conv2"]) == 4 and a.samples == 96


def test_dataloader_batches_are_used(data):
    m = TinyCNN().eval()
    loader = torch.utils.data.DataLoader(data, batch_size=16)
    a = channel_shuffle(m, loader, "conv2", metric=None)
    b = channel_shuffle(m, data, "conv2", batch_size=16, metric=None)
    c = channel_shuffle(m, data, "conv2", batch_size=96, metric=None)
    assert a.cosine == b.cosine and a.cosine != c.cosine


def test_observe_any_module(data):
    m = TinyCNN().eval()
    res = channel_shuffle(m, data, "conv2", observe="pool2", metric=None, batch_size=32)
    assert res.observed == {"conv2": "pool2"} and len(res.cosine["conv2"][0]) == 6


def test_bad_inputs(data, unchanged):
    m = TinyCNN().eval()
    with pytest.raises(ValueError, match="Unknown layer 'conv3'"):
        channel_shuffle(m, data, "conv3")
    with pytest.raises(TypeError, match="not a Conv2d"):
        channel_shuffle(m, data, "fc")
    with pytest.raises(ValueError, match="out of range: conv2 has 4 input channels"):
        channel_shuffle(m, data, "conv2", channels=[4])
    with pytest.raises(ValueError, match="empty"):
        channel_shuffle(m, torch.utils.data.TensorDataset(torch.zeros(0, 1, 12, 12), torch.zeros(0)), "conv2")
    with pytest.raises(ValueError, match="mode must be"):
        shuffle(m, data, "conv2", mode="row")
    wrong = random_images(8, (3, 12, 12))
    with unchanged(m), pytest.raises(ValueError, match="does not fit|expected"):
        channel_shuffle(m, wrong, "conv2", engine="naive")


class _FailingLoader(torch.utils.data.DataLoader):
    def __iter__(self):
        it = super().__iter__()
        yield next(it)
        raise RuntimeError("disk went away")


@pytest.mark.parametrize("engine", ["fast", "naive"])
def test_model_restored_when_the_analysis_raises(engine, data, unchanged):
    m = TinyCNN().train()
    with unchanged(m), pytest.raises(RuntimeError, match="disk went away"):
        channel_shuffle(m, _FailingLoader(data, batch_size=16), "conv2", engine=engine)
    assert m.training


@pytest.mark.parametrize("frozen_before", [False, True])
def test_the_garbage_collector_is_left_as_found_also_when_the_sweep_raises(frozen_before, data):
    """The sweep leaves the objects alive at its start out of the collector's passes (gc.freeze) and
    gives them back at its end, raising or not; a program that froze objects itself keeps them frozen."""
    import gc

    if frozen_before:
        gc.freeze()
    try:
        before = gc.get_freeze_count()
        seen = []

        class Watching(torch.utils.data.DataLoader):
            def __iter__(self):
                for b in super().__iter__():
                    seen.append(gc.get_freeze_count())
                    yield b

        channel_shuffle(TinyCNN(), Watching(data, batch_size=32), "conv2", channels=[0], metric=None)
        after = gc.get_freeze_count()
        with pytest.raises(RuntimeError, match="disk went away"):
            channel_shuffle(TinyCNN(), _FailingLoader(data, batch_size=16), "conv2")
        assert gc.isenabled()
        if frozen_before:  # nothing more frozen, nothing given back (frozen objects may still be freed)
            assert 0 < max(seen) <= before and 0 < after <= before and 0 < gc.get_freeze_count() <= before
        else:  # frozen while it ran, given back after, also after the error
            assert before == 0 and min(seen) > 0 and after == 0 and gc.get_freeze_count() == 0
    finally:
        gc.unfreeze()


def test_plot(data):
    import matplotlib

    matplotlib.use("Agg")
    m = TinyCNN().eval()
    x = data.tensors[0]
    with torch.no_grad():  # labelled by the model itself: the baseline is 1.0, the top of an accuracy axis
        own = torch.utils.data.TensorDataset(x, m(x).argmax(1))
    res = pixel_shuffle(m, own, "conv2", batch_size=32)
    assert res.baseline == 1.0
    fig = res.plot()
    ax = fig.axes[1]
    assert len(fig.axes) == 2 and ax.get_ylabel() == "accuracy"
    # the baseline is named in the title, not in a legend over the bars, and its line is inside the axes
    assert ax.get_legend() is None and ax.get_title().endswith("(green line: baseline 1.0000)")
    assert [tuple(line.get_ydata()) for line in ax.get_lines()] == [(1.0, 1.0)] and ax.get_ylim()[1] > 1.0


def test_partial_results_are_written_per_batch(data, tmp_path):
    m = TinyCNN().eval()
    part = tmp_path / "partial.json"
    with pytest.raises(RuntimeError, match="disk went away"):
        channel_shuffle(m, _FailingLoader(data, batch_size=16), "conv2", partial=part)
    kept = Result.load(part)
    assert kept.meta["complete"] is False and kept.samples == 16 and len(kept.cosine["conv2"]) == 4
    full = channel_shuffle(m, data, "conv2", batch_size=16, partial=part)
    assert full.meta["complete"] is True and Result.load(part).samples == 96  # last partial covers everything


@pytest.mark.parametrize("metric", ["accuracy", None])
def test_an_interrupt_within_the_first_batch_keeps_the_channels_measured_so_far(metric, data, tmp_path, unchanged):
    """The first batch of a sweep over thousands of channels can take hours: interrupted within it, the
    partial result holds every channel measured so far, with the numbers a whole run gives them."""
    m = TinyCNN().eval()
    full = channel_shuffle(m, data, "conv2", batch_size=96, metric=metric)  # one batch
    calls = []

    def stop(*_):  # the observed module's (or the head's) call for the third channel
        calls.append(1)
        if len(calls) == 4:  # the clean pass, then one call per channel
            raise KeyboardInterrupt

    watched = m.fc if metric else m.get_submodule(full.observed["conv2"])
    handle = watched.register_forward_hook(stop)
    part = tmp_path / "partial.json"
    try:
        with unchanged(m), pytest.raises(KeyboardInterrupt):
            channel_shuffle(m, data, "conv2", batch_size=96, metric=metric, partial=part)
    finally:
        handle.remove()
    kept = Result.load(part)
    assert kept.meta["complete"] is False and kept.samples == 96
    assert kept.cosine["conv2"][:2] == full.cosine["conv2"][:2]
    assert kept.max_change["conv2"][:2] == full.max_change["conv2"][:2]
    assert all(math.isnan(v) for row in kept.cosine["conv2"][2:] for v in row)
    if metric:
        assert kept.metric["conv2"][:2] == full.metric["conv2"][:2] and kept.baseline == full.baseline
        assert all(math.isnan(v) for v in kept.metric["conv2"][2:])
    # read as a complete one would be: its summary covers the channels measured
    mc = full.mean_cosine["conv2"][:2]
    assert kept.summary("conv2")["mean_cosine"] == pytest.approx(sum(mc) / 2) and len(kept.headline()) == 1
    kept.plot()


def test_a_partial_result_of_several_layers_reads_and_plots(data, tmp_path):
    """Stopped before any channel of the second layer is measured: that layer says so, the first one is read."""
    import matplotlib

    matplotlib.use("Agg")
    m = TinyCNN().eval()
    calls = []

    def stop(*_):
        calls.append(1)
        if len(calls) == 1 + 2:  # fc: the clean pass, then conv1's first channel; stopped at its second
            raise KeyboardInterrupt

    handle = m.fc.register_forward_hook(stop)
    part = tmp_path / "partial.json"
    try:
        with pytest.raises(KeyboardInterrupt):
            channel_shuffle(m, data, ["conv1", "conv2"], batch_size=96, repeats=2, partial=part)
    finally:
        handle.remove()
    kept = Result.load(part)
    lines = kept.headline()
    assert "conv2: channel shuffle, no channel measured yet" in lines
    assert lines[0].startswith("conv1: channel shuffle, mean cosine") and "conv2" not in kept.cosine
    kept.plot()
    kept.plot("conv1")


def test_several_layers_in_one_call_give_each_layers_own_answer(data):
    m = TinyCNN().eval()
    both = channel_shuffle(m, data, "conv*", batch_size=32, repeats=2, seed=1)
    assert both.layers == ["conv1", "conv2"] and both.observed == {"conv1": "act1", "conv2": "act2"}
    for layer in both.layers:
        alone = channel_shuffle(m, data, layer, batch_size=32, repeats=2, seed=1)
        assert both.cosine[layer] == alone.cosine[layer] and both.metric[layer] == alone.metric[layer]
    assert len(both.plot().axes) == 2 and len(both.headline()) == 2


def test_one_sample_batches_cannot_be_channel_shuffled():
    m = ignored_channel_net(2)
    with pytest.raises(ValueError, match="a batch of one sample cannot change"):
        channel_shuffle(m, random_images(8), "conv2", batch_size=1, metric=None, progress=False)
    with pytest.warns(UserWarning, match="batch 1 holds one sample"):  # 9 = 8 + 1: the last batch cannot shuffle
        channel_shuffle(m, random_images(9), "conv2", batch_size=8, metric=None, progress=False)
    res = pixel_shuffle(m, random_images(1), "conv2", batch_size=1, metric=None, progress=False)  # pixels move within one
    assert min(res.mean_cosine["conv2"]) < 1.0


def test_channels_must_be_integer_indices():
    with pytest.raises(ValueError, match=r"channels must be integer indices, got \[0.7\]"):
        channel_shuffle(TinyCNN(), random_images(8), "conv2", channels=[0.7], progress=False)


@pytest.mark.parametrize("kw", [
    dict(kernel_size=3, padding=1),
    dict(kernel_size=3, stride=2, padding=1),
    dict(kernel_size=(3, 5), dilation=2, padding=(2, 1)),
    dict(kernel_size=4, padding="same"),
    dict(kernel_size=3, padding="valid", stride=(1, 2)),
    dict(kernel_size=3, padding=2, padding_mode="circular"),
    dict(kernel_size=3, padding=1, padding_mode="replicate", groups=2),
    dict(kernel_size=3, padding=1, groups=4),  # depthwise, 2 kernels per channel
])
@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")  # torch's note on its own reference conv
def test_channel_delta_is_the_conv_of_the_change_alone(kw):
    from cnn_redundancy.analyses.shuffle import _channel_delta, _padded

    torch.manual_seed(0)
    conv = nn.Conv2d(4, 8, **kw).eval()
    x = torch.randn(5, 4, 11, 9)
    delta = torch.randn(5, 11, 9)
    with torch.no_grad():
        clean = conv(x)
        clean_last = clean.contiguous(memory_format=torch.channels_last)
        padded = _padded(conv, delta[:, None])[:, 0]
        for k in range(4):
            moved = x.clone()
            moved[:, k] += delta
            part = _channel_delta(conv, padded, k, clean.shape[2:])
            assert part.shape == clean.shape
            torch.testing.assert_close(clean + part, conv(moved), atol=1e-5, rtol=1e-5)  # linear in the input
            # with the clean output as base (one matrix product and addition where there is one group)
            torch.testing.assert_close(_channel_delta(conv, padded, k, clean.shape[2:], base=clean_last), conv(moved),
                                       atol=1e-5, rtol=1e-5)  # fmt: skip
            # the padded change of channel k is the change of the padded input
            moved_padded = _padded(conv, moved) - _padded(conv, x)
            torch.testing.assert_close(moved_padded[:, k], padded, atol=1e-6, rtol=1e-6)


def test_strided_dilated_conv_fast_cosine_equals_naive(data):
    m = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, stride=2, dilation=2, padding="valid"),
                      nn.ReLU(), nn.Flatten(), nn.Linear(6 * 4 * 4, 10)).eval()  # fmt: skip
    kw = dict(batch_size=32, metric=None, seed=1)
    fast = channel_shuffle(m, data, "2", engine="fast", **kw)
    naive = channel_shuffle(m, data, "2", engine="naive", **kw)
    assert fast.observed == {"2": "3"} and fast.meta["params"]["engine"] == "fast"
    assert _flat(fast.cosine["2"]) == pytest.approx(_flat(naive.cosine["2"]), abs=1e-6)
    assert min(_flat(fast.cosine["2"])) < 0.99


def _inplace_net() -> nn.Module:
    """VGG-style: every conv's output is overwritten by the ReLU(inplace=True) after it."""
    torch.manual_seed(3)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(4, 6, 3, padding=1),
                         nn.ReLU(inplace=True), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(6 * 6 * 6, 10)).eval()  # fmt: skip


@pytest.mark.parametrize("observe", [None, "2", "4"])
@pytest.mark.parametrize("metric", ["accuracy", None])
def test_inplace_relu_after_the_layer_fast_equals_naive(observe, metric, data):
    """The clean conv output and the observed values are taken as computed, before the in-place ReLU."""
    m = _inplace_net()
    kw = dict(observe=observe, metric=metric, batch_size=32, seed=2)
    fast = channel_shuffle(m, data, "2", engine="fast", **kw)
    naive = channel_shuffle(m, data, "2", engine="naive", **kw)
    assert fast.meta["params"]["engine"] == "fast"
    assert _flat(fast.cosine["2"]) == pytest.approx(_flat(naive.cosine["2"]), abs=1e-6)
    assert fast.metric == naive.metric and fast.baseline == naive.baseline
    assert min(fast.mean_cosine["2"]) < 0.99  # the shuffles do change the activation


class _ViewInplaceNet(nn.Module):
    """In-place ReLUs through views (``x.view(...).relu_()``) whose results nothing reads."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.c1, self.c2 = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 6, 3, padding=1)
        self.pool, self.fc = nn.MaxPool2d(2), nn.Linear(6 * 6 * 6, 10)

    def forward(self, x):
        x = self.c1(x)
        x.view(x.shape[0], -1).relu_()
        y = self.c2(x)
        y.flatten(1).relu_()
        return self.fc(self.pool(y).flatten(1))


@pytest.mark.parametrize("layer", ["c1", "c2"])
@pytest.mark.parametrize("metric", ["accuracy", None])
def test_inplace_ops_through_views_fast_equals_naive(layer, metric, data):
    m = _ViewInplaceNet().eval()
    kw = dict(metric=metric, batch_size=32, seed=2)
    fast = channel_shuffle(m, data, layer, engine="fast", **kw)
    naive = channel_shuffle(m, data, layer, engine="naive", **kw)
    assert _flat(fast.cosine[layer]) == pytest.approx(_flat(naive.cosine[layer]), abs=1e-6)
    assert fast.metric == naive.metric and fast.baseline == naive.baseline
    assert min(fast.mean_cosine[layer]) < 0.99


class _Sized(torch.utils.data.Dataset):
    """12x12 images, except the last ``late`` ones, which are ``side`` x ``side``."""

    def __init__(self, n: int, late: int, side: int):
        (self.x, self.y), self.late, self.side = random_images(n).tensors, late, side

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        x = self.x[i]
        if i >= len(self.x) - self.late:
            x = torch.nn.functional.interpolate(x[None], size=(self.side, self.side))[0]
        return x, self.y[i]


def test_cosine_sweep_stops_early_yet_checks_every_new_input_shape_against_the_whole_model():
    m = TinyCNN().eval()
    calls = []
    handle = m.fc.register_forward_hook(lambda *a: calls.append(1))
    try:
        channel_shuffle(m, random_images(96), "conv1", metric=None, batch_size=32)
        assert len(calls) == 1  # the classifier ran on the first batch only: nothing reads the output
        with pytest.raises(ValueError, match="does not fit|expected"):  # the last batch's images are 16x16
            channel_shuffle(m, _Sized(96, 32, 16), "conv1", metric=None, batch_size=32)
    finally:
        handle.remove()


def test_batch_context_holds_one_latest_value_per_slot():
    from cnn_redundancy.core.sweep import BatchContext

    ctx, made = BatchContext(0), []

    def make(key):
        made.append(key)
        return torch.full((2,), float(len(made)))

    first = ctx.latest("padded input", "a", lambda: make("a"))
    assert ctx.latest("padded input", "a", lambda: make("a")) is first  # made once while the key stays
    second = ctx.latest("padded input", "b", lambda: make("b"))
    assert made == ["a", "b"] and second[0] == 2.0
    held = [v for k, v in ctx.cache.items() if k == ("latest", "padded input")]
    assert len(held) == 1 and held[0][0] == "b"  # the first layer's value is let go
    assert ctx.latest("clean output", "a", lambda: make("a"))[0] == 3.0  # slots are independent


def test_cosine_sweep_pads_each_layer_input_once_per_batch(data, monkeypatch):
    from cnn_redundancy.analyses import shuffle as shuffle_module

    calls = []
    real = shuffle_module._padded
    monkeypatch.setattr(shuffle_module, "_padded", lambda conv, x: calls.append(x.dim()) or real(conv, x))
    m = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(),
                      nn.Conv2d(6, 6, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 12 * 12, 10)).eval()  # fmt: skip
    kw = dict(batch_size=32, metric=None, engine="fast")
    res = channel_shuffle(m, data, ["2", "4"], **kw)
    batches = -(-len(data) // 32)
    assert calls == [4] * (2 * batches)  # one whole padded input per layer and batch, not one per channel
    naive = channel_shuffle(m, data, ["2", "4"], **{**kw, "engine": "naive"})
    for layer in ("2", "4"):
        assert _flat(res.cosine[layer]) == pytest.approx(_flat(naive.cosine[layer]), abs=1e-6)
