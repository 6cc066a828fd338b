"""Results: dataclasses of plain data that save to JSON, load back exactly, and plot.

Every analysis returns a subclass of :class:`Result`. Fields hold plain Python data (dicts keyed
by layer name, lists, floats) or, for large matrices, float64 tensors (written as nested lists,
read back as tensors), so ``Result.load(path)`` gives back an equal object. ``meta`` holds
the method, its parameters, the seed and the package versions, and (only there) timings, under the
keys of :data:`TIMINGS` (``seconds``, ``latency_ms``): the same seed gives the same JSON outside
them, and the same bytes where nothing was timed; ``==`` compares results without them.

The files are strict JSON (any parser reads them): a non-finite number (NaN, an infinity) is written
as ``null`` and read back as NaN wherever the field's type says a number is expected. Writes are
atomic: a unique temporary file in the same folder, then ``os.replace``. Files are indented, one
value per line, up to :data:`INDENT_UP_TO` bytes of compact JSON, and compact beyond.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import tempfile
import time
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

__all__ = ["Result", "Partials", "PARTIAL_EVERY", "TIMINGS", "INDENT_UP_TO", "atomic_write", "make_meta", "to_json", "to_plain",
           "versions"]

PARTIAL_EVERY = 30.0  # seconds of work between two writes of a partial result
#: the keys of ``meta`` that hold measured times (they differ from run to run)
TIMINGS = ("seconds", "latency_ms")

_TYPES: dict[str, type[Result]] = {}


def versions() -> dict[str, str]:
    """Versions of the packages that decide a result's numbers."""
    import torch

    try:
        from importlib.metadata import version

        own = version("cnn-redundancy")
    except Exception:  # running from a source tree without installation
        own = "unknown"
    out = {"cnn_redundancy": own, "torch": torch.__version__.split("+")[0], "python": platform.python_version()}
    try:
        import torchvision

        out["torchvision"] = torchvision.__version__.split("+")[0]
    except ImportError:
        pass
    return out


def make_meta(method: str, params: dict[str, Any], seed: int | None = None) -> dict[str, Any]:
    """Metadata stored with every result; ``world_size`` is the number of processes that computed it
    (the only entry, with run times, that differs between runs over 1 and N processes)."""
    from .distributed import world_size

    return {"method": method, "params": to_plain(params), "seed": seed, "versions": versions(), "complete": True,
            "world_size": world_size()}  # fmt: skip


def atomic_write(path: str | os.PathLike, data: str | bytes | Callable[[str], Any]) -> Path:
    """Write ``data`` to ``path`` atomically: a unique temporary file in the same folder, then ``os.replace``.

    ``data`` is text, bytes, or a function writing the temporary file given its path (e.g. ``torch.save``).
    Two processes writing the same path never see each other's half-written file; readers see the
    old or the new content, never a mix.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb" if isinstance(data, bytes) else "w") as f:
            if isinstance(data, str | bytes):
                f.write(data)
        if callable(data):
            data(tmp)
        os.replace(tmp, path)
    except BaseException:
        with _suppress():
            os.unlink(tmp)
        raise
    return path


class _suppress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return True


def _restore_nan(value: Any, hint: Any) -> Any:
    """``null`` back to NaN where ``hint`` (a field's type) expects a float; nested lists back to a
    float64 tensor where it expects a tensor."""
    if hint is float:
        return math.nan if value is None else value
    if isinstance(hint, type) and hint.__module__.startswith("torch") and hint.__name__ == "Tensor":
        import numpy as np
        import torch

        return torch.from_numpy(np.array(value, dtype=np.float64))  # null -> NaN, in one pass
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        rest = [a for a in args if a is not type(None)]
        return _restore_nan(value, rest[0]) if len(rest) == 1 else value
    if origin is list and isinstance(value, list) and args:
        return [_restore_nan(v, args[0]) for v in value]
    if origin is dict and isinstance(value, dict) and len(args) == 2:
        return {k: _restore_nan(v, args[1]) for k, v in value.items()}
    return value


def to_plain(x: Any) -> Any:
    """Convert tensors, numpy arrays and scalars, tuples and paths into JSON-able Python data
    (non-finite floats become ``None``)."""
    try:
        import numpy as np
    except ImportError:  # pragma: no cover
        np = None
    import torch

    if isinstance(x, torch.Tensor):
        return _tensor_plain(x.detach().cpu())
    if np is not None and isinstance(x, np.ndarray):
        return to_plain(x.tolist())
    if np is not None and isinstance(x, np.generic):
        return x.item()
    if isinstance(x, dict):
        return {str(k): to_plain(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [to_plain(v) for v in x]
    if isinstance(x, Path):
        return str(x)
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, str) and type(x) is not str:
        return getattr(x, "label", str.__str__(x))  # an observation point as results name it ("relu(bn1)")
    if x is None or isinstance(x, bool | int | float | str):
        return x
    if isinstance(x, type):
        return x.__name__
    return repr(x)


def _tensor_plain(t):
    """Nested lists of ``t``'s numbers, ``None`` for a non-finite one: a finite (or integer) tensor in
    one ``tolist``, the element-wise walk only into the rows that hold a NaN or an infinity."""
    import torch

    if not (t.is_floating_point() or t.is_complex()) or bool(torch.isfinite(t).all()):
        return t.tolist()
    if t.dim() == 0:
        return None
    if t.dim() > 1:
        return [_tensor_plain(row) for row in t]
    out = t.tolist()
    for i in torch.nonzero(~torch.isfinite(t)).flatten().tolist():
        out[i] = None
    return out


#: a result whose compact JSON is longer than this is written compact (one line): indenting it would
#: take the pure-Python encoder minutes and double the file (resnet50's angles: 28 M numbers)
INDENT_UP_TO = 8 * 2**20


def to_json(d: Any) -> str:
    """Strict JSON of plain data: indented (one value per line) where small, compact where large."""
    text = json.dumps(d, allow_nan=False)
    return text if len(text) > INDENT_UP_TO else json.dumps(d, indent=1, allow_nan=False)


@dataclasses.dataclass
class Result:
    """Base of every analysis result.

    Subclasses are dataclasses; their ``type`` name is stored in the JSON so :meth:`load`
    returns the right class.
    """

    meta: dict[str, Any]
    kind: ClassVar[str] = "result"

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        _TYPES[cls.__name__] = cls
        if "__eq__" not in cls.__dict__:  # keep the JSON comparison: a generated __eq__ would say NaN != NaN
            cls.__eq__ = Result.__eq__  # type: ignore[method-assign]

    def to_dict(self) -> dict[str, Any]:
        """Plain-data dict, ``{"type": ClassName, field: value, ...}``."""
        d = {"type": type(self).__name__}
        for f in dataclasses.fields(self):
            if f.metadata.get("skip"):
                continue
            d[f.name] = to_plain(getattr(self, f.name))
        return d

    def save(self, path: str | os.PathLike) -> Path:
        """Write JSON (atomically: a crash never leaves a half-written file)."""
        return atomic_write(path, to_json(self.to_dict()))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Result:
        d = dict(d)
        name = d.pop("type", cls.__name__)
        target = _TYPES.get(name)
        if target is None:
            raise ValueError(f"Unknown result type {name!r}; known: {', '.join(sorted(_TYPES))}")
        if cls is not Result and not issubclass(target, cls):
            raise ValueError(f"File holds a {name}, not a {cls.__name__}")
        hints = typing.get_type_hints(target)
        names = {f.name for f in dataclasses.fields(target) if not f.metadata.get("skip")}
        return target(**{k: _restore_nan(v, hints.get(k)) for k, v in d.items() if k in names})

    @classmethod
    def load(cls, path: str | os.PathLike) -> Result:
        """Load a result saved with :meth:`save` (any subclass, chosen by the stored type)."""
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"No result file at {path}") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not a valid result file (JSON error: {e})") from None
        import cnn_redundancy  # noqa: F401  (registers every result type)

        return cls.from_dict(d)

    def headline(self) -> list[str]:
        """A few lines saying what was found (printed by the command line)."""
        return []

    def plot(self, *args, **kw):  # pragma: no cover - overridden
        raise NotImplementedError(f"{type(self).__name__} has no plot")

    def comparable(self) -> dict[str, Any]:
        """:meth:`to_dict` without the timings in ``meta`` (:data:`TIMINGS`): what the same seed reproduces."""
        d = self.to_dict()
        d["meta"] = {k: v for k, v in (d.get("meta") or {}).items() if k not in TIMINGS}
        return d

    def __eq__(self, other: object) -> bool:
        """Same type and the same JSON, timings aside (NaN equals NaN)."""
        return type(self) is type(other) and json.dumps(self.comparable()) == json.dumps(other.comparable())  # type: ignore[union-attr]


class Partials:
    """Writes a long run's partial result: every ``every`` seconds of work (checked by :meth:`maybe`),
    when the run raises or is interrupted, and at its end.

    Use as a context manager around the work; ``write`` is called with no argument (``None``: nothing
    is written). Nothing is written on exit before ``started`` is set (no measurement yet). Under
    ``torchrun`` only rank 0 writes.
    """

    def __init__(self, write: Callable[[], Any] | None, every: float | None = None) -> None:
        from .distributed import is_main

        self.write, self.every = (write if is_main() else None), PARTIAL_EVERY if every is None else every
        self.last = time.monotonic()
        self.started = False

    def maybe(self) -> None:
        """Write if ``every`` seconds have passed since the last write."""
        if self.write is not None and time.monotonic() - self.last >= self.every:
            self.now()

    def now(self) -> None:
        if self.write is not None:
            self.write()
            self.last = time.monotonic()

    def __enter__(self) -> Partials:
        return self

    def __exit__(self, *exc) -> None:
        if self.started:
            self.now()
