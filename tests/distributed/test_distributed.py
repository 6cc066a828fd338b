"""The promise of issue 14: the same JSON for any world size, and a failing process stops them all.

``worker.py`` runs every data-driven analysis (channel and pixel shuffle, distinctiveness,
zero-ablation, strongest-activation labels, dead kernels, kernel scores, CKA, ``analyze``, evaluate;
the sweeps also with ``shard="units"``) and one command-line run, once as a plain process and once under ``torchrun --standalone
--nproc-per-node 2`` (gloo on CPU, localhost only). The results may differ only in
``meta["world_size"]`` and ``meta["shard"]``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

WORKER = Path(__file__).with_name("worker.py")
TIMEOUT = 240


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "CNN_REDUNDANCY_QUIET": "1", "MASTER_ADDR": "127.0.0.1"}


def _torchrun(n: int, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(n), str(WORKER), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, env=_env())


def _comparable(path: Path) -> dict:
    d = json.loads(path.read_text())
    for meta in (d.get("meta", {}), d):
        meta.pop("world_size", None)
        meta.pop("shard", None)
    return d


def _runs(tmp_path: Path) -> tuple[Path, Path]:
    one, two = tmp_path / "one", tmp_path / "two"
    single = subprocess.run([sys.executable, str(WORKER), str(one)], capture_output=True, text=True, timeout=TIMEOUT,
                            env=_env())  # fmt: skip
    assert single.returncode == 0, single.stderr[-3000:]
    pair = _torchrun(2, str(two))
    assert pair.returncode == 0, pair.stderr[-3000:]
    return one, two


def test_same_json_for_one_and_two_processes(tmp_path):
    one, two = _runs(tmp_path)
    names = sorted(p.name for p in (one / "rank0").glob("*.json"))
    assert names == ["analyze.json", "channel-shuffle-units.json", "channel-shuffle.json", "cka.json", "compress.json",
                     "dead-kernels.json", "distinctiveness.json", "evaluate.json", "kernel-scores.json",
                     "pixel-shuffle.json", "strongest-activations.json", "zero-ablation-units.json",
                     "zero-ablation.json"]  # fmt: skip
    for name in names:
        alone = _comparable(one / "rank0" / name)
        assert _comparable(two / "rank0" / name) == alone, name
        assert _comparable(two / "rank1" / name) == alone, f"{name} differs on rank 1"
    assert json.loads((two / "rank1" / "distinctiveness.json").read_text())["meta"]["world_size"] == 2
    assert json.loads((one / "rank0" / "distinctiveness.json").read_text())["meta"]["world_size"] == 1
    # sharding the units gives the answer of sharding the batches
    by_units = _comparable(two / "rank0" / "channel-shuffle-units.json")
    assert by_units == _comparable(one / "rank0" / "channel-shuffle.json")
    # the command line under torchrun: the same file, and rank 0 writes (one test for the one pair of runs:
    # split over two, pytest-xdist's workers would each launch both runs, side by side on CI's two cores)
    assert _comparable(two / "cli" / "channel-shuffle.json") == _comparable(one / "cli" / "channel-shuffle.json")
    assert (two / "cli" / "channel-shuffle.png").stat().st_size > 0
    assert not list((two / "rank1").glob("*.png"))


def test_a_failing_process_stops_every_process(tmp_path):
    run = _torchrun(2, str(tmp_path), "fail")  # rank 1 raises half way through distinctiveness
    assert run.returncode != 0
    assert "rank 1 failed on purpose" in run.stdout + run.stderr
