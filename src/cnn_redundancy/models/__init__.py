"""Model zoo and registry.

``get_model(name, **kw)`` builds:

- a registered model (``lenet5``, ... see :func:`list_models`);
- ``torchvision:<name>``: any torchvision classification or segmentation model, random weights (its
  backbone's too: nothing is downloaded; ``num_classes`` etc. passed on);
- ``path/to/file.py:factory``: a user's own model, ``factory(**kw)`` from that file.

Every model built here carries ``model.cnn_redundancy_spec`` (name, kwargs and any structural
surgery applied later), which is what a checkpoint stores to rebuild it without pickling code.
``get_model(name, seed=0, ...)`` builds the same weights every time (the global random state is
left as it was); without ``seed`` the initialisation draws from the global random state.
"""

from __future__ import annotations

import copy
import difflib
import importlib.util
import inspect
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["get_model", "register_model", "list_models", "model_spec", "set_model_spec", "copy_spec", "append_surgery",
           "is_file_spec", "model_parameters", "data_fitted_parameters"]  # fmt: skip

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
    """Give ``dst`` (a changed copy of ``src``) the spec of ``src``, plus the surgery ``step`` that made it.

    A model built elsewhere (no spec) keeps its surgery under a spec without a name, so that
    ``save_checkpoint(model, path, name=...)`` records it.
    """
    spec = model_spec(src)
    if spec is not None or step is not None:
        new = copy.deepcopy(spec) if spec is not None else {"name": None, "kwargs": {}, "surgery": []}
        if step is not None:
            new.setdefault("surgery", []).append(step)
        object.__setattr__(dst, SPEC_ATTR, new)
    return dst


def append_surgery(model: nn.Module, step: dict[str, Any]) -> nn.Module:
    """Record a structural change made to ``model`` in place, so its checkpoint rebuilds it."""
    return copy_spec(model, model, step)


def is_file_spec(name: str) -> bool:
    """Whether ``name`` names a model defined in a Python file (``path/to/file.py:factory``)."""
    return name.endswith(".py") or ".py:" in name


def _load_file(spec: str) -> Callable[..., nn.Module]:
    """The factory ``fn`` of ``path/to/file.py:fn`` (the file is executed: only for a name the caller gave)."""
    if ":" not in spec:
        raise ValueError("A model file needs a factory: path/to/file.py:factory")
    path, _, factory = spec.rpartition(":")
    file = Path(path).expanduser()
    if not file.is_file():
        raise ValueError(f"Model file {file} does not exist (form: path/to/file.py:factory)")
    mod_spec = importlib.util.spec_from_file_location(f"cnn_redundancy_user_{file.stem}", file)
    module = importlib.util.module_from_spec(mod_spec)  # type: ignore[arg-type]
    try:
        mod_spec.loader.exec_module(module)  # type: ignore[union-attr]
    except Exception as e:
        raise ValueError(f"model file {file} fails when run: {_in_file(e, file)}") from None
    fn = getattr(module, factory, None)
    if fn is None:
        names = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_")]
        raise ValueError(f"{file} has no {factory!r}; callables there: {', '.join(names)}")
    return fn


def _in_file(e: BaseException, file: Path) -> str:
    """``e`` in one line, with the line of ``file`` where it was raised (a syntax error names its own)."""
    import traceback

    if isinstance(e, SyntaxError):
        return f"SyntaxError: {e.msg} (line {e.lineno}: {(e.text or '').strip()})"
    where = [f for f in traceback.extract_tb(e.__traceback__) if Path(f.filename).resolve() == file.resolve()]
    at = f" (line {where[-1].lineno}: {where[-1].line})" if where else ""
    return f"{type(e).__name__}: {e}{at}"


def _torchvision(name: str, kw: dict) -> nn.Module:
    """torchvision's ``name`` with random weights; a backbone too (segmentation and detection models would
    otherwise download ImageNet weights for it)."""
    import torchvision

    try:
        builder = torchvision.models.get_model_builder(name)
    except ValueError:
        avail = torchvision.models.list_models(module=torchvision.models)
        close = difflib.get_close_matches(name, avail, n=5)
        raise ValueError(f"Unknown torchvision model {name!r}. Closest: {', '.join(close) or ', '.join(avail[:20])}") from None
    if "weights_backbone" in inspect.signature(builder).parameters:
        kw = {"weights_backbone": None, **kw}
    with warnings.catch_warnings():  # GoogLeNet's and Inception's notice of a future default, nothing a user can act on
        warnings.filterwarnings("ignore", message="The default weight initialization", category=FutureWarning)
        return builder(weights=None, **kw)


def _torchvision_fitted(name: str) -> bool:
    """Whether torchvision's ``name`` is a classification or segmentation model (their builders take ``num_classes``)."""
    import torchvision

    return any(name in torchvision.models.list_models(module=m)
               for m in (torchvision.models, torchvision.models.segmentation))  # fmt: skip


def _factory(name: str) -> Callable[..., nn.Module]:
    """The function that builds ``name`` (a file spec's file is executed here)."""
    _load_zoo()
    if name.startswith("torchvision:"):
        return lambda **kw: _torchvision(name.split(":", 1)[1], kw)
    if is_file_spec(name):
        return _load_file(name)
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3)
        raise ValueError(
            f"Unknown model {name!r}. Registered: {', '.join(sorted(_REGISTRY))}"
            + (f" (closest: {', '.join(close)})" if close else "")
            + "; or torchvision:<name>, or path/to/file.py:factory"
        )
    return _REGISTRY[name]


def model_parameters(name: str) -> dict[str, inspect.Parameter]:
    """The keyword arguments the factory of ``name`` takes (empty for torchvision models)."""
    if name.startswith("torchvision:"):
        return {}
    return dict(inspect.signature(_factory(name)).parameters)


def data_fitted_parameters(name: str) -> set[str]:
    """Which of ``in_channels``, ``num_classes``, ``input_size`` the model ``name`` can be built for the data
    with: those its factory takes; ``num_classes`` for a torchvision classification or segmentation model."""
    if name.startswith("torchvision:"):
        return {"num_classes"} if _torchvision_fitted(name.split(":", 1)[1]) else set()
    return set(model_parameters(name)) & {"in_channels", "num_classes", "input_size"}


def _kind(default: Any) -> tuple[tuple[type, ...], str] | None:
    """The types a value may have where the factory's default is ``default``, and their name."""
    if isinstance(default, bool):
        return (bool,), "true or false"
    if isinstance(default, int):
        return (int,), "an integer"
    if isinstance(default, float):
        return (int, float), "a number"
    if isinstance(default, str):
        return (str,), "a string"
    if isinstance(default, list | tuple):
        return (list, tuple), "a list"
    return None


def _check_kwargs(name: str, params: dict[str, inspect.Parameter], kw: dict[str, Any]) -> None:
    """Unknown arguments, and values whose type does not fit the factory's default, as one clear error."""
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return
    unknown = [k for k in kw if k not in params]
    if unknown:
        raise ValueError(f"{name} takes no argument {', '.join(unknown)}; it takes {', '.join(params)}")
    for k, v in kw.items():
        kind = _kind(params[k].default)
        if kind is not None and not (isinstance(v, kind[0]) and (bool in kind[0] or not isinstance(v, bool))):
            raise ValueError(f"{name}: argument {k} must be {kind[1]} (default {params[k].default!r}), not {v!r}")


def get_model(name: str, *, seed: int | None = None, **kw: Any) -> nn.Module:
    """Build a model by name; ``seed`` makes its initial weights the same on every call.

    Example:
        >>> m = get_model("lenet5", width=10)
        >>> m.conv1.out_channels, m.conv2.out_channels
        (60, 160)
        >>> torch.equal(get_model("lenet5", seed=0).conv1.weight, get_model("lenet5", seed=0).conv1.weight)
        True
    """
    fn = _factory(name)
    if name in _REGISTRY or is_file_spec(name):
        _check_kwargs(name, dict(inspect.signature(fn).parameters), kw)
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        file = Path(name.rpartition(":")[0]).expanduser() if is_file_spec(name) else None
        try:
            model = fn(**kw)
        except TypeError as e:
            raise ValueError(f"{name}({', '.join(f'{k}={v!r}' for k, v in kw.items())}) cannot be built: {e}") from None
        except Exception as e:
            if file is None:
                raise
            raise ValueError(f"{name} fails when called: {_in_file(e, file)}") from None
    if not isinstance(model, nn.Module):
        raise ValueError(f"{name} returned {type(model).__name__} {model!r:.40}, not a torch.nn.Module")
    return set_model_spec(model, name, kw)
