import pytest
import torch

from cnn_redundancy import (
    CheckpointError,
    evaluate,
    fit,
    get_model,
    load_checkpoint,
    load_dataset,
    save_checkpoint,
    subset,
)
from cnn_redundancy.checkpoint import read_checkpoint


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", "train"), load_dataset("digits", "test")


def test_fit_learns_and_is_seeded(digits):
    tr, te = digits
    # digits are 8x8: upsampled to 16x16, the smallest input LeNet-5 takes
    torch.manual_seed(0)
    m1 = get_model("lenet5", input_size=16)
    torch.manual_seed(0)
    m2 = get_model("lenet5", input_size=16)
    up = torch.nn.Upsample(size=16)
    data = torch.utils.data.TensorDataset(up(torch.stack([tr[i][0] for i in range(400)])), tr.labels[:400])
    test = torch.utils.data.TensorDataset(up(torch.stack([te[i][0] for i in range(200)])), te.labels[:200])
    before = evaluate(m1, test)
    h1 = fit(m1, data, epochs=3, lr=3e-3, seed=3)
    h2 = fit(m2, data, epochs=3, lr=3e-3, seed=3)
    assert h1["loss"] == h2["loss"] and h1["loss"][-1] < h1["loss"][0]
    for (k, v), w in zip(m1.state_dict().items(), m2.state_dict().values()):
        assert torch.equal(v, w), k
    assert evaluate(m1, test) > max(before, 0.5)


def test_checkpoint_round_trip(tmp_path):
    m = get_model("lenet5", width=2)
    p = save_checkpoint(m, tmp_path / "m.pt", extra={"note": "x"})
    raw = torch.load(p, weights_only=True)  # plain data only
    assert raw["model"] == "lenet5" and raw["kwargs"] == {"width": 2}
    back = load_checkpoint(p)
    assert back.conv1.out_channels == 12 and back.cnn_redundancy_extra == {"note": "x"} and not back.training
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(back(x), m.eval()(x))


def test_corrupt_and_mismatched_checkpoints(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(bad)
    p = save_checkpoint(get_model("lenet5"), tmp_path / "t.pt")
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(p.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(trunc)
    payload = read_checkpoint(p)
    payload["kwargs"] = {"width": 3}
    torch.save(payload, tmp_path / "mis.pt")
    with pytest.raises(CheckpointError, match="shape mismatch conv1.weight"):
        load_checkpoint(tmp_path / "mis.pt")
    torch.save(get_model("lenet5").state_dict(), tmp_path / "sd.pt")
    with pytest.raises(CheckpointError, match="plain state_dict .*name the model"):
        load_checkpoint(tmp_path / "sd.pt")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "none.pt")


def test_model_without_spec_needs_a_name(tmp_path):
    with pytest.raises(CheckpointError, match="pass name="):
        save_checkpoint(torch.nn.Sequential(torch.nn.Conv2d(1, 1, 1)), tmp_path / "x.pt")


def test_wrong_input_shape_says_what_was_expected():
    m = get_model("lenet5")
    data = torch.utils.data.TensorDataset(torch.zeros(4, 3, 32, 32), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"expected \[batch, 1, 28, 28\]"):
        evaluate(m, data)


def test_evaluate_restores_mode_and_handles_subsets():
    m = get_model("lenet5").train()
    acc = evaluate(m, subset(load_dataset("mnist5k", "test"), 64))
    assert 0 <= acc <= 1 and m.training


def _bn_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(), torch.nn.Dropout(0.5),
        torch.nn.Conv2d(4, 6, 3), torch.nn.BatchNorm2d(6), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(6, 3),
    )  # fmt: skip


def test_recomputed_bn_statistics_are_those_of_the_data_whatever_the_batches():
    from cnn_redundancy import recompute_bn_stats
    from cnn_redundancy.core.hooks import hook_count

    m = _bn_net().train()
    x = torch.randn(50, 1, 10, 10) * 3 + 2
    data = torch.utils.data.TensorDataset(x, torch.zeros(50, dtype=torch.long))
    weights = {k: v.clone() for k, v in m.named_parameters()}
    tracked = m[1].num_batches_tracked.clone()
    assert recompute_bn_stats(m, data, batch_size=16) == 2  # 16 + 16 + 16 + 2 images
    with torch.no_grad():  # the first BatchNorm's input is conv1's output: its statistics over all 50 images
        h = m[0](x).double().transpose(0, 1).reshape(4, -1)
    assert torch.allclose(m[1].running_mean.double(), h.mean(1), rtol=1e-5, atol=1e-6)
    assert torch.allclose(m[1].running_var.double(), h.var(1, unbiased=True), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(m[5].running_var, torch.ones(6))  # the second one was set too
    first, second = m[1].running_var.clone(), m[5].running_var.clone()
    assert recompute_bn_stats(m, data, batch_size=50) == 2  # one batch: the same statistics for the first
    assert torch.allclose(first, m[1].running_var, rtol=1e-5)
    # the second sees its input as in training, the first normalizing by the batch: nearly the same
    assert torch.allclose(second, m[5].running_var, rtol=0.1) and not torch.equal(second, m[5].running_var)
    # weights, flags, hooks and the batch count are as they were
    assert all(torch.equal(v, weights[k]) for k, v in m.named_parameters())
    assert m.training and all(c.training for c in m) and hook_count(m) == 0
    assert torch.equal(m[1].num_batches_tracked, tracked)
    plain = get_model("lenet5")
    assert recompute_bn_stats(plain, load_dataset("mnist5k", "test")) == 0


def test_fit_recomputing_bn_trains_the_same_weights_and_evaluates_as_it_learned():
    x = torch.randn(96, 1, 10, 10)
    y = (x[:, 0, :5].mean((1, 2)) > x[:, 0, 5:].mean((1, 2))).long()  # top half brighter than the bottom
    data = torch.utils.data.TensorDataset(x, y)
    a, b = _bn_net(), _bn_net()
    ha = fit(a, data, epochs=2, batch_size=32, lr=1e-2, seed=1, progress=False)
    hb = fit(b, data, epochs=2, batch_size=32, lr=1e-2, seed=1, recompute_bn=True, progress=False)
    assert ha["loss"] == hb["loss"]  # the statistics never feed the training
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.allclose(a[1].running_mean, b[1].running_mean)
    c = _bn_net()
    with torch.no_grad():
        c.load_state_dict(a.state_dict())
    from cnn_redundancy import recompute_bn_stats

    recompute_bn_stats(c, data, batch_size=32)
    assert all(torch.allclose(u, v) for u, v in zip(c.buffers(), b.buffers()))  # the last epoch's weights



def test_input_shift_measures_the_first_batchnorm_against_its_running_statistics():
    from cnn_redundancy import input_shift, recompute_bn_stats
    from cnn_redundancy.core.hooks import hook_count

    m = _bn_net()
    x = torch.rand(50, 1, 10, 10)  # images in [0, 1], as trained
    labels = torch.zeros(50, dtype=torch.long)
    assert input_shift(m, torch.utils.data.TensorDataset(x, labels)) is None  # untrained statistics: nothing to compare
    recompute_bn_stats(m, torch.utils.data.TensorDataset(x, labels))
    m.train()
    calls = []
    m[4].register_forward_hook(lambda *_: calls.append(1))  # the user's own hook, after the first BatchNorm
    state = {k: v.clone() for k, v in m.state_dict().items()}
    same = input_shift(m, torch.utils.data.TensorDataset(x, labels), batch_size=16)
    n = 50 * 8 * 8  # values per channel: the running variance is unbiased, the measured one not
    assert same.layer == "1" and same.samples == 50 and not same.far
    assert same.mean_shift < 1e-4 and same.variance_ratio == pytest.approx((n - 1) / n, rel=1e-4)
    # the same images scaled as (x - 0.5) / 0.5: conv1's output is 2 y + a constant per channel, 4x the variance
    scaled = input_shift(m, torch.utils.data.TensorDataset(2 * x - 1, labels), batch_size=16)
    assert scaled.far and scaled.variance_ratio == pytest.approx(4 * (n - 1) / n, rel=1e-3)  # eps 1e-5 aside
    assert "the images reach '1' (the model's first BatchNorm) far from its training statistics" in scaled.describe()
    shifted = input_shift(m, torch.utils.data.TensorDataset(x + 3, labels))  # a mean moved, the variance kept
    assert shifted.far and shifted.mean_shift > 1 and shifted.variance_ratio == pytest.approx((n - 1) / n, rel=1e-3)
    # the pass stops at that layer; the model is left as found
    assert calls == [] and m.training and hook_count(m) == 1
    assert all(torch.equal(v, state[k]) for k, v in m.state_dict().items())
    assert input_shift(get_model("lenet5"), load_dataset("mnist5k", "test")) is None  # no BatchNorm
    sampled = input_shift(m, torch.utils.data.TensorDataset(torch.rand(500, 1, 10, 10), torch.zeros(500)), samples=64)
    assert sampled.samples == 64 and not sampled.far


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_recomputing_bn_on_the_gpu_gives_the_cpu_statistics_and_leaves_the_model_on_the_cpu():
    from cnn_redundancy import recompute_bn_stats

    x = torch.randn(40, 1, 10, 10)
    data = torch.utils.data.TensorDataset(x, torch.zeros(40, dtype=torch.long))
    on_cpu, on_gpu = _bn_net(), _bn_net()
    recompute_bn_stats(on_cpu, data, batch_size=16)
    recompute_bn_stats(on_gpu, data, batch_size=16, device="cuda")
    assert all(b.device.type == "cpu" for b in on_gpu.buffers())
    assert all(torch.allclose(u, v, rtol=1e-4, atol=1e-5) for u, v in zip(on_cpu.buffers(), on_gpu.buffers()))
