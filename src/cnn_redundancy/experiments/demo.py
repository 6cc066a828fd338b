"""The main job (``make demo``): the tour a new user sees first.

1. Train LeNet-5 and LeNet-5x10 on the bundled MNIST (cached) and run the impulse-response paper's
   comparison of the two (:mod:`.impulse`).
2. ``analyze`` LeNet-5x10: every lens, the answer, the removable-MACs estimate on held-out images.
3. ``compress`` it to at most half its MACs within one accuracy point on validation data, verified on
   the test split beside Torch-Pruning's pruners; save the smaller model.
4. One report, ``<out>/report.html``, whose first screen says what was found and what was removed.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from ..checkpoint import load_checkpoint, save_checkpoint
from ..compression.compress import compress
from ..data import load_dataset, subset
from ..report import Figure, Section, Table, save_figure, write_report
from ..survey import analyze
from . import impulse

__all__ = ["run_demo"]


def _log(msg: str, quiet: bool) -> None:
    if not quiet:
        print(msg, flush=True)


def run_demo(out: str | os.PathLike = "runs/demo", *, epochs: int = 4, repeats: int = 2, limit: int | None = None,
             seed: int = 0, device=None, quiet: bool = False) -> Path:  # fmt: skip
    """The tour (see the module docstring); returns the report's path."""
    t0 = time.perf_counter()
    out = Path(out)
    impulse.run(out, epochs=epochs, repeats=repeats, limit=limit, seed=seed, device=device, quiet=quiet)
    model = load_checkpoint(out / "checkpoints" / "lenet5x10.pt")
    train = subset(load_dataset("mnist5k", "train"), limit, seed=seed)
    test = subset(load_dataset("mnist5k", "test"), limit, seed=seed)
    _log("LeNet-5x10: analyze (every lens)", quiet)
    found = analyze(model, test, seed=seed, device=device)
    found.save_report(out)
    _log("LeNet-5x10: compress to at most half its MACs within 1 point on held-out data", quiet)
    small = compress(model, train, test=test, target_macs=0.5, max_drop=0.01, seed=seed, device=device)
    small.save(out / "compress.json")
    save_checkpoint(small.model, out / "lenet5x10-compressed.pt", extra={"compress": small.final})
    save_figure(small.plot(), out / "compress.png")
    sections = [_summary(found, small, time.perf_counter() - t0, out), _compress_section(small)]
    path = write_report(out, sections, title="cnn-redundancy: the demo")
    for line in sections[0].findings:
        _log(line, quiet)
    _log(f"report: {path} ({time.perf_counter() - t0:.0f} s)", quiet)
    return path


def _summary(found, small, seconds: float, out: Path) -> Section:
    a, g = found.answer, small.guarantee
    removed = [f"{s['stage']}: {s['note']}" for s in small.stages if s.get("kernels") or s["stage"] == "channels"]
    findings = [
        f"Found: {a['dead']} of {a['kernels']} kernels of LeNet-5x10 are dead (zero on every test image); "
        f"{a['near_duplicate_impulse']} live kernels have a near-copy by impulse response, "
        f"{a['near_duplicate_activations']} by activations; the lenses estimate "
        f"{100 * a['removable']['fraction']:.0f}% of the MACs removable within 1 point.",
        f"Removed: MACs {small.original['macs'] / 1e6:.1f} M -> {small.final['macs'] / 1e6:.1f} M "
        f"({100 * small.final['macs_fraction']:.0f}% left), parameters {small.original['params']:,} -> "
        f"{small.final['params']:,}; " + "; ".join(removed) + ".",
        f"Verified: test accuracy {small.original['test']:.4f} -> {small.final['test']:.4f} (drop {g['test_drop']:+.4f}; "
        f"the budget was 0.01 on validation images, where it dropped {g['val_drop']:+.4f}); "
        f"the smaller model is {out / 'lenet5x10-compressed.pt'}.",
        f"The whole tour took {seconds:.0f} s.",
    ]  # fmt: skip
    return Section("demo", "The answer: what is redundant in LeNet-5x10, and what was removed", order=-1,
                   intro="LeNet-5 and LeNet-5x10 trained on the bundled MNIST subset; LeNet-5x10 analysed by every "
                   "lens, then compressed. Details follow: the analysis, the compression, each lens, and the "
                   "impulse-response paper's comparison of the two networks.", findings=findings)  # fmt: skip


def _compress_section(small) -> Section:
    lat = "median time of a batch of 64 on this machine's CPU, a timing"
    return Section("compress", "Compression of LeNet-5x10, verified on the test split", order=1,
                   intro=f"Data: {small.data['how']}.", findings=small.headline(),
                   tables=[Table(f"Every method at the same MACs (test split; latency: {lat})",
                                 ["method", "params", "MACs", "% MACs", "test accuracy", "latency ms"], small.table())],
                   figures=[Figure("compress.png", "Test accuracy against MACs as each method pruned.")])  # fmt: skip
