"""Results: dataclasses of plain data that save to JSON, load back exactly, and plot.

Every analysis returns a subclass of :class:`Result`. Fields hold plain Python data (dicts keyed
by layer name, lists, floats), so ``Result.load(path)`` gives back an equal object. ``meta`` holds
the method, its parameters, the seed and the package versions (no timestamps: the same seed gives
the same JSON).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
from pathlib import Path
from typing import Any, ClassVar

__all__ = ["Result", "make_meta", "to_plain", "versions"]

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
    """Metadata stored with every result."""
    return {"method": method, "params": to_plain(params), "seed": seed, "versions": versions(), "complete": True}


def to_plain(x: Any) -> Any:
    """Convert tensors, numpy arrays and scalars, tuples and paths into JSON-able Python data."""
    try:
        import numpy as np
    except ImportError:  # pragma: no cover
        np = None
    import torch

    if isinstance(x, torch.Tensor):
        return to_plain(x.detach().cpu().tolist())
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
        return x
    if x is None or isinstance(x, bool | int | float | str):
        return x
    if isinstance(x, type):
        return x.__name__
    return repr(x)


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
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1, allow_nan=True))
        os.replace(tmp, path)
        return path

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Result:
        d = dict(d)
        name = d.pop("type", cls.__name__)
        target = _TYPES.get(name)
        if target is None:
            raise ValueError(f"Unknown result type {name!r}; known: {', '.join(sorted(_TYPES))}")
        if cls is not Result and not issubclass(target, cls):
            raise ValueError(f"File holds a {name}, not a {cls.__name__}")
        names = {f.name for f in dataclasses.fields(target) if not f.metadata.get("skip")}
        return target(**{k: v for k, v in d.items() if k in names})

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

    def plot(self, *args, **kw):  # pragma: no cover - overridden
        raise NotImplementedError(f"{type(self).__name__} has no plot")

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and json.dumps(self.to_dict()) == json.dumps(other.to_dict())  # type: ignore[union-attr]
