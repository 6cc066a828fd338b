"""The mistakes users make most get one line (``error: ...``, exit 2) that says the fix; runs are
reproducible without a checkpoint; an output folder never mixes two runs or overwrites its input;
segmentation works end to end; an interrupted command keeps what it wrote."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest
from PIL import Image

import cnn_redundancy as cr
from cnn_redundancy.cli import build_parser, main

DICT_MODEL = """import torch.nn as nn
class Net(nn.Module):
    def __init__(self, in_channels=1, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, num_classes)
    def forward(self, x):
        h = self.conv2(self.conv1(x).relu()).relu().mean((2, 3))
        return {"out": self.fc(h), "aux": h}
def build(in_channels=1, num_classes=10):
    return Net(in_channels, num_classes)
"""


def _error(capsys) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def lenet(tmp_path_factory):
    return cr.save_checkpoint(cr.get_model("lenet5", seed=0), tmp_path_factory.mktemp("ck") / "lenet5.pt")


@pytest.fixture(scope="module")
def pngs(tmp_path_factory):
    """An image folder of 20x20 RGB PNGs in two classes, as a user has."""
    root = tmp_path_factory.mktemp("pngs")
    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (root / cls).mkdir()
        for i in range(12):
            Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(root / cls / f"{i}.png")
    return root


@pytest.mark.parametrize("cmd", ["channel-shuffle", "distinctiveness", "prune"])
def test_image_geometry_errors_name_the_image_options(cmd, lenet, pngs, tmp_path, capsys):
    base = ["-q", cmd, "-c", str(lenet), "-d", "imagefolder", "--root", str(pngs), "--split", "all", "--batch-size", "8"]
    extra = ["--layers", "conv2", "--channels", "0", "--metric", "none"] if cmd == "channel-shuffle" else \
        ["--no-eval", "--steps", "1"] if cmd == "prune" else []  # fmt: skip
    assert main([*base, *extra, "-o", str(tmp_path / "a")]) == 2
    assert "--grayscale for an image folder" in _error(capsys)
    assert main([*base, *extra, "--grayscale", "-o", str(tmp_path / "b")]) == 2
    assert "the images are 20x20, the model takes 28x28: --image-size 28" in _error(capsys)
    assert main([*base, *extra, "--grayscale", "--image-size", "28", "--normalize", "0.5,0.5", "-o", str(tmp_path / "c")]) == 0


def test_user_model_file_plain_state_dict_and_pngs_end_to_end(pngs, tmp_path, capsys):
    f = tmp_path / "my_model.py"
    f.write_text(DICT_MODEL)
    import torch

    torch.save({"state_dict": {f"model.{k}": v for k, v in cr.get_model(f"{f}:build", in_channels=3,
                                                                       num_classes=2).state_dict().items()}},
               tmp_path / "weights.pth")  # fmt: skip
    base = ["-q", "zero-ablation", "-m", f"{f}:build", "--model-kw", "in_channels=3", "num_classes=2", "-c",
            str(tmp_path / "weights.pth"), "-d", "imagefolder", "--root", str(pngs), "--split", "all"]
    assert main([*base, "-o", str(tmp_path / "z")]) == 2
    assert "--output-key out" in _error(capsys)
    assert main([*base, "--output-key", "out", "-o", str(tmp_path / "z2")]) == 0
    res = cr.Result.load(tmp_path / "z2" / "zero-ablation.json")
    assert res.units == ["conv1", "conv2"] and res.metric == "accuracy"


def test_a_root_without_a_dataset_is_read_for_what_it_holds(pngs, tmp_path, capsys):
    out = tmp_path / "t"
    args = ["train", "-m", "lenet5", "--root", str(pngs), "--split", "all", "--image-size", "28", "--grayscale",
            "--epochs", "1", "-o", str(out)]  # fmt: skip
    assert main(["-q", *args]) == 0
    assert f"--root {pngs}: read as --dataset imagefolder" in capsys.readouterr().err
    assert json.loads((out / "runs.json").read_text())["train"]["dataset"] == "imagefolder"
    assert main(["-q", *args, "-d", "imagefolder"]) == 0  # the same parameters: the folder takes it
    assert main(["-q", "evaluate", "-c", str(out / "model.pt"), "-d", "mnist5k", "--root", str(pngs)]) == 2
    assert "mnist5k is bundled and reads no root; for the files under" in _error(capsys)


@pytest.mark.parametrize("cmd", ["distinctiveness", "train"])
def test_images_of_mixed_sizes_are_one_line(cmd, tmp_path, capsys):
    for cls, name, size in (("a", "0", (20, 20)), ("a", "1", (20, 20)), ("b", "0", (20, 20)), ("b", "1", (17, 23))):
        (tmp_path / "mixed" / cls).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", size).save(tmp_path / "mixed" / cls / f"{name}.png")
    args = ["-q", cmd, "-m", "lenet5", "--model-kw", "in_channels=3", "--root", str(tmp_path / "mixed"), "--split",
            "all", "-o", str(tmp_path / "out")]  # fmt: skip
    assert main(args) == 2
    said = _error(capsys)
    assert "inputs of different shapes cannot form a batch (" in said and "give every image one size: --image-size N" in said
    assert "[3, 20, 20]" in said and "[3, 23, 17]" in said


def test_train_honours_the_split_and_says_when_the_test_score_is_not_held_out(pngs, tmp_path, capsys):
    args = ["-q", "train", "-m", "lenet5", "--root", str(pngs), "--image-size", "28", "--grayscale", "--epochs", "1"]
    assert main([*args, "--split", "all", "-o", str(tmp_path / "all")]) == 0
    out = capsys.readouterr()
    assert "(not held out: trained on it)" in out.out and "the test score is not held out" in out.err
    history = json.loads((tmp_path / "all" / "train.json").read_text())
    assert history["test_held_out"] is False and history["train_samples"] == 24
    assert main([*args, "-o", str(tmp_path / "train")]) == 0
    history = json.loads((tmp_path / "train" / "train.json").read_text())
    assert history["test_held_out"] is True and history["train_samples"] < 24
    assert main([*args, "--split", "test", "-o", str(tmp_path / "test")]) == 2
    assert "would train on the test split" in _error(capsys)


def test_a_class_too_small_to_split_is_one_line(tmp_path, capsys):
    for cls, n in (("big", 5), ("lonely", 1)):
        (tmp_path / "few" / cls).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (8, 8)).save(tmp_path / "few" / cls / f"{i}.png")
    assert main(["-q", "evaluate", "-m", "lenet5", "--root", str(tmp_path / "few"), "--image-size", "28", "--grayscale"]) == 2
    assert "a test split of " in (said := _error(capsys)) and "'lonely' has 1: add images" in said


UNTRACEABLE = """import torch.nn as nn
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.conv2, self.fc = nn.Conv2d(1, 4, 3), nn.Conv2d(4, 4, 3), nn.Linear(4, 10)
    def forward(self, x):
        h = self.conv1(x).relu()
        if h.mean() > 0:  # control flow on a value: not fx-traceable
            h = h * 1.0
        return self.fc(self.conv2(h).relu().mean((2, 3)))
def build():
    return Net()
"""


def test_warnings_are_one_line(tmp_path):
    f = tmp_path / "loopy.py"
    f.write_text(UNTRACEABLE)
    cmd = [sys.executable, "-m", "cnn_redundancy", "-q", "zero-ablation", "-m", f"{f}:build", "--limit", "16",
           "-o", str(tmp_path / "z")]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "default"})
    assert r.returncode == 0, r.stderr
    said = [ln for ln in r.stderr.splitlines() if "fx-traceable" in ln]
    assert said and all(ln.startswith("warning: Net is not fx-traceable") for ln in said)
    assert "UserWarning" not in r.stderr and not any(ln.startswith(" ") for ln in r.stderr.splitlines())


@pytest.mark.parametrize("args,message", [
    (["--model-kw", "width=abc"], "argument width must be an integer (default 1), not 'abc'"),
    (["--limit", "-995"], "limit must be a positive number of samples, not -995"),
    (["--normalize", "imagenet"], "normalize gives 3 means for images with 1 channel"),
    (["--image-size", "28"], "--image-size and --grayscale apply to --dataset imagefolder"),
])  # fmt: skip
def test_bad_options_are_one_line(args, message, tmp_path, capsys):
    assert main(["-q", "distinctiveness", "-m", "lenet5", *args, "-o", str(tmp_path)]) == 2
    assert message in _error(capsys)


def test_a_file_as_out_is_one_line(tmp_path, capsys):
    (tmp_path / "f.txt").write_text("x")
    assert main(["-q", "impulse", "-m", "lenet5", "-o", str(tmp_path / "f.txt")]) == 2
    assert "is a file; pass a folder" in _error(capsys)


def test_segmentation_end_to_end(tmp_path, capsys):
    seg = ["-d", "shapes", "--limit", "48"]
    assert main(["-q", "train", "-m", "pspnet_resnet", "--model-kw", "depths=[1,1,1,1]", "width=4", *seg,
                 "--epochs", "1", "-o", str(tmp_path / "t")]) == 0  # fmt: skip
    out = capsys.readouterr()
    assert "num_classes=3" in out.err and "metric dice" in out.err and "test dice" in out.out
    assert "test_dice" in json.loads((tmp_path / "t" / "train.json").read_text())
    ck = str(tmp_path / "t" / "model.pt")
    assert main(["-q", "evaluate", "-c", ck, *seg]) == 0 and capsys.readouterr().out.startswith("dice ")
    assert main(["-q", "zero-ablation", "-c", ck, *seg, "-o", str(tmp_path / "z")]) == 0
    assert cr.Result.load(tmp_path / "z" / "zero-ablation.json").metric == "dice"
    assert main(["-q", "remove-trivial", "-c", ck, *seg, "-o", str(tmp_path / "r")]) == 0
    assert cr.Result.load(tmp_path / "r" / "removal.json").metric == "dice"


def test_remove_trivial_with_max_drop(tmp_path, capsys):
    """--max-drop runs compress's blocks stage (it stopped on a missing --criterion); --resume there is refused."""
    args = ["-q", "remove-trivial", "-m", "resnet20", "-d", "digits", "--limit", "96", "--max-drop", "0.05"]
    assert main([*args, "-o", str(tmp_path / "r")]) == 0
    assert json.loads((tmp_path / "r" / "compress.json").read_text())["meta"]["params"]["stages"] == ["blocks"]
    assert main([*args, "--resume", "-o", str(tmp_path / "r2")]) == 2
    assert "--resume continues remove-trivial's ranking sweep" in capsys.readouterr().err


def test_every_command_that_evaluates_takes_metric_and_output_key():
    parser = build_parser()
    for cmd in ("train", "evaluate", "prune", "remove-trivial", "channel-shuffle", "pixel-shuffle", "zero-ablation",
                "analyze", "compress"):  # fmt: skip
        args = parser.parse_args([cmd, "--metric", "dice", "--output-key", "out"])
        assert args.metric == "dice" and args.output_key == "out", cmd
    assert parser.parse_args(["analyze"]).metric == "auto" and parser.parse_args(["analyze"]).output_key is None
    assert parser.parse_args(["kernel-scores", "--output-key", "1"]).output_key == "1"


def test_random_models_are_seeded(tmp_path):
    def run(out, seed):
        assert main(["-q", "zero-ablation", "-m", "lenet5", "--limit", "32", "--seed", str(seed), "-o", str(out)]) == 0
        return (out / "zero-ablation.json").read_text()

    a, b, c = run(tmp_path / "a", 0), run(tmp_path / "b", 0), run(tmp_path / "c", 1)
    assert a == b and a != c


def test_the_input_checkpoint_is_never_overwritten(lenet, tmp_path, capsys):
    folder = tmp_path / "D"
    folder.mkdir()
    ck = folder / "model.pt"
    ck.write_bytes(lenet.read_bytes())
    for cmd in (["prune", "--steps", "1", "--no-eval"], ["remove-trivial"], ["train", "--epochs", "1"]):
        assert main(["-q", *cmd, "-c", str(ck), "--limit", "32", "-o", str(folder)]) == 2
        assert "would overwrite the input checkpoint" in _error(capsys)
    assert ck.read_bytes() == lenet.read_bytes()


def test_an_output_folder_never_mixes_two_runs(lenet, tmp_path, capsys):
    run = ["-q", "distinctiveness", "-c", str(lenet), "--limit", "32", "-o", str(tmp_path)]
    assert main([*run, "--seed", "0"]) == 0
    assert main([*run, "--seed", "0"]) == 0  # the same run again: fine
    assert main(["-q", "impulse", "-c", str(lenet), "-o", str(tmp_path)]) == 0  # another command beside it: fine
    assert main([*run, "--seed", "1"]) == 2
    assert "holds results of 'distinctiveness' run with other parameters (seed 0 -> 1)" in _error(capsys)
    assert cr.Result.load(tmp_path / "distinctiveness.json").meta["seed"] == 0
    assert main([*run, "--seed", "1", "--overwrite"]) == 0
    assert cr.Result.load(tmp_path / "distinctiveness.json").meta["seed"] == 1
    assert json.loads((tmp_path / "runs.json").read_text())["distinctiveness"]["seed"] == 1


def test_a_run_that_failed_before_writing_results_does_not_block_its_folder(lenet, tmp_path, capsys):
    """A mistyped command that fails at once (here: a file that is no checkpoint) leaves only the run
    record; the corrected command may use the same folder."""
    bad, out = tmp_path / "bad.pt", tmp_path / "out"
    bad.write_bytes(b"junk")
    assert main(["-q", "distinctiveness", "-c", str(bad), "--limit", "32", "-o", str(out)]) == 2
    assert "not a readable checkpoint" in _error(capsys)
    assert [x.name for x in out.iterdir()] == ["runs.json"]
    assert main(["-q", "distinctiveness", "-c", str(lenet), "--limit", "32", "-o", str(out)]) == 0
    assert cr.Result.load(out / "distinctiveness.json").meta["complete"] is True


def test_an_interrupted_prune_keeps_its_steps_and_says_so(lenet, tmp_path, capsys, interrupt_at):
    import cnn_redundancy.compression.pruning as P

    interrupt_at(P, "_step", 2)  # Ctrl-C during the second step
    assert main(["-q", "prune", "-c", str(lenet), "--limit", "32", "--steps", "3", "--no-eval", "-o", str(tmp_path)]) == 130
    assert f"interrupted; files already written to {tmp_path} are kept" in capsys.readouterr().err
    kept = cr.Result.load(tmp_path / "prune.json")
    assert len(kept.history) == 1 and kept.meta["complete"] is False and not (tmp_path / "model.pt").exists()


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="signal handlers need the main thread")
def test_sigterm_stops_a_command_as_ctrl_c_does(lenet, tmp_path, capsys, monkeypatch):
    """A scheduler's time limit (SIGTERM) during the second step: the first is kept and the command says so,
    instead of the process ending at once; the handler is given back afterwards."""
    import cnn_redundancy.compression.pruning as P

    real, calls = P._step, []

    def step(*a, **kw):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*a, **kw)

    monkeypatch.setattr(P, "_step", step)
    before = signal.getsignal(signal.SIGTERM)
    assert main(["-q", "prune", "-c", str(lenet), "--limit", "32", "--steps", "3", "--no-eval", "-o", str(tmp_path)]) == 130
    assert f"interrupted; files already written to {tmp_path} are kept" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is before
    kept = cr.Result.load(tmp_path / "prune.json")
    assert len(kept.history) == 1 and kept.meta["complete"] is False


GRACE_SCRIPT = """import sys, threading, torch
from cnn_redundancy.cli import _SigtermStop
stop = _SigtermStop()
stop.start()
x = torch.randn(3000, 3000, dtype=torch.float64)
threading.Timer(0.5, lambda: print("waiting", flush=True)).start()  # said from inside the long call
try:
    torch.linalg.svd(x)  # one C call of several seconds: Python's handler cannot run until it returns
except KeyboardInterrupt:
    print("handled", flush=True)
    sys.exit(130)
"""


def test_a_process_that_cannot_stop_on_sigterm_ends_after_the_grace(tmp_path):
    """A process stuck in a C call (a collective waiting for a process that is gone) ends with 143 after
    the grace, as it would without the handler, instead of when the call returns."""
    script = tmp_path / "stuck.py"
    script.write_text(GRACE_SCRIPT)
    env = {**os.environ, "CNN_REDUNDANCY_SIGTERM_GRACE": "0.5", "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert p.stdout.readline().strip() == "waiting"
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 143 and "handled" not in out, (p.returncode, out, err)
    assert "stopped: SIGTERM, and the command had not stopped 0.5 s later" in err  # before the SVD returned


FORK_SCRIPT = """import os, signal, time
from cnn_redundancy.cli import _SigtermStop
stop = _SigtermStop()
stop.start()
pid = os.fork()  # as a DataLoader worker is made
if pid == 0:
    os.kill(os.getpid(), signal.SIGTERM)  # as a worker is stopped
    time.sleep(1.0)
    os._exit(0)
os.waitpid(pid, 0)
for _ in range(10):  # stopped at once, as multiprocessing's terminate() may: before the child's fork hooks ran
    pid = os.fork()
    if pid == 0:
        time.sleep(1.0)
        os._exit(0)
    os.kill(pid, signal.SIGTERM)
    os.waitpid(pid, 0)
time.sleep(1.0)  # twice the grace: the parent's watcher must not have seen the children's signals
print("alive", flush=True)
stop.close()
"""


def test_a_forked_childs_sigterm_is_not_the_commands(tmp_path):
    script = tmp_path / "fork.py"
    script.write_text(FORK_SCRIPT)
    env = {**os.environ, "CNN_REDUNDANCY_SIGTERM_GRACE": "0.5"}
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=60)
    assert run.returncode == 0 and run.stdout.strip() == "alive", (run.returncode, run.stderr)


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="signal handlers need the main thread")
def test_a_bad_sigterm_grace_is_one_clear_line(capsys, monkeypatch):
    before = signal.getsignal(signal.SIGTERM), signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(before[1])
    for bad in ("inf", "nan", "", "-1", "soon"):
        monkeypatch.setenv("CNN_REDUNDANCY_SIGTERM_GRACE", bad)
        assert main(["models"]) == 2
        assert f"error: CNN_REDUNDANCY_SIGTERM_GRACE must be a number of seconds from 0 to 1e6, not {bad!r}" in capsys.readouterr().err
    after = signal.getsignal(signal.SIGTERM), signal.set_wakeup_fd(before[1])
    assert after == before  # nothing left installed


def test_an_interrupt_under_torchrun_is_said_once(lenet, tmp_path, capsys, interrupt_at, monkeypatch):
    """Ctrl-C under torchrun stops every process; the one that writes (rank 0) says so, the others say nothing."""
    import cnn_redundancy.compression.pruning as P

    interrupt_at(P, "_step", 1)
    monkeypatch.setenv("RANK", "1")
    assert main(["-q", "prune", "-c", str(lenet), "--limit", "32", "--steps", "2", "--no-eval", "-o", str(tmp_path)]) == 130
    assert capsys.readouterr().err == ""


BN_MODEL = """import torch.nn as nn
def build(in_channels=3, num_classes=2):
    return nn.Sequential(nn.Conv2d(in_channels, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes))
"""


def test_images_scaled_otherwise_than_in_training_get_one_warning(pngs, tmp_path, capsys):
    f = tmp_path / "bn_model.py"
    f.write_text(BN_MODEL)
    net = cr.get_model(f"{f}:build")
    cr.recompute_bn_stats(net, cr.load_dataset("imagefolder", "all", root=pngs, normalize="none"))  # trained on [0, 1]
    import torch

    torch.save(net.state_dict(), tmp_path / "weights.pt")
    base = ["evaluate", "-m", f"{f}:build", "-c", str(tmp_path / "weights.pt"), "--root", str(pngs), "--split", "all"]
    assert main(base) == 0  # read as (x - 0.5) / 0.5, the image folder's default
    err = capsys.readouterr().err
    warned = [ln for ln in err.splitlines() if ln.startswith("warning: ")]
    assert len(warned) == 1 and "the images reach '1' (the model's first BatchNorm) far from its training statistics" in \
        warned[0] and "(the data set's default scaling)? Give its training's --normalize" in warned[0]  # fmt: skip
    assert main([*base, "--normalize", "imagenet"]) == 0
    assert "than here (--normalize imagenet)?" in capsys.readouterr().err
    assert main([*base, "--normalize", "none"]) == 0  # as trained: nothing to say
    assert "warning" not in capsys.readouterr().err


def test_a_folder_given_as_the_dataset_is_read_as_the_root(pngs, tmp_path, capsys):
    out = tmp_path / "t"
    args = ["-q", "train", "-m", "lenet5", "--dataset", str(pngs), "--split", "all", "--image-size", "28",
            "--grayscale", "--epochs", "1", "-o", str(out)]  # fmt: skip
    assert main(args) == 0
    assert f"--dataset {pngs} is a folder: read as --root {pngs} --dataset imagefolder" in capsys.readouterr().err
    recorded = json.loads((out / "runs.json").read_text())["train"]
    assert recorded["dataset"] == "imagefolder" and recorded["root"] == str(pngs)
    assert main([*args[:-2], "--root", str(tmp_path), "-o", str(tmp_path / "u")]) == 2
    said = _error(capsys)
    assert "--dataset takes a data set's name" in said and f"{pngs} is a folder" in said
    assert f"give the files' folder once, as --root (--root is {tmp_path})" in said


@pytest.mark.parametrize("where", ["before", "after"])
def test_quiet_silences_the_bar_before_or_after_the_command(where, monkeypatch, capsys):
    from cnn_redundancy.core import progress

    monkeypatch.setattr(progress, "_enabled", True)
    args = ["evaluate", "-m", "lenet5", "--limit", "64"]
    assert main(args) == 0
    assert "evaluate:" in capsys.readouterr().err  # the bar, without --quiet
    assert main(["--quiet", *args] if where == "before" else [*args, "--quiet"]) == 0
    said = capsys.readouterr()
    assert "evaluate:" not in said.err and "accuracy" in said.out


def test_a_folder_without_split_folders_says_how_much_of_it_a_split_is(pngs, tmp_path, capsys):
    args = ["-q", "distinctiveness", "-m", "torchvision:squeezenet1_1", "--root", str(pngs), "--layers", "features.0"]
    assert main([*args, "-o", str(tmp_path / "a")]) == 0  # the test split: 5 of the 24 images, by default
    assert (f"note: {pngs} has no test/ folder: its test split is 5 of its 24 images, the same share of every class "
            "(seed 0); --split all reads every image") in capsys.readouterr().err
    assert main([*args, "--split", "all", "-o", str(tmp_path / "b")]) == 0
    assert "has no" not in capsys.readouterr().err


def test_the_analyze_bar_counts_passes_in_tenths(monkeypatch, capsys):
    """The bar of analyze counts passes of the data, a fraction: tqdm printed them with every digit."""
    from cnn_redundancy.core import progress

    monkeypatch.setattr(progress, "_enabled", True)
    with progress.progress_bar(151.9, "analyze", unit="pass") as bar:
        bar.update(135.44718444661876)
        bar.refresh()
    err = capsys.readouterr().err
    assert "135.4/151.9" in err and "135.447" not in err


def test_a_torchvision_model_without_weights_is_built_for_the_data_classes(pngs, tmp_path, capsys):
    out = tmp_path / "layers"
    args = ["-q", "distinctiveness", "-m", "torchvision:squeezenet1_1", "--root", str(pngs), "--split", "all",
            "--layers", "features.0", "-o", str(out)]  # fmt: skip
    assert main(args) == 0
    assert "built for the data: num_classes=2" in capsys.readouterr().err  # two classes in the folder, not 1,000
    assert main([*args[:-2], "--model-kw", "num_classes=5", "-o", str(tmp_path / "given")]) == 0
    assert "built for the data" not in capsys.readouterr().err  # what the user gives wins


@pytest.mark.parametrize("cmd", ["analyze", "compress", "kernel-scores"])
def test_analyze_compress_and_the_taylor_scores_read_the_output_key(cmd, pngs, tmp_path, capsys):
    """On the command line too: without --output-key one line names it; with it the command runs and records it."""
    f = tmp_path / "dict_model.py"
    f.write_text(DICT_MODEL)
    extra = {"analyze": ["--lenses", "dead", "scores"], "compress": ["--baselines", "--criterion", "taylor"],
             "kernel-scores": []}[cmd]  # fmt: skip
    base = ["-q", cmd, "-m", f"{f}:build", "--model-kw", "in_channels=3", "-d", "imagefolder", "--root", str(pngs),
            "--split", "all", *extra]  # fmt: skip
    assert main([*base, "-o", str(tmp_path / "a")]) == 2
    assert "--output-key out" in _error(capsys)
    assert main([*base, "--output-key", "out", "-o", str(tmp_path / "b")]) == 0
    written = {"analyze": "analysis.json", "compress": "compress.json", "kernel-scores": "kernel-scores.json"}[cmd]
    assert json.loads((tmp_path / "b" / written).read_text())["meta"]["params"]["output"] == "out"
