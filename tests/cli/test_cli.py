"""One end-to-end run of the command line on a small subset of the bundled data."""

import json

import pytest

from cnn_redundancy.cli import build_parser, main
from cnn_redundancy.core.results import Result


def test_end_to_end(tmp_path, capsys):
    train = tmp_path / "train"
    assert main(["--quiet", "train", "--model-kw", "width=2", "--epochs", "1", "--limit", "300", "--out", str(train)]) == 0
    ckpt = train / "model.pt"
    said = capsys.readouterr()
    assert ckpt.exists() and "test accuracy" in said.out
    assert "training lenet5 from random weights (seed 0)" in said.err and "no --checkpoint" not in said.err
    assert json.loads((train / "train.json").read_text())["bn_stats"] is None  # LeNet-5 has no BatchNorm
    sh = tmp_path / "shuffle"
    assert main(["-q", "pixel-shuffle", "-c", str(ckpt), "--layers", "conv2", "--limit", "200",
                 "--channels", "0", "3", "--out", str(sh)]) == 0  # fmt: skip
    res = Result.load(sh / "pixel-shuffle.json")
    assert res.channels == {"conv2": [0, 3]} and res.samples == 200 and (sh / "pixel-shuffle.png").stat().st_size > 0
    imp = tmp_path / "impulse"
    assert main(["-q", "impulse", "-c", str(ckpt), "--mode", "both", "--out", str(imp)]) == 0
    assert "of kernels have a partner" in capsys.readouterr().out
    assert Result.load(imp / "impulse.json").layers == ["conv1", "conv2"]
    for cmd in ("distinctiveness", "zero-ablation", "channel-shuffle"):
        assert main(["-q", cmd, "-c", str(ckpt), "--limit", "64", "--out", str(tmp_path / cmd)]) == 0
        assert Result.load(tmp_path / cmd / f"{cmd}.json").meta["complete"] is True
    demo = tmp_path / "demo"
    assert main(["-q", "demo", "--limit", "120", "--epochs", "1", "--repeats", "1", "--out", str(demo)]) == 0
    html = (demo / "report.html").read_text()
    assert "Impulse-response paper" in html and "LeNet-5x10" in html and "cosine_comparison.png" in html
    for name in ("lenet5_channel_shuffle.json", "lenet5x10_pixel_shuffle.json", "lenet5x10_impulse.json",
                 "cosine_comparison.png", "accuracy_comparison.png", "max_ncc_comparison.png"):  # fmt: skip
        assert (demo / name).stat().st_size > 0, name
    section = json.loads((demo / "sections" / "impulse-response.json").read_text())
    tables = {t["title"]: t for t in section["tables"]}
    assert len(tables["Shuffle probes of conv2's input (test set)"]["rows"]) == 2  # LeNet-5 and LeNet-5x10
    assert section["tables"][0]["title"] == "The paper's figures beside ours"  # the demo opens with the paper's claims
    assert main(["report", str(demo)]) == 0


def test_errors_are_one_line(tmp_path, capsys):
    assert main(["-q", "channel-shuffle", "--layers", "conv9", "--limit", "10", "--out", str(tmp_path)]) == 2
    assert "Unknown layer 'conv9'" in capsys.readouterr().err
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"junk")
    assert main(["-q", "impulse", "-c", str(bad), "--out", str(tmp_path)]) == 2
    assert "not a readable checkpoint" in capsys.readouterr().err


def _subcommands(parser) -> dict:
    import argparse

    return next(a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction))


def test_every_command_prints_its_help(capsys):
    """argparse %-formats help texts: a summary saying "50% MACs" once broke ``reproduce --help``."""
    parser = build_parser()
    commands = _subcommands(parser)
    paths = [[name] for name in commands] + [["reproduce", name] for name in _subcommands(commands["reproduce"])]
    assert ["reproduce", "compress"] in paths and ["compress"] in paths
    for path in paths:
        with pytest.raises(SystemExit) as e:
            build_parser().parse_args([*path, "--help"])
        assert e.value.code == 0, path
        assert "usage:" in capsys.readouterr().out, path


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    out = capsys.readouterr().out
    for cmd in ("train", "channel-shuffle", "pixel-shuffle", "impulse", "distinctiveness", "zero-ablation",
                "strongest-activations", "prune", "demo", "report", "reproduce"):
        assert cmd in out


def test_train_recomputes_batchnorm_statistics_unless_told_not_to(tmp_path):
    import torch

    from cnn_redundancy import load_checkpoint

    stats = {}
    for flag, said in (("--recompute-bn", "recomputed on the training data"), ("--no-recompute-bn", "running averages")):
        out = tmp_path / flag
        assert main(["-q", "train", "-m", "resnet20", "--model-kw", "in_channels=1", "--epochs", "1", "--limit", "96",
                     "--batch-size", "32", flag, "-o", str(out)]) == 0  # fmt: skip
        assert json.loads((out / "train.json").read_text())["bn_stats"] == said
        stats[flag] = load_checkpoint(out / "model.pt").bn1.running_mean
    assert not torch.allclose(stats["--recompute-bn"], stats["--no-recompute-bn"])
