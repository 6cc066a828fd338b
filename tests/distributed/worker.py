"""Run by tests/distributed/test_distributed.py, alone or under ``torchrun``: every data-driven
analysis on tiny models, each process' results written to ``<out>/rank<r>/<name>.json``, and one
command-line run (rank 0 writes ``<out>/cli/channel-shuffle.json``).

``python worker.py OUT [fail | ALONE]``: with ``fail``, rank 1 raises in the middle of the first
analysis; given the output folder ``ALONE`` of a one-process run, the sweeps it stopped are resumed here too.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import torch

import cnn_redundancy as cr
from cnn_redundancy.analyses import distinctiveness as distinctiveness_module
from cnn_redundancy.cli import main as cli_main
from cnn_redundancy.core import sweep as core_sweep
from cnn_redundancy.core.distributed import launched, rank, world_size
from cnn_redundancy.testing import TinyCNN, random_images


def _tiny():
    torch.manual_seed(0)
    return TinyCNN().eval()


def _resnet():
    torch.manual_seed(0)
    return cr.get_model("resnet20", in_channels=1, input_size=12).eval()


class _Stream(torch.utils.data.IterableDataset):
    """An iterable data set with a length (the DataLoader's batch sampler over it never ends)."""

    def __init__(self, data) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __iter__(self):
        return iter(self.data)


def _failing_on_rank_1(model: torch.nn.Module) -> None:
    calls = {"n": 0}

    def hook(mod, args):
        calls["n"] += 1
        if rank() == 1 and calls["n"] == 2:
            raise RuntimeError("rank 1 failed on purpose")

    model.conv1.register_forward_pre_hook(hook)


def analyses(data) -> dict:
    """Every analysis that reads data, sharded by batches and (sweeps) by units."""
    kw = {"batch_size": 8, "progress": False}
    return {
        "channel-shuffle": cr.channel_shuffle(_tiny(), data, repeats=2, **kw),
        "channel-shuffle-units": cr.channel_shuffle(_tiny(), data, repeats=2, shard="units", **kw),
        # an iterable data set with a length: every process reads the stream and measures its share
        "channel-shuffle-iterable": cr.channel_shuffle(_tiny(), torch.utils.data.DataLoader(_Stream(data), batch_size=8),
                                                       progress=False),  # fmt: skip
        # a DataLoader that shuffles with a seeded generator: the same order for one process as for two
        "channel-shuffle-seeded-loader": cr.channel_shuffle(_tiny(), torch.utils.data.DataLoader(
            data, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(0)), progress=False),
        "pixel-shuffle": cr.pixel_shuffle(_tiny(), data, metric=None, **kw),
        "distinctiveness": cr.distinctiveness(_tiny(), data, center="mean", **kw),
        "zero-ablation": cr.zero_ablation(_resnet(), data, **kw),
        "zero-ablation-units": cr.zero_ablation(_resnet(), data, scope="block", shard="units", **kw),
        "strongest-activations": cr.strongest_activation_labels(_tiny(), data, feature_maps=2, top=3, **kw),
        "dead-kernels": cr.dead_kernels(_tiny(), data, **kw),
        "kernel-scores": cr.kernel_scores(_tiny(), data, **kw),
        "cka": cr.cka(_tiny(), data, **kw),
        "analyze": cr.analyze(_tiny(), data, **kw),
        "compress": cr.compress(_tiny(), data, target_macs=0.7, max_drop=None, finetune_epochs=1,
                                baselines=("l1", "random"), batch_size=8, progress=False),
    }


def interrupted(data, path: Path) -> None:
    """A channel shuffle stopped at the third channel of its first batch, on every process at once (as
    Ctrl-C under torchrun stops them all): rank 0 keeps a partial result of the two channels measured."""
    model, calls = _tiny(), []

    def stop(*_):  # the head's call for the third channel: the clean pass, then one call per channel
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt

    handle = model.fc.register_forward_hook(stop)
    try:
        cr.channel_shuffle(model, data, "conv2", batch_size=8, partial=path, progress=False)
    except KeyboardInterrupt:
        pass
    finally:
        handle.remove()


RESUMABLE = {  # the sweeps of ``analyses`` that are stopped and resumed
    "channel-shuffle": lambda data, **kw: cr.channel_shuffle(_tiny(), data, repeats=2, batch_size=8, progress=False, **kw),
    "channel-shuffle-units": lambda data, **kw: cr.channel_shuffle(_tiny(), data, repeats=2, shard="units", batch_size=8,
                                                                   progress=False, **kw),  # fmt: skip
    "zero-ablation": lambda data, **kw: cr.zero_ablation(_resnet(), data, batch_size=8, progress=False, **kw),
}


def stopped(data, folder: Path) -> None:
    """The resumable sweeps stopped at their second round of batches, on every process at once: each leaves
    its state at the last whole batch in ``folder`` (1 batch with one process; with two, the first round's 2
    batches, or the first batch alone where each batch is a round, ``shard="units"``)."""
    measure = core_sweep._Run.measure

    def stopping(self, b, dev, tick):
        if b.index // world_size() == 1:
            raise KeyboardInterrupt
        return measure(self, b, dev, tick)

    core_sweep._Run.measure = stopping
    try:
        for name, run in RESUMABLE.items():
            try:
                run(data, partial=folder / f"{name}.json")
            except KeyboardInterrupt:
                pass
    finally:
        core_sweep._Run.measure = measure


def resumed(data, folder: Path, mine: Path, prefix: str) -> None:
    """The sweeps stopped in ``folder`` continued with ``resume=True``; results to ``mine/<prefix><name>.json``,
    and how many batches each state held."""
    held = {}
    for name, run in RESUMABLE.items():
        held[name] = torch.load(folder / f"{name}.state.pt", weights_only=True)["batches"]
        res = run(data, partial=folder / f"{name}.json", resume=True)
        res.meta.pop("seconds", None)
        res.save(mine / f"{prefix}{name}.json")
    (mine / f"{prefix}held.json").write_text(json.dumps(held))


def batch_loop(data) -> dict:
    """:class:`BatchLoop` itself: a body that reuses one buffer for every batch's contribution, with the
    exchange held for several rounds, with room for one round's bytes only and with no time to hold any;
    and how many exchanges each made."""
    from cnn_redundancy.core import batches as core_batches
    from cnn_redundancy.core.batches import BatchLoop, as_loader

    gather, count = core_batches.all_gather_tree, {"n": 0}

    def counted(*args, **kwargs):
        count["n"] += 1
        return gather(*args, **kwargs)

    core_batches.all_gather_tree = counted
    out = {}
    try:
        for label, room, seconds in (("held", BatchLoop.exchange_bytes, 60.0), ("one round", 1, 60.0),
                                     ("no time", BatchLoop.exchange_bytes, 0.0)):
            seen, buf, count["n"] = [], torch.zeros(2), 0
            loop = BatchLoop(as_loader(data, 8), torch.device("cpu"), lambda c, seen=seen: seen.append([c["i"], *c["sum"].tolist()]))
            loop.exchange_bytes, loop.exchange_seconds = room, seconds
            for b in loop:
                buf.copy_(torch.stack([b.x.sum(), b.x.abs().max()]))  # the same buffer every batch
                loop.add({"i": b.index, "sum": buf})
            out[label] = {"applied": seen, "exchanges": count["n"]}
    finally:
        core_batches.all_gather_tree = gather
    return out


def main() -> int:
    out, fail = Path(sys.argv[1]), len(sys.argv) > 2 and sys.argv[2] == "fail"
    alone = Path(sys.argv[2]) if len(sys.argv) > 2 and not fail else None
    torch.set_num_threads(1)
    distinctiveness_module.CHUNK_ROWS = 12  # the Gram matrices take chunks of 2 batches, across the ranks
    data = random_images(40, (1, 12, 12), seed=3)  # 5 batches of 8: 3 on rank 0, 2 on rank 1
    with launched("cpu"):
        if fail:
            model = _tiny()
            _failing_on_rank_1(model)
            cr.distinctiveness(model, data, batch_size=8, progress=False)
            return 0
        mine = out / f"rank{rank()}"
        mine.mkdir(parents=True, exist_ok=True)
        for name, res in analyses(data).items():
            res.meta.pop("seconds", None)  # measured times are not results
            res.meta.pop("latency_ms", None)
            res.save(mine / f"{name}.json")
        interrupted(data, out / "interrupted.json")
        stopped(data, out / "stopped")
        torch.distributed.barrier() if world_size() > 1 else None
        if rank() == 0:  # kept for a run with another number of processes to resume
            shutil.copytree(out / "stopped", out / "stopped-kept")
        torch.distributed.barrier() if world_size() > 1 else None
        resumed(data, out / "stopped", mine, "resumed-")
        if alone is not None:
            if rank() == 0:
                shutil.copytree(alone / "stopped-kept", out / "from-alone")
            torch.distributed.barrier() if world_size() > 1 else None
            resumed(data, out / "from-alone", mine, "resumed-from-one-process-")
        loop = batch_loop(data)
        (mine / "batch-loop.json").write_text(json.dumps({k: v["applied"] for k, v in loop.items()}))
        (mine / "exchanges.txt").write_text(json.dumps({k: v["exchanges"] for k, v in loop.items()}))
        torch.manual_seed(0)
        accuracy = cr.evaluate(_tiny(), data, batch_size=8, progress=False)
        (mine / "evaluate.json").write_text(json.dumps({"accuracy": accuracy, "world_size": world_size()}))
        ckpt = out / "lenet5.pt"
        if rank() == 0:
            torch.manual_seed(0)
            cr.save_checkpoint(cr.get_model("lenet5"), ckpt)
        torch.distributed.barrier() if world_size() > 1 else None
        return cli_main(["-q", "channel-shuffle", "-c", str(ckpt), "--limit", "40", "--batch-size", "8",
                         "--device", "cpu", "--out", str(out / "cli")])


if __name__ == "__main__":
    sys.exit(main())
