from cnn_redundancy.data import load_dataset, subset
from cnn_redundancy.experiments.impulse import _trained


def test_checkpoints_are_cached_and_retrained_when_settings_change(tmp_path, capsys):
    train = subset(load_dataset("mnist5k", "train"), 64)
    ckpt = tmp_path / "c.pt"
    a = _trained("net", {"width": 1}, ckpt, train, 1, 0, False)
    b = _trained("net", {"width": 1}, ckpt, train, 1, 0, False)
    out = capsys.readouterr().out
    assert "training 1 epochs" in out and "using cached checkpoint" in out
    assert all((x == y).all() for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    _trained("net", {"width": 1}, ckpt, train, 2, 0, False)
    assert "training 2 epochs" in capsys.readouterr().out
    ckpt.write_bytes(b"broken")
    _trained("net", {"width": 1}, ckpt, train, 1, 0, False)
    assert "unusable" in capsys.readouterr().out
