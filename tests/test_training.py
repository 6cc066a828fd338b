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
