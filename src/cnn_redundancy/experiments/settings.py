"""What the reproductions share for ``--paper-settings``: the preset, the settings table and the
"paper's figure | ours | holds?" table (also written as Markdown for the docs pages)."""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from ..core.registry import option
from ..core.results import atomic_write
from ..models import get_model
from ..report import Table
from ..training import fit

__all__ = ["PAPER_OPTION", "preset", "settings_table", "comparison_table", "write_markdown", "holds", "cached_fit"]

#: the ``--paper-settings`` flag every reproduction takes
PAPER_OPTION = option("paper_settings", "the paper's own settings (options given beside it still apply)")

COMPARISON_COLUMNS = ["claim (where in the paper)", "paper's figure", "ours", "holds?"]


def preset(fn: Callable[..., Any], given: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """``values`` for every option of ``fn`` the caller left at its default; the caller's value otherwise.

    Example:
        >>> def run(*, epochs=4, lr=1e-3): ...
        >>> preset(run, {"epochs": 4, "lr": 0.1}, {"epochs": 20, "lr": 1e-2})
        {'epochs': 20, 'lr': 0.1}
    """
    params = inspect.signature(fn).parameters
    return {k: v if given[k] == params[k].default else given[k] for k, v in values.items()}


def holds(ok: bool | None, partly: bool = False) -> str:
    """The verdict cell: ``yes``, ``partly``, ``no`` or ``n/a``."""
    return "n/a" if ok is None else "yes" if ok else "partly" if partly else "no"


def cpu_kernels() -> str:
    """torch's version and the CPU instruction set its kernels dispatch to, e.g. ``"torch 2.14.1, AVX512"``."""
    return f"torch {torch.__version__}, {torch.backends.cpu.get_cpu_capability()}"


def settings_table(settings: dict[str, Any], title: str = "Settings run") -> Table:
    """A two-column table of the settings actually run, with the CPU threads and the CPU kernels torch used:
    on a CPU the same seed trains the same network only with the same number of threads and the same
    kernels (torch's version and the instruction set it dispatches to, AVX2 or AVX512): either changes
    the order and width of the float sums."""
    rows = {**settings, "torch CPU threads": torch.get_num_threads(), "torch CPU kernels": cpu_kernels()}
    return Table(title, ["setting", "value"], [[k, _cell(v)] for k, v in rows.items()])


def comparison_table(rows: list[list[Any]], title: str = "The paper's figures beside ours", note: str = "") -> Table:
    """The "paper's figure | ours | holds?" table; each row ``[claim, paper, ours, verdict]``."""
    if any(len(r) != len(COMPARISON_COLUMNS) for r in rows):
        raise ValueError(f"each row needs {len(COMPARISON_COLUMNS)} cells: {', '.join(COMPARISON_COLUMNS)}")
    return Table(title, list(COMPARISON_COLUMNS), [[_cell(c) for c in r] for r in rows], note=note)


def write_markdown(path: str | Path, tables: list[Table], lines: list[str] = ()) -> Path:
    """The tables as Markdown (for the docs pages), after ``lines`` of text."""
    out = [*lines, ""] if lines else []
    for t in tables:
        out += [f"**{t.title}**", "", "| " + " | ".join(t.columns) + " |", "|" + "---|" * len(t.columns)]
        out += ["| " + " | ".join(_cell(c).replace("|", "\\|") for c in r) + " |" for r in t.rows]
        out += [f"\n{t.note}" if t.note else "", ""]
    return atomic_write(path, "\n".join(out))


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list | tuple):
        return ", ".join(map(_cell, v))
    return str(v)


def cached_fit(name: str, kw: dict[str, Any], ckpt: str | os.PathLike, train, *, epochs: int, seed: int,
               log: Callable[[str], None] | None = None, val=None, patience: int | None = None, **fit_kw: Any):  # fmt: skip
    """``get_model(name, **kw)`` trained by :func:`fit` (seeded), or the checkpoint ``ckpt`` when it was saved
    by the same settings. With ``patience``, early stopping on ``val``; the checkpoint's ``extra`` (also
    ``model.cnn_redundancy_extra``) records the settings and, then, the epochs run and the best one."""
    ckpt, say = Path(ckpt), log or (lambda msg: None)
    settings = {"model": [name, kw], "epochs": epochs, "seed": seed, "train_size": len(train),
                **{k: v for k, v in fit_kw.items() if k not in ("device", "progress")}}  # fmt: skip
    if patience is not None:
        settings.update(patience=patience, val_size=len(val))
    if ckpt.exists():
        try:
            model = load_checkpoint(ckpt)
            extra = getattr(model, "cnn_redundancy_extra", {})
            if all(extra.get(k) == v for k, v in settings.items()) and ("patience" in extra) == (patience is not None):
                say(f"using cached checkpoint {ckpt}")
                return model
        except CheckpointError as e:
            say(f"cached checkpoint unusable ({e}); retraining")
    stop = f", early stopping (patience {patience}) on {len(val)} validation images" if patience is not None else ""
    say(f"training {epochs} epochs on {len(train)} images{stop}")
    torch.manual_seed(seed)
    model = get_model(name, **kw)
    hist = fit(model, train, epochs=epochs, seed=seed, val=val, patience=patience, **fit_kw)
    if patience is not None:
        settings.update(epochs_run=len(hist["loss"]), best_epoch=hist["best_epoch"] + 1, best_val=max(hist["val_metric"]))
    save_checkpoint(model, ckpt, extra=settings)
    object.__setattr__(model, "cnn_redundancy_extra", settings)
    return model
