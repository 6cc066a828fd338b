"""Shared fixtures: quiet progress, seeds, and a check that a model is left exactly as found."""

from __future__ import annotations

import contextlib
import os

import pytest
import torch

os.environ.setdefault("CNN_REDUNDANCY_QUIET", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
# one thread per xdist worker: oversubscribed cores slow torch down many times over
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else max(1, min(2, torch.get_num_threads())))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def _snapshot(model: torch.nn.Module):
    from cnn_redundancy.core.hooks import hook_count

    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    modes = [m.training for m in model.modules()]
    return state, modes, hook_count(model)


def assert_same(model: torch.nn.Module, snap) -> None:
    from cnn_redundancy.core.hooks import hook_count

    state, modes, hooks = snap
    now = model.state_dict()
    assert now.keys() == state.keys()
    for k, v in state.items():
        assert torch.equal(now[k], v), f"{k} changed"
    assert [m.training for m in model.modules()] == modes, "train/eval flags changed"
    assert hook_count(model) == hooks, "hooks left behind"


@pytest.fixture
def unchanged():
    """``with unchanged(model): ...`` asserts the model is bit-identical, same modes, no new hooks afterwards
    (also when the block raises: the exception propagates after the check)."""

    @contextlib.contextmanager
    def check(model):
        snap = _snapshot(model)
        try:
            yield
        finally:
            assert_same(model, snap)

    return check


@pytest.fixture
def interrupt_at(monkeypatch):
    """``interrupt_at(module, "name", n)``: the ``n``-th call of ``module.name`` raises KeyboardInterrupt (Ctrl-C)."""

    def patch(module, name: str, n: int) -> None:
        real, calls = getattr(module, name), []

        def wrapper(*a, **kw):
            calls.append(1)
            if len(calls) == n:
                raise KeyboardInterrupt
            return real(*a, **kw)

        monkeypatch.setattr(module, name, wrapper)

    return patch
