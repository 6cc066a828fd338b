"""What a model costs: parameters, MACs (Torch-Pruning's counter) and measured CPU latency."""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn

from .hooks import eval_mode, preserved

__all__ = ["count_macs_params", "cpu_latency", "model_cost"]


def count_macs_params(model: nn.Module, example_inputs: torch.Tensor) -> tuple[int, int]:
    """``(MACs, parameters)`` of ``model`` for ``example_inputs`` (the model is left as found)."""
    import torch_pruning as tp

    with preserved(model), torch.no_grad():
        macs, params = tp.utils.count_ops_and_params(model, example_inputs)
    return int(macs), int(params)


def cpu_latency(model: nn.Module, example_inputs: torch.Tensor, *, runs: int = 20, warmup: int = 3) -> float:
    """Median wall-clock seconds of ``model(example_inputs)``, eval mode, no gradients (mode restored)."""
    if runs < 1:
        raise ValueError("runs must be >= 1")
    times = []
    with eval_mode(model), torch.no_grad():
        for i in range(warmup + runs):
            t0 = time.perf_counter()
            model(example_inputs)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    return statistics.median(times)


def model_cost(model: nn.Module, example: torch.Tensor, *, repeats: int = 15, batch: int = 16) -> dict[str, float]:
    """Parameters, MACs per input and median CPU latency (ms) of a batch of ``batch`` copies of ``example``."""
    macs, params = count_macs_params(model, example)
    x = example.expand(batch, *example.shape[1:]).contiguous()
    return {"params": params, "macs": macs, "latency_ms": 1e3 * cpu_latency(model, x, runs=repeats, warmup=1)}
