"""Model zoo and registry.

``get_model(name, **kw)`` builds:

- a registered model (``lenet5``, ... see :func:`list_models`);
- ``torchvision:<name>``: any torchvision classification model, random weights
  (``num_classes`` etc. passed on);
- ``path/to/file.py:factory``: a user's own model, ``factory(**kw)`` from that file.

Every model built here carries ``model.cnn_redundancy_spec`` (name, kwargs and any structural
surgery applied later), which is what a checkpoint stores to rebuild it without pickling code.
"""

from __future__ import annotations

import copy
import importlib.util
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

__all__ = ["get_model", "register_model", "list_models", "model_spec", "set_model_spec", "copy_spec", "append_surgery"]

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
SPEC_ATTR = "cnn_redundancy_spec"


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering a model factory under ``name``."""

    def deco(fn):
        _REGISTRY[name] = fn
        return fn

    return deco


def list_models() -> list[str]:
    """Names of the registered models (plus the ``torchvision:`` and ``file.py:`` forms)."""
    _load_zoo()
    return sorted(_REGISTRY)


def _load_zoo() -> None:
    from . import lenet  # noqa: F401
    from .equal_width import EqualWidthCNN  # noqa: F401
    from .resnet import CifarResNet  # noqa: F401
    from .segmentation import PSPNet  # noqa: F401
    from .small_cnn import SmallCNN  # noqa: F401


def model_spec(model: nn.Module) -> dict[str, Any] | None:
    """The ``{"name", "kwargs", "surgery"}`` spec a model was built from, or ``None``."""
    return getattr(model, SPEC_ATTR, None)


def set_model_spec(model: nn.Module, name: str, kwargs: dict[str, Any], surgery: list | None = None) -> nn.Module:
    """Attach a spec to ``model`` (used by :func:`get_model` and by structural surgery)."""
    object.__setattr__(model, SPEC_ATTR, {"name": name, "kwargs": copy.deepcopy(kwargs), "surgery": list(surgery or [])})
    return model


def copy_spec(src: nn.Module, dst: nn.Module, step: dict[str, Any] | None = None) -> nn.Module:
    """Give ``dst`` (a changed copy of ``src``) the spec of ``src``, plus the surgery ``step`` that made it."""
    spec = model_spec(src)
    if spec is not None:
        new = copy.deepcopy(spec)
        if step is not None:
            new.setdefault("surgery", []).append(step)
        object.__setattr__(dst, SPEC_ATTR, new)
    return dst


def append_surgery(model: nn.Module, step: dict[str, Any]) -> nn.Module:
    """Record a structural change made to ``model`` in place, so its checkpoint rebuilds it."""
    return copy_spec(model, model, step)


def _from_file(spec: str, kw: dict) -> nn.Module:
    path, _, factory = spec.rpartition(":")
    file = Path(path).expanduser()
    if not file.is_file():
        raise ValueError(f"Model file {file} does not exist (form: path/to/file.py:factory)")
    mod_spec = importlib.util.spec_from_file_location(f"cnn_redundancy_user_{file.stem}", file)
    module = importlib.util.module_from_spec(mod_spec)  # type: ignore[arg-type]
    mod_spec.loader.exec_module(module)  # type: ignore[union-attr]
    fn = getattr(module, factory, None)
    if fn is None:
        names = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_")]
        raise ValueError(f"{file} has no {factory!r}; callables there: {', '.join(names)}")
    return fn(**kw)


def _torchvision(name: str, kw: dict) -> nn.Module:
    import torchvision

    try:
        return torchvision.models.get_model(name, weights=None, **kw)
    except ValueError:
        avail = torchvision.models.list_models(module=torchvision.models)
        import difflib

        close = difflib.get_close_matches(name, avail, n=5)
        raise ValueError(f"Unknown torchvision model {name!r}. Closest: {', '.join(close) or ', '.join(avail[:20])}") from None


def get_model(name: str, **kw: Any) -> nn.Module:
    """Build a model by name.

    Example:
        >>> m = get_model("lenet5", width=10)
        >>> m.conv1.out_channels, m.conv2.out_channels
        (60, 160)
    """
    _load_zoo()
    if name.startswith("torchvision:"):
        model = _torchvision(name.split(":", 1)[1], kw)
    elif name.endswith(".py") or ".py:" in name:
        if ":" not in name:
            raise ValueError("A model file needs a factory: path/to/file.py:factory")
        model = _from_file(name, kw)
    elif name in _REGISTRY:
        fn = _REGISTRY[name]
        params = inspect.signature(fn).parameters
        unknown = [k for k in kw if k not in params and not any(p.kind == p.VAR_KEYWORD for p in params.values())]
        if unknown:
            raise ValueError(f"{name} takes no argument {', '.join(unknown)}; it takes {', '.join(params)}")
        model = fn(**kw)
    else:
        import difflib

        close = difflib.get_close_matches(name, list(_REGISTRY), n=3)
        raise ValueError(
            f"Unknown model {name!r}. Registered: {', '.join(sorted(_REGISTRY))}"
            + (f" (closest: {', '.join(close)})" if close else "")
            + "; or torchvision:<name>, or path/to/file.py:factory"
        )
    return set_model_spec(model, name, kw)
