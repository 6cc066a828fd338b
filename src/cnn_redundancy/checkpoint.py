"""Checkpoints that rebuild their model: name, kwargs, structural surgery and weights.

A checkpoint is data: it holds only plain data and tensors, loads with
``torch.load(weights_only=True)`` and never runs code it names. It may name a registered zoo model
or a ``torchvision:`` model; a model defined in a user's file (``my.py:build``) is rebuilt only
when the caller names the factory (``load_checkpoint(path, model="my.py:build")``, CLI
``-m my.py:build -c path``). Models changed structurally (pruned channels, removed blocks) record
each change as a JSON-able *surgery* step; loading checks every step before anything is built,
rebuilds the base model, replays the steps, then loads the weights in the dtype they were saved in.

:func:`load_checkpoint` also reads the weights files users have: a plain ``state_dict``,
``{"state_dict": ...}`` / ``{"model": ...}`` dicts, keys with a ``module.`` or ``model.`` prefix,
given the model that takes them.
"""

from __future__ import annotations

import math
import os
import pickle
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .core.results import atomic_write
from .models import get_model, is_file_spec, model_spec, set_model_spec

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "read_checkpoint", "register_surgery"]

FORMAT = "cnn-redundancy/1"
_SURGERY: dict[str, Callable[[nn.Module, dict[str, Any]], nn.Module]] = {}
_CHECKS: dict[str, Callable[[dict[str, Any]], None]] = {}
#: key prefixes that wrappers add (DataParallel, Lightning, torch.compile), stripped where the model lacks them
PREFIXES = ("module.", "model.", "_orig_mod.")
#: where a weights file may keep its state_dict
STATE_KEYS = ("state_dict", "model_state_dict", "model", "net")
MAX_INPUT_ELEMENTS = 2**24  # bound on the example input a surgery record may ask to allocate
_VERIFIED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, is malformed, or does not fit its model."""


def register_surgery(kind: str, *, check: Callable[[dict[str, Any]], None] | None = None) -> Callable:
    """Register ``fn(model, step) -> model`` replaying a structural change of type ``kind`` on load.

    ``check(step)`` validates a step's fields before any model is built (raise :class:`CheckpointError`).
    """

    def deco(fn):
        _SURGERY[kind] = fn
        if check is not None:
            _CHECKS[kind] = check
        return fn

    return deco


def _rebuild(name: str, kwargs: dict[str, Any], surgery: list[dict[str, Any]]) -> nn.Module:
    """The model a spec describes (random weights; the global random state is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        model = get_model(name, **kwargs)
        for step in surgery:
            model = _SURGERY[step["kind"]](model, step)
    return model


def _signature(model: nn.Module) -> tuple:
    return tuple((k, tuple(v.shape)) for k, v in model.state_dict().items())


def _check_rebuilds(model: nn.Module, spec: dict[str, Any]) -> None:
    """Refuse a spec that does not rebuild ``model``'s architecture (a layer swapped after construction)."""
    sig = _signature(model)
    if _VERIFIED.get(model) == (sig, repr(spec)):
        return
    try:
        rebuilt = _rebuild(spec["name"], spec["kwargs"], spec.get("surgery", []))
    except Exception as e:
        raise CheckpointError(f"this model's spec {spec['name']}({spec['kwargs']}) does not rebuild: {e}") from None
    problem = _mismatch(rebuilt.state_dict(), model.state_dict())
    if problem:
        raise CheckpointError(
            f"{spec['name']}({spec['kwargs']}) rebuilds a different architecture than this model ({problem}): a layer "
            "was changed after the model was built, and the checkpoint could not rebuild it. Build the model with "
            "arguments that give this architecture, or save with name='file.py:factory' (a factory that builds "
            "it) and load with load_checkpoint(path, model='file.py:factory')"
        )
    try:
        _VERIFIED[model] = (sig, repr(spec))
    except TypeError:  # a model that cannot be weakly referenced is checked again next time
        pass


def save_checkpoint(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    name: str | None = None,
    kwargs: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Save ``model`` so that :func:`load_checkpoint` rebuilds it with no code from the user.

    Models from :func:`cnn_redundancy.models.get_model` (and copies made by the toolkit's
    surgery) know their spec; for another model pass ``name`` (a registry name,
    ``torchvision:<name>`` or ``file.py:factory``) and ``kwargs``. The spec is checked to rebuild
    this architecture before anything is written. Weights keep their dtype (float64, float16).

    Raises:
        CheckpointError: no spec, or a spec that rebuilds another architecture.
    """
    spec = model_spec(model)
    if name is not None:
        spec = {"name": name, "kwargs": kwargs or {}, "surgery": (spec or {}).get("surgery", [])}
    if spec is None or spec["name"] is None:
        raise CheckpointError(
            "This model was not built with cnn_redundancy.get_model, so the checkpoint cannot say how to "
            "rebuild it: pass name= (e.g. 'path/to/file.py:factory') and kwargs="
        )
    _check_rebuilds(model, spec)
    payload = {
        "format": FORMAT,
        "model": spec["name"],
        "kwargs": spec["kwargs"],
        "surgery": spec.get("surgery", []),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "extra": extra or {},
    }
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


def _torch_load(path: Path) -> Any:
    """``torch.load(weights_only=True)``; a pickled object (a whole module) is refused with the reason."""
    if not path.exists():
        raise FileNotFoundError(f"No checkpoint at {path}")
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, not a checkpoint file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Unsupported global" not in str(e):
            raise CheckpointError(f"{path} is not a readable checkpoint (corrupt, truncated or not a torch file): {e}") from None
        raise CheckpointError(
            f"{path} holds pickled Python objects (a whole model saved with torch.save(model)?): loading it would run "
            "code from the file, which this toolkit never does. Save the weights instead, "
            "torch.save(model.state_dict(), 'weights.pt'), and load them with the code that builds the model: "
            "load_checkpoint('weights.pt', model='my_model.py:build') (CLI: -m my_model.py:build -c weights.pt)"
        ) from None
    except Exception as e:
        raise CheckpointError(f"{path} is not a readable checkpoint (corrupt, truncated or not a torch file): {e}") from None


def _is_ours(payload: Any) -> bool:
    return isinstance(payload, dict) and isinstance(payload.get("model"), str) and isinstance(payload.get("state_dict"), dict)


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The content of a checkpoint written by :func:`save_checkpoint` (loaded with ``weights_only=True``)."""
    path = Path(path)
    payload = _torch_load(path)
    if not _is_ours(payload):
        raise CheckpointError(
            f"{path} is not a cnn-redundancy checkpoint (no model name and state_dict); for a plain state_dict "
            "name the model: load_checkpoint(path, model='my_model.py:build') (CLI: -m my_model.py:build -c path)"
        )
    return payload


def _tensors(d: Any) -> bool:
    return isinstance(d, dict) and bool(d) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in d.items())


def _foreign_state_dict(path: Path, payload: Any) -> dict[str, torch.Tensor]:
    """The state_dict of a weights file that is not ours: plain, or under one of :data:`STATE_KEYS`."""
    if _tensors(payload):
        return payload
    if isinstance(payload, dict):
        for key in STATE_KEYS:
            if _tensors(payload.get(key)):
                return payload[key]
    keys = ", ".join(map(str, list(payload)[:8])) if isinstance(payload, dict) else type(payload).__name__
    held = [k for k, v in payload.items() if _tensors(v)] if isinstance(payload, dict) else []
    fix = (f"; it holds weights under {', '.join(map(repr, held))}: save the ones you mean alone, e.g. "
           f"torch.save(torch.load({str(path)!r})[{held[0]!r}], 'weights.pt')") if held else ""
    raise CheckpointError(f"{path} holds no state_dict (found: {keys}); expected a state_dict of tensors, or a dict "
                          f"with one under {', '.join(repr(k) for k in STATE_KEYS)}{fix}")


def _is_int(v: Any, lo: int = 0) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= lo


def _check_surgery(path: Path, surgery: Any) -> None:
    """Every step well formed (known kind, fields of the right types, bounded sizes), before anything is built."""
    if not isinstance(surgery, list):
        raise CheckpointError(f"{path}: malformed checkpoint: surgery must be a list of steps, not {type(surgery).__name__}")
    for i, step in enumerate(surgery):
        kind = step.get("kind") if isinstance(step, dict) else None
        if not isinstance(kind, str) or kind not in _SURGERY:
            raise CheckpointError(f"{path}: surgery step {i} has unknown kind {kind!r} (known: {', '.join(_SURGERY)})")
        try:
            _CHECKS.get(kind, lambda s: None)(step)
        except CheckpointError as e:
            raise CheckpointError(f"{path}: malformed surgery step {i} ({kind}): {e}") from None


def check_input_shape(shape: Any) -> None:
    """A recorded example input shape: 2 to 5 positive integers, at most :data:`MAX_INPUT_ELEMENTS` elements."""
    if not (isinstance(shape, list) and 2 <= len(shape) <= 5 and all(_is_int(v, 1) for v in shape)):
        raise CheckpointError(f"input_shape must be 2 to 5 positive integers, not {shape!r}")
    if math.prod(shape) > MAX_INPUT_ELEMENTS:
        raise CheckpointError(f"input_shape {shape} has more than {MAX_INPUT_ELEMENTS} elements")


def _build(path: Path, name: str | None, kwargs: Any, model: str | nn.Module | None,
           model_kw: dict[str, Any] | None) -> nn.Module:  # fmt: skip
    """The base model: the caller's module or factory, else the checkpoint's zoo / torchvision name."""
    if isinstance(model, nn.Module):
        return model
    if model is None and name is None:
        raise CheckpointError(
            f"{path} is a plain state_dict (it does not name its model): name the model that takes it, "
            "load_checkpoint(path, model='my_model.py:build') or model=<module> (CLI: -m my_model.py:build -c path)"
        )
    if model is None and is_file_spec(name):  # type: ignore[arg-type]
        raise CheckpointError(
            f"{path} names the model file {name!r}; a checkpoint never runs code it names. If you trust that file, "
            f"name it yourself: load_checkpoint(path, model={name!r}) (CLI: -m {name} -c {path})"
        )
    kw = model_kw if model_kw is not None else kwargs
    if not isinstance(kw, dict) or not all(isinstance(k, str) for k in kw):
        raise CheckpointError(f"{path}: malformed checkpoint: kwargs must be a dict of named arguments, not {kw!r}")
    spec = model if model is not None else name
    try:
        return get_model(spec, **kw)  # type: ignore[arg-type]
    except Exception as e:
        raise CheckpointError(f"{path}: cannot rebuild model {spec!r}: {e}") from None


def _replay(path: Path, model: nn.Module, surgery: list[dict[str, Any]]) -> nn.Module:
    for i, step in enumerate(surgery):
        try:
            model = _SURGERY[step["kind"]](model, step)
        except CheckpointError as e:
            raise CheckpointError(f"{path}: surgery step {i} ({step['kind']}): {e}") from None
        except Exception as e:
            raise CheckpointError(f"{path}: surgery step {i} ({step['kind']}) does not fit the model: "
                                  f"{type(e).__name__}: {e}") from None
    return model


def _strip_prefixes(sd: dict[str, torch.Tensor], own: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Drop a wrapper's key prefix (``module.``, ``model.``, ...) where that makes more keys fit the model."""
    for prefix in PREFIXES:
        if any(k.startswith(prefix) for k in own):
            continue
        stripped = {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in sd.items()}
        if len(stripped) == len(sd) and len(own.keys() & stripped.keys()) > len(own.keys() & sd.keys()):
            sd = stripped
    return sd


def _mismatch(sd: dict[str, torch.Tensor], own: dict[str, torch.Tensor]) -> str:
    """One line naming missing and unexpected keys and shape mismatches (empty when the weights fit)."""
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    wrong = [f"{k} {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}" for k in own if k in sd and sd[k].shape != own[k].shape]
    parts = [f"{what} {', '.join(found[:5])}" + (f" and {len(found) - 5} more" if len(found) > 5 else "")
             for what, found in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", wrong)) if found]
    return "; ".join(parts)


def _load_weights(path: Path, model: nn.Module, sd: dict[str, torch.Tensor], what: str) -> None:
    """Load ``sd`` into ``model`` in the dtype it was saved in; one clear line when it does not fit."""
    own = model.state_dict()
    sd = _strip_prefixes(sd, own)
    problem = _mismatch(sd, own)
    if problem:
        raise CheckpointError(f"{path}: weights do not fit {what}: {problem}. Build the model with the arguments it "
                              "was trained with (model_kw= / --model-kw)")
    model.load_state_dict({k: v.to(own[k].device) for k, v in sd.items()}, assign=True)


def load_checkpoint(
    path: str | os.PathLike,
    model: str | nn.Module | None = None,
    *,
    model_kw: dict[str, Any] | None = None,
) -> nn.Module:
    """Rebuild the model of a checkpoint, weights loaded (in the dtype saved), in eval mode.

    Args:
        path: a checkpoint written by :func:`save_checkpoint`, or a weights file: a plain
            ``state_dict``, ``{"state_dict": ...}``, ``{"model": ...}`` (keys prefixed by ``module.``
            or ``model.`` are matched too).
        model: the model to load into: a factory spec (``"my.py:build"``, a zoo name,
            ``"torchvision:<name>"``) or a module. Needed for weights files and for checkpoints
            naming a model file (a checkpoint never runs code it names).
        model_kw: arguments of ``model``'s factory (default: those the checkpoint recorded).

    The checkpoint's ``extra`` dict is attached as ``model.cnn_redundancy_extra``.

    Raises:
        FileNotFoundError: no file. CheckpointError: corrupt or malformed file, a pickled object,
        a model file named but not given, or weights that do not fit (one line naming the keys).
    """
    path = Path(path)
    payload = _torch_load(path)
    if _is_ours(payload):
        name, kwargs, surgery, sd = payload["model"], payload.get("kwargs", {}), payload.get("surgery", []), payload["state_dict"]
        extra = payload.get("extra", {})
    else:
        name, kwargs, surgery, sd, extra = None, {}, [], _foreign_state_dict(path, payload), {}
    _check_surgery(path, surgery)
    net = _replay(path, _build(path, name, kwargs, model, model_kw), surgery)
    spec = model_spec(net)
    if spec is not None:
        set_model_spec(net, spec["name"], spec["kwargs"], surgery)
    _load_weights(path, net, sd, (spec or {}).get("name") or type(net).__name__)
    object.__setattr__(net, "cnn_redundancy_extra", extra)
    return net.eval()
