"""Progress bars (with an ETA) for long work; silenced with ``--quiet`` or ``CNN_REDUNDANCY_QUIET=1``."""

from __future__ import annotations

import os

from tqdm.auto import tqdm

__all__ = ["set_progress", "progress_enabled", "progress_bar"]

_enabled = os.environ.get("CNN_REDUNDANCY_QUIET", "").lower() not in ("1", "true", "yes")


def set_progress(enabled: bool) -> None:
    """Turn progress bars on or off for the whole process."""
    global _enabled
    _enabled = bool(enabled)


def progress_enabled(override: bool | None = None) -> bool:
    """Whether to show a bar: ``override`` when given, else the process-wide setting."""
    return _enabled if override is None else bool(override)


FRACTIONAL = "{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total:.1f} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"


def progress_bar(total: float | None, desc: str, *, enabled: bool | None = None, unit: str = "it") -> tqdm:
    """A tqdm bar with an ETA, disabled when progress is off; a fractional ``total`` (passes of the data)
    counts in tenths."""
    fmt = FRACTIONAL if isinstance(total, float) else None
    return tqdm(total=total, desc=desc, unit=unit, disable=not progress_enabled(enabled), leave=False, dynamic_ncols=True,
                bar_format=fmt)
