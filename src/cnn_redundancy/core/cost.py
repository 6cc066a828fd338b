"""What a model costs: parameters, MACs and measured latency (CPU, and CUDA with synchronisation).

MACs are the multiply-accumulates of the ``Conv2d``, ``ConvTranspose2d`` and ``Linear`` layers that
a forward pass actually calls (output elements x input channels per group x kernel size; for a
transposed conv, input elements x output channels per group x kernel size: half of what
``torch.utils.flop_counter`` counts, tested; biases, normalization and activations are not counted),
per input sample.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from .device import placed
from .hooks import capture, preserved

__all__ = ["count_macs", "count_macs_params", "measure_latency", "cpu_latency", "model_cost", "MAC_LAYERS"]

MAC_LAYERS = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)


def count_macs(model: nn.Module, example_input: torch.Tensor) -> dict[str, int]:
    """Multiply-accumulates per sample of every conv and linear layer called in ``model(example_input)``.

    The model is left as found (one forward pass on the first sample, in eval mode).

    Example:
        >>> from cnn_redundancy.models import get_model
        >>> count_macs(get_model("equal_width_cnn", channels=(4, 4, 4)), torch.zeros(1, 1, 28, 28))["conv1"]
        28224
    """
    names = [n for n, m in model.named_modules() if isinstance(m, MAC_LAYERS)]
    transposed = [n for n in names if isinstance(model.get_submodule(n), nn.ConvTranspose2d)]
    out: dict[str, int] = {}

    def add(name: str, t: torch.Tensor) -> None:  # every call counts (a layer used twice costs twice)
        m = model.get_submodule(name)
        if isinstance(m, nn.Linear):
            per = m.in_features
        elif isinstance(m, nn.ConvTranspose2d):  # t is the input: each element meets out/groups kernels' taps
            per = (m.out_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
        else:
            per = (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
        out[name] = out.get(name, 0) + t[:1].numel() * per

    with preserved(model), placed(model, example_input.device), torch.no_grad(), \
            capture(model, [n for n in names if n not in transposed], fn=add), \
            capture(model, transposed, what="input", fn=add):  # fmt: skip  (on the input's device: analyze(device=))
        model.eval()
        model(example_input[:1])
    return {n: out[n] for n in names if n in out}


def count_macs_params(model: nn.Module, example_input: torch.Tensor) -> tuple[int, int]:
    """``(MACs per sample, parameters)`` of ``model`` (see the module docstring); the model is left as found."""
    return sum(count_macs(model, example_input).values()), sum(p.numel() for p in model.parameters())


def _sync(device: torch.device | None) -> None:
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_latency(
    fn: Callable[[torch.Tensor], object],
    x: torch.Tensor,
    *,
    batch_size: int | None = None,
    repeats: int = 20,
    warmup: int = 3,
    stat: str = "median",
) -> float:
    """Wall-clock seconds of ``fn`` over ``x``, without gradients; CUDA work is synchronised.

    Args:
        fn: a model or any callable on a batch.
        x: the inputs; with ``batch_size``, ``fn`` runs over ``x`` in batches and the time is per
            sample; without, ``fn(x)`` is one call and the time is per call.
        repeats, warmup: timed and untimed runs.
        stat: ``"median"`` (robust to a busy machine) or ``"min"`` (``timeit``'s choice: on a shared
            machine the other runs measure the load, not the code).
    """
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    if stat not in ("median", "min"):
        raise ValueError(f"stat must be 'median' or 'min', not {stat!r}")
    dev = x.device if x.device.type == "cuda" else None
    step = batch_size or len(x)

    def once() -> None:
        for i in range(0, len(x), step):
            fn(x[i : i + step])

    times = []
    with torch.no_grad():
        for i in range(warmup + repeats):
            _sync(dev)
            t0 = time.perf_counter()
            once()
            _sync(dev)
            if i >= warmup:
                times.append((time.perf_counter() - t0) / (len(x) if batch_size else 1))
    return statistics.median(times) if stat == "median" else min(times)


def cpu_latency(model: nn.Module, example_inputs: torch.Tensor, *, runs: int = 20, warmup: int = 3) -> float:
    """Median seconds of one ``model(example_inputs)`` call in eval mode (mode restored)."""
    with preserved(model):
        model.eval()
        return measure_latency(model, example_inputs, repeats=runs, warmup=warmup)


def model_cost(model: nn.Module, example: torch.Tensor, *, repeats: int = 15, batch: int = 16) -> dict[str, float]:
    """Parameters, MACs per input and median latency (ms) of a batch of ``batch`` copies of ``example``."""
    macs, params = count_macs_params(model, example)
    x = example.expand(batch, *example.shape[1:]).contiguous()
    return {"params": params, "macs": macs, "latency_ms": 1e3 * cpu_latency(model, x, runs=repeats, warmup=1)}
