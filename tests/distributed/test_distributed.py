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


def _first_difference(a, b, path: str = "") -> str | None:
    """Where two JSON trees first differ (``None`` when equal): a failure then names the field, not two whole results."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            if k not in a or k not in b:
                return f"{path}/{k}: only in {'the first' if k in a else 'the second'}"
            found = _first_difference(a[k], b[k], f"{path}/{k}")
            if found:
                return found
        return None
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return f"{path}: {len(a)} against {len(b)} items"
        return next((d for i, (x, y) in enumerate(zip(a, b)) if (d := _first_difference(x, y, f"{path}[{i}]"))), None)
    return None if a == b else f"{path}: {a!r} against {b!r}"


def test_first_difference_names_the_field():
    assert _first_difference({"a": [1, {"b": 2.0}]}, {"a": [1, {"b": 2.0}]}) is None
    assert _first_difference({"a": [1, {"b": 2.0}]}, {"a": [1, {"b": 2.5}]}) == "/a[1]/b: 2.0 against 2.5"
    assert _first_difference({"a": 1}, {"a": 1, "c": 0}) == "/c: only in the second"


def _runs(tmp_path: Path) -> tuple[Path, Path]:
    one, two = tmp_path / "one", tmp_path / "two"
    single = subprocess.run([sys.executable, str(WORKER), str(one)], capture_output=True, text=True, timeout=TIMEOUT,
                            env=_env())  # fmt: skip
    assert single.returncode == 0, single.stderr[-3000:]
    pair = _torchrun(2, str(two), str(one))
    assert pair.returncode == 0, pair.stderr[-3000:]
    return one, two


def test_same_json_for_one_and_two_processes(tmp_path):
    one, two = _runs(tmp_path)
    names = sorted(p.name for p in (one / "rank0").glob("*.json") if not p.name.startswith("resumed-"))
    assert names == ["analyze.json", "batch-loop.json", "channel-shuffle-iterable.json", "channel-shuffle-seeded-loader.json",
                     "channel-shuffle-units.json",
                     "channel-shuffle.json", "cka.json", "compress.json",
                     "dead-kernels.json", "distinctiveness.json", "evaluate.json", "kernel-scores.json",
                     "pixel-shuffle.json", "strongest-activations.json", "zero-ablation-units.json",
                     "zero-ablation.json"]  # fmt: skip
    for name in names:
        alone = _comparable(one / "rank0" / name)
        for r in ("rank0", "rank1"):
            got = _comparable(two / r / name)
            assert got == alone, f"{name} on {r} of 2 differs from 1 process at {_first_difference(got, alone)}"
    assert json.loads((two / "rank1" / "distinctiveness.json").read_text())["meta"]["world_size"] == 2
    assert json.loads((one / "rank0" / "distinctiveness.json").read_text())["meta"]["world_size"] == 1
    # every batch applied once, in order, with its own values although the body reused its buffer
    applied = json.loads((one / "rank0" / "batch-loop.json").read_text())
    assert [a[0] for a in applied["held"]] == [0, 1, 2, 3, 4] and len({a[1] for a in applied["held"]}) == 5
    assert applied["held"] == applied["one round"] == applied["no time"]
    # 3 rounds: the first exchanged alone, the other two held and exchanged together at the end; with
    # room for one round's contributions only, or no time to hold one, one exchange per round (none
    # with one process)
    assert json.loads((two / "rank1" / "exchanges.txt").read_text()) == {"held": 2, "one round": 3, "no time": 3}
    assert json.loads((one / "rank0" / "exchanges.txt").read_text()) == {"held": 0, "one round": 0, "no time": 0}
    # stopped within the first batch, on every process: rank 0 kept the channels measured so far, as one process does
    kept, kept_alone = _comparable(two / "interrupted.json"), _comparable(one / "interrupted.json")
    assert kept == kept_alone, _first_difference(kept, kept_alone)
    assert kept["meta"]["complete"] is False and kept["samples"] == 8
    assert [None not in row for row in kept["cosine"]["conv2"]] == [True, True, False, False]  # null: not measured
    # sweeps stopped at their second round and resumed: the uninterrupted run's JSON, for a state left by
    # one process and resumed by one or two, and one left by two processes and resumed by two
    for name in ("channel-shuffle", "channel-shuffle-units", "zero-ablation"):
        whole = _comparable(one / "rank0" / f"{name}.json")
        for got in (one / "rank0" / f"resumed-{name}.json", two / "rank0" / f"resumed-{name}.json",
                    two / "rank1" / f"resumed-{name}.json", two / "rank0" / f"resumed-from-one-process-{name}.json"):
            assert _comparable(got) == whole, f"{got} differs at {_first_difference(_comparable(got), whole)}"
        assert not (one / "stopped" / f"{name}.state.pt").exists()  # removed once complete
    # the batches each state held: with two processes the first round (2 batches; 1 where each process
    # measures every batch for its share of the units)
    alone = {"channel-shuffle": 1, "channel-shuffle-units": 1, "zero-ablation": 1}
    assert json.loads((one / "rank0" / "resumed-held.json").read_text()) == alone
    assert json.loads((two / "rank0" / "resumed-held.json").read_text()) == {**alone, "channel-shuffle": 2, "zero-ablation": 2}
    assert json.loads((two / "rank0" / "resumed-from-one-process-held.json").read_text()) == alone
    # sharding the units gives the answer of sharding the batches
    by_units, by_batches = _comparable(two / "rank0" / "channel-shuffle-units.json"), _comparable(one / "rank0" / "channel-shuffle.json")
    assert by_units == by_batches, _first_difference(by_units, by_batches)
    # the command line under torchrun: the same file, and rank 0 writes (one test for the one pair of runs:
    # split over two, pytest-xdist's workers would each launch both runs, side by side on CI's two cores)
    assert _comparable(two / "cli" / "channel-shuffle.json") == _comparable(one / "cli" / "channel-shuffle.json")
    assert (two / "cli" / "channel-shuffle.png").stat().st_size > 0
    assert not list((two / "rank1").glob("*.png"))


def test_a_failing_process_stops_every_process(tmp_path):
    run = _torchrun(2, str(tmp_path), "fail")  # rank 1 raises half way through distinctiveness
    assert run.returncode != 0
    assert "rank 1 failed on purpose" in run.stdout + run.stderr
