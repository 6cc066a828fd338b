"""The HTML report: every analysis adds a *section* (text, tables, figures) that the report collects.

A section is saved as ``<out>/sections/<key>.json`` next to its figures, so that runs made at
different times (``demo``, ``reproduce ...``) can be combined by ``cnn-redundancy report <out>``.

Example:
    >>> s = Section("example", "An example", intro="Text.", findings=["It works."])
    >>> s.tables.append(Table("Numbers", ["a", "b"], [[1, 2]]))
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from ..core.results import atomic_write, to_json, to_plain, versions

__all__ = ["Section", "Table", "Figure", "save_figure", "write_report", "load_sections"]


@dataclasses.dataclass
class Table:
    """A table: ``title``, ``columns``, ``rows`` (lists of cells), an optional ``note``, and optional
    background ``colors`` (a CSS color or ``None`` per cell, same shape as ``rows``)."""

    title: str
    columns: list[str]
    rows: list[list[Any]]
    note: str = ""
    colors: list[list[str | None]] | None = None


@dataclasses.dataclass
class Figure:
    """A figure file (path relative to the report's folder) and its caption."""

    path: str
    caption: str


@dataclasses.dataclass
class Section:
    """One report section. ``order`` sorts sections (smaller first); ``key`` names its file."""

    key: str
    title: str
    intro: str = ""
    findings: list[str] = dataclasses.field(default_factory=list)
    tables: list[Table] = dataclasses.field(default_factory=list)
    figures: list[Figure] = dataclasses.field(default_factory=list)
    order: int = 50

    def save(self, out_dir: str | os.PathLike) -> Path:
        path = Path(out_dir) / "sections" / f"{self.key}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        return atomic_write(path, to_json(to_plain(dataclasses.asdict(self))))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Section:
        d = dict(d)
        d["tables"] = [Table(**t) for t in d.get("tables", [])]
        d["figures"] = [Figure(**f) for f in d.get("figures", [])]
        return cls(**d)


def save_figure(fig, path: str | os.PathLike, *, dpi: int = 110) -> Path:
    """Save a matplotlib figure as PNG and close it."""
    import matplotlib.pyplot as plt

    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight"))
    finally:
        plt.close(fig)


def load_sections(out_dir: str | os.PathLike) -> list[Section]:
    """Every section saved under ``out_dir/sections``."""
    folder = Path(out_dir) / "sections"
    if not folder.is_dir():
        return []
    return [Section.from_dict(json.loads(p.read_text())) for p in sorted(folder.glob("*.json"))]


def _cell(v: Any) -> str:
    """A table cell's text (the template escapes it, once)."""
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def write_report(
    out_dir: str | os.PathLike,
    sections: list[Section] | None = None,
    *,
    title: str = "cnn-redundancy report",
) -> Path:
    """Render ``out_dir/report.html`` from the given sections plus those saved under ``out_dir``."""
    from jinja2 import Environment, PackageLoader, select_autoescape

    out_dir = Path(out_dir)
    by_key = {s.key: s for s in load_sections(out_dir)}
    for s in sections or []:
        s.save(out_dir)
        by_key[s.key] = s
    ordered = sorted(by_key.values(), key=lambda s: (s.order, s.key))
    env = Environment(loader=PackageLoader("cnn_redundancy", "report/templates"), autoescape=select_autoescape(["html", "j2"]))
    env.filters["cell"] = _cell
    page = env.get_template("report.html.j2").render(title=title, sections=ordered, versions=versions())
    path = out_dir / "report.html"
    return atomic_write(path, page)
