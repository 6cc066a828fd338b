"""Checkpoints that rebuild their model: name, kwargs, structural surgery and weights.

A checkpoint holds only plain data and tensors, so it loads with ``torch.load(weights_only=True)``.
Models changed structurally (pruned channels, removed blocks) record each change as a JSON-able
*surgery* step; loading rebuilds the base model, replays the steps, then loads the weights.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .core.results import atomic_write
from .models import get_model, model_spec, set_model_spec

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "read_checkpoint", "register_surgery"]

FORMAT = "cnn-redundancy/1"
_SURGERY: dict[str, Callable[[nn.Module, dict[str, Any]], nn.Module]] = {}


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit its model."""


def register_surgery(kind: str) -> Callable:
    """Register ``fn(model, step) -> model`` replaying a structural change of type ``kind`` on load."""

    def deco(fn):
        _SURGERY[kind] = fn
        return fn

    return deco


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
    ``torchvision:<name>`` or ``file.py:factory``) and ``kwargs``.
    """
    spec = model_spec(model)
    if name is not None:
        spec = {"name": name, "kwargs": kwargs or {}, "surgery": (spec or {}).get("surgery", [])}
    if spec is None:
        raise CheckpointError(
            "This model was not built with cnn_redundancy.get_model, so the checkpoint cannot say how to "
            "rebuild it: pass name= (e.g. 'path/to/file.py:factory') and kwargs="
        )
    payload = {
        "format": FORMAT,
        "model": spec["name"],
        "kwargs": spec["kwargs"],
        "surgery": spec.get("surgery", []),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "extra": extra or {},
    }
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint's raw content (loaded with ``weights_only=True``), validated."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"No checkpoint at {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path} is not a readable checkpoint (corrupt, truncated or not a torch file): {e}") from None
    if not isinstance(payload, dict) or "state_dict" not in payload or "model" not in payload:
        raise CheckpointError(
            f"{path} is not a cnn-redundancy checkpoint (no model name and state_dict); "
            "for a bare state_dict build the model and call model.load_state_dict"
        )
    return payload


def load_checkpoint(path: str | os.PathLike) -> nn.Module:
    """Rebuild the model saved by :func:`save_checkpoint`, weights loaded, in eval mode.

    The checkpoint's ``extra`` dict is attached as ``model.cnn_redundancy_extra``.

    Raises:
        FileNotFoundError: no file. CheckpointError: corrupt file, or weights that do not fit.
    """
    payload = read_checkpoint(path)
    try:
        model = get_model(payload["model"], **payload["kwargs"])
    except Exception as e:
        raise CheckpointError(f"{path}: cannot rebuild model {payload['model']!r}: {e}") from None
    surgery = payload.get("surgery", [])
    for step in surgery:
        fn = _SURGERY.get(step.get("kind"))
        if fn is None:
            raise CheckpointError(f"{path}: unknown surgery step {step.get('kind')!r} (known: {', '.join(_SURGERY)})")
        model = fn(model, step)
    set_model_spec(model, payload["model"], payload["kwargs"], surgery)
    own = model.state_dict()
    sd = payload["state_dict"]
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    wrong = [f"{k}: {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}" for k in own if k in sd and sd[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:5])}")
        if unexpected:
            parts.append(f"unexpected {', '.join(unexpected[:5])}")
        if wrong:
            parts.append(f"shape mismatch {'; '.join(wrong[:5])}")
        raise CheckpointError(f"{path}: weights do not fit {payload['model']}({payload['kwargs']}): " + "; ".join(parts))
    model.load_state_dict(sd)
    object.__setattr__(model, "cnn_redundancy_extra", payload.get("extra", {}))
    return model.eval()
