"""The device an analysis computes on, mixed precision, and the pieces of the sharded batch loop.

No GPU in CI: the CUDA tests run where one is present (they check that a CPU model analysed on the
GPU is left on the CPU, with the CPU's answer); on the CPU, placement is checked through the
memory layout (``channels_last``), which moves tensors the same way.
"""

from __future__ import annotations

import pytest
import torch

import cnn_redundancy as cr
from cnn_redundancy.core.batches import BatchLoop, _schedule, as_loader, batches, resolve_device
from cnn_redundancy.core.device import autocast, full_precision, placed
from cnn_redundancy.core.distributed import _fill, _strip, all_gather_tree, rank, world_size
from cnn_redundancy.testing import TinyCNN, random_images

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_placed_moves_and_restores_the_very_same_tensors():
    m = TinyCNN().eval()
    params = {n: (p, p.data) for n, p in m.named_parameters()}
    with placed(m, torch.device("cpu"), channels_last=True):
        assert m.conv2.weight.is_contiguous(memory_format=torch.channels_last)
        assert m.conv2.weight.data.data_ptr() != params["conv2.weight"][1].data_ptr()
    for n, p in m.named_parameters():
        assert p is params[n][0] and p.data.data_ptr() == params[n][1].data_ptr()
    with pytest.raises(RuntimeError, match="inside"), placed(m, torch.device("cpu"), channels_last=True):
        raise RuntimeError("inside")
    assert m.conv2.weight.data.data_ptr() == params["conv2.weight"][1].data_ptr()


def test_placed_keep_copies_what_the_block_wrote():
    m = TinyCNN()
    original = m.conv2.weight.data
    with placed(m, torch.device("cpu"), channels_last=True, keep=True), torch.no_grad():
        assert m.conv2.weight.data.data_ptr() != original.data_ptr()
        m.conv2.weight.fill_(0.5)
    assert m.conv2.weight.data.data_ptr() == original.data_ptr()
    assert torch.all(original == 0.5)


def test_resolve_device():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if torch.cuda.is_available():
        assert resolve_device("cuda").index is not None  # "cuda" is the current device, cuda:LOCAL_RANK under torchrun
    assert resolve_device(None, TinyCNN()) == torch.device("cpu")
    with pytest.raises(ValueError, match="device must be"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            resolve_device("cuda")
    with pytest.raises(ValueError, match="holds no values"):
        resolve_device("meta")
    with pytest.raises(ValueError, match="device must be 'auto', 'cpu', 'cuda', 'cuda:N', 'mps' or 'xpu', not 'mkldnn'"), \
            pytest.warns(UserWarning, match="mkldnn"):  # fmt: skip
        resolve_device("mkldnn")  # a device type torch names, and a CPU library whose backend is available
    with torch.device("meta"):
        on_meta = TinyCNN()
    with pytest.raises(ValueError, match="weights are on the 'meta' device"):
        cr.distinctiveness(on_meta, random_images(8))
    if not torch.backends.mps.is_available():  # one line, not torch's error from inside the first copy
        with pytest.raises(ValueError, match=r"has no mps device: use 'cpu', 'cuda' or 'auto'"):
            resolve_device("mps")


def test_amp_choices_are_checked():
    with pytest.raises(ValueError, match="amp must be"):
        cr.distinctiveness(TinyCNN(), random_images(8), amp="int8")
    assert full_precision(torch.zeros(2, dtype=torch.bfloat16)).dtype == torch.float32
    x = torch.zeros(2)
    assert full_precision(x) is x
    with autocast(torch.device("cpu"), None):
        assert not torch.is_autocast_enabled("cpu")


def test_batches_give_offsets_and_a_schedule_per_rank():
    data = random_images(20)
    loader = as_loader(data, 8)
    got = [(b.index, b.offset, len(b.x)) for b in batches(loader, torch.device("cpu"))]
    assert got == [(0, 0, 8), (1, 8, 8), (2, 16, 4)]
    assert [(i, o) for i, o, _ in _schedule(loader, 1, 2)] == [(1, 8)]
    assert [(i, o) for i, o, _ in _schedule(loader, 0, 2)] == [(0, 0), (2, 16)]


def test_batch_loop_applies_each_contribution_after_its_batch():
    seen = []
    loop = BatchLoop(as_loader(random_images(20), 8), torch.device("cpu"), seen.append)
    assert len(loop) == 3 and rank() == 0 and world_size() == 1
    for b in loop:
        assert len(seen) == b.index  # the previous batch's contribution is in
        loop.add({"i": b.index})
    assert seen == [{"i": 0}, {"i": 1}, {"i": 2}]
    with pytest.raises(ValueError, match="shard"):
        BatchLoop(as_loader(random_images(4), 2), torch.device("cpu"), seen.append, shard="layers")


def test_gathered_trees_come_back_exactly():
    tree = {"a": torch.arange(5.0, dtype=torch.float64), "b": [torch.tensor(True), 3, None],
            "c": (torch.randn(2, 3), torch.tensor(7, dtype=torch.int64))}  # fmt: skip
    chunks, size = [], [0]
    skeleton = _strip(tree, chunks, size)
    back = _fill(skeleton, torch.cat(chunks))
    assert torch.equal(back["a"], tree["a"]) and back["b"][1:] == [3, None] and bool(back["b"][0])
    assert torch.equal(back["c"][0], tree["c"][0]) and back["c"][1].dtype == torch.int64
    assert all_gather_tree(tree) == [tree]  # one process: itself


@pytest.fixture(scope="module")
def trained():
    """A small CNN trained on scikit-learn's digits: logits with real margins, so AMP can be compared."""
    torch.manual_seed(0)
    model = TinyCNN(input_size=8, c1=8, c2=8)
    cr.fit(model, cr.load_dataset("digits", "train"), epochs=3, lr=3e-3, batch_size=64, progress=False)
    return model.eval(), cr.subset(cr.load_dataset("digits", "test"), 128)


def _amp_works(dtype: torch.dtype) -> bool:
    try:
        with torch.autocast("cpu", dtype=dtype):
            torch.nn.functional.conv2d(torch.randn(1, 1, 4, 4), torch.randn(1, 1, 3, 3))
        return True
    except RuntimeError:
        return False


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_agrees_with_full_precision(trained, amp):
    """The tolerances stated in the docs: cosine 0.005, angles 0.5 degrees, accuracy 0.03."""
    if not _amp_works({"bf16": torch.bfloat16, "fp16": torch.float16}[amp]):
        pytest.skip(f"this CPU has no {amp} autocast")
    model, data = trained
    kw = {"batch_size": 64, "progress": False}
    full = cr.channel_shuffle(model, data, "conv2", **kw)
    low = cr.channel_shuffle(model, data, "conv2", amp=amp, **kw)
    assert max(abs(a - b) for a, b in zip(full.mean_cosine["conv2"], low.mean_cosine["conv2"])) < 0.005
    assert max(abs(a - b) for a, b in zip(full.metric["conv2"], low.metric["conv2"])) <= 0.03
    d_full, d_low = cr.distinctiveness(model, data, **kw), cr.distinctiveness(model, data, amp=amp, **kw)
    diffs = (d_full.angles["conv2"] - d_low.angles["conv2"]).abs()
    assert diffs.nan_to_num().max() < 0.5
    z_full, z_low = cr.zero_ablation(model, data, **kw), cr.zero_ablation(model, data, amp=amp, **kw)
    assert all(abs(z_full.scores[u] - z_low.scores[u]) <= 0.03 for u in z_full.units)
    assert abs(cr.evaluate(model, data, amp=amp) - cr.evaluate(model, data)) <= 0.03
    l_full = cr.strongest_activation_labels(model, data, feature_maps=2, top=3, **kw)
    l_low = cr.strongest_activation_labels(model, data, feature_maps=2, top=3, amp=amp, **kw)
    assert len(set(l_full.indices) & set(l_low.indices)) >= 0.8 * len(l_full.indices)
    assert full.meta["params"]["amp"] is None and low.meta["params"]["amp"] == amp


@cuda
@pytest.mark.parametrize("name", ["channel-shuffle", "distinctiveness", "zero-ablation", "strongest-activations"])
def test_a_cpu_model_analysed_on_the_gpu_stays_on_the_cpu(name):
    a = cr.get_analysis(name)
    data = random_images(32, seed=1)
    torch.manual_seed(0)
    model = TinyCNN().eval()
    kw = {"batch_size": 16, "progress": False, **a.example}
    on_cpu = a.fn(model, data, kw.pop("layers", None), device="cpu", **kw)
    on_gpu = a.fn(model, data, None, device="cuda", **kw)
    assert all(p.device.type == "cpu" for p in model.parameters())
    if name == "distinctiveness":
        assert on_gpu.angles["conv2"].device.type == "cpu"
        assert torch.allclose(on_cpu.angles["conv2"].nan_to_num(), on_gpu.angles["conv2"].nan_to_num(), atol=1e-3)
    else:
        assert on_cpu.headline() and on_gpu.headline()


@cuda
def test_fit_and_evaluate_on_the_gpu_leave_the_model_where_it_was():
    data = random_images(32, seed=1)
    model = TinyCNN()
    before = model.conv1.weight.detach().clone()
    cr.fit(model, data, epochs=1, device="cuda", progress=False)
    assert model.conv1.weight.device.type == "cpu" and not torch.equal(model.conv1.weight, before)
    assert abs(cr.evaluate(model, data, device="cuda") - cr.evaluate(model, data)) <= 1 / 32


@pytest.mark.parametrize("device", ["gpu", pytest.param("cuda", marks=pytest.mark.skipif(torch.cuda.is_available(),
                                                                                      reason="this machine has a GPU"))])  # fmt: skip
def test_under_torchrun_a_device_the_machine_lacks_is_one_clear_error_before_any_group(device, monkeypatch):
    import torch.distributed as dist

    from cnn_redundancy.core.distributed import launched

    for key, value in {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": "29999"}.items():  # fmt: skip
        monkeypatch.setenv(key, value)
    with pytest.raises(ValueError, match="no CUDA GPU|device must be"):
        with launched(device):
            pass
    assert not dist.is_initialized()  # nothing waits for a peer that will never come


@pytest.mark.parametrize("given", ["abc", "0", "-5", "inf"])
def test_a_bad_collective_timeout_is_one_clear_error(given, monkeypatch):
    from cnn_redundancy.core.distributed import _timeout

    monkeypatch.setenv("CNN_REDUNDANCY_DIST_TIMEOUT", given)
    with pytest.raises(ValueError, match=f"CNN_REDUNDANCY_DIST_TIMEOUT must be a number of seconds above 0, not '{given}'"):
        _timeout(None)
    monkeypatch.setenv("CNN_REDUNDANCY_DIST_TIMEOUT", "90")
    assert _timeout(None).total_seconds() == 90.0


class _HostReads(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts what makes a GPU wait for the host: a tensor read as a Python number or bool (``.item()``,
    ``bool(t)``, ``int(t)``) and ``nonzero`` (its size depends on the values)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.is_nonzero.default,
                    torch.ops.aten.nonzero.default):  # fmt: skip
            self.count += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("sweep", ["channel_shuffle", "cosine_only", "pixel_shuffle", "zero_ablation"])
def test_no_host_read_per_unit_and_batch_of_a_sweep(sweep, monkeypatch):
    """The loop over a batch's units never reads a value back to the host (a GPU would wait at each one):
    what two more batches add to the reads (numbers, bools, ``nonzero``, ``.tolist()``, ``.cpu()``,
    ``.numpy()``) is the same for one unit and for several."""
    m = TinyCNN()
    runs = {
        "channel_shuffle": lambda d, n: cr.channel_shuffle(m, d, "conv2", channels=range(n), batch_size=16),
        "cosine_only": lambda d, n: cr.channel_shuffle(m, d, "conv2", channels=range(n), batch_size=16, metric=None),
        "pixel_shuffle": lambda d, n: cr.pixel_shuffle(m, d, "conv2", channels=range(n), batch_size=16),
        "zero_ablation": lambda d, n: cr.zero_ablation(m, d, ["conv1", "conv2"][: n // 2 + 1], batch_size=16),
    }  # one unit and four (two convs for the ablation)
    copies = {name: getattr(torch.Tensor, name) for name in ("tolist", "cpu", "numpy")}  # to the host
    reads: dict[tuple[int, int], tuple[int, int]] = {}
    for units in (1, 4):
        for n_batches in (2, 4):
            with _HostReads() as mode:
                made: list[str] = []
                for name, fn in copies.items():
                    monkeypatch.setattr(torch.Tensor, name, lambda t, *a, fn=fn, name=name, made=made, **k:
                                        made.append(name) or fn(t, *a, **k))  # fmt: skip
                runs[sweep](random_images(16 * n_batches, seed=1), units)
                for name, fn in copies.items():
                    monkeypatch.setattr(torch.Tensor, name, fn)
            reads[units, n_batches] = (mode.count, len(made))
    more = {u: tuple(a - b for a, b in zip(reads[u, 4], reads[u, 2])) for u in (1, 4)}
    assert more[1] == more[4], reads
    assert more[1][0] <= 2 * 2 and more[1][1] == 0  # per batch: the input and label checks at most
