"""Distinctiveness benchmarks (run alone: ``python benchmarks/bench_distinctiveness.py``).

1. Throughput of activation-vector collection against plain inference on the same data and model
   (target: ratio >= 0.9).
2. Peak memory of the collection for 1k and 8k samples (each in a fresh process, data generated on
   the fly so only the analysis can grow): the ratio should stay near 1.
3. One least-distinct pruning step on torchvision resnet18: dependency graph built once; the step's
   cost beyond the distinctiveness pass (selection + physical removal), target well under 1 s.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

os.environ.setdefault("CNN_REDUNDANCY_QUIET", "1")

import torch  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402


class OnTheFly(Dataset):
    """``n`` random images made from their index (nothing stored)."""

    def __init__(self, n: int, shape=(1, 28, 28)) -> None:
        self.n, self.shape = n, shape

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        return torch.randn(self.shape, generator=g), 0


def _best(fn, repeats=5) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def throughput() -> None:
    import cnn_redundancy as cr
    from cnn_redundancy.analyses.distinctiveness import activation_stats
    from cnn_redundancy.core.observe import resolve_observe

    # the per-batch float64 Gram update is a fixed cost per kernel pair: it weighs most on tiny inputs
    for name, kw, shape, n in (("lenet5", {"width": 4}, (1, 28, 28), 4096),
                               ("torchvision:resnet18", {"num_classes": 10}, (3, 32, 32), 512),
                               ("torchvision:resnet18", {"num_classes": 10}, (3, 64, 64), 512)):
        model = cr.get_model(name, **kw).eval()
        x = torch.randn(n, *shape, generator=torch.Generator().manual_seed(0))
        data = torch.utils.data.TensorDataset(x, torch.zeros(n, dtype=torch.long))
        loader = DataLoader(data, batch_size=256)

        def plain(model=model, loader=loader):
            with torch.no_grad():
                for xb, _ in loader:
                    model(xb)

        plain()  # warm-up
        t0 = time.perf_counter()
        obs = resolve_observe(model, cr.conv_layers(model))  # one-time setup (one fx trace)
        t_setup = time.perf_counter() - t0
        t_plain = _best(plain)
        t_dist = _best(lambda model=model, loader=loader, obs=obs: activation_stats(model, loader, observe=obs))
        print(f"{name} {shape[1]}x{shape[2]}: plain inference {n / t_plain:.0f} img/s, activation vectors {n / t_dist:.0f} img/s, "
              f"ratio {t_plain / t_dist:.2f} (target >= 0.9); one-time observe resolution (one fx trace) "
              f"{t_setup:.2f} s for {len(obs)} layers")


def _peak_child(n: int) -> int:
    here = os.path.dirname(os.path.abspath(__file__))
    code = (
        f"import resource, torch, sys; sys.path.insert(0, {here!r});"
        "from bench_distinctiveness import OnTheFly; from cnn_redundancy import get_model;"
        "from cnn_redundancy.analyses.distinctiveness import activation_stats;"
        "m = get_model('lenet5', width=4).eval(); activation_stats(m, OnTheFly(256), batch_size=128);"
        "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss;"
        f"activation_stats(m, OnTheFly({n}), batch_size=128);"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


def memory() -> None:
    from cnn_redundancy.analyses.distinctiveness import ActivationStats

    small, large = _peak_child(1024), _peak_child(8192)
    st = ActivationStats.empty(64)
    held = sum(t.numel() * t.element_size() for t in (st.gram, st.sums, st.mins, st.maxs, st.act_sum))
    print(f"peak RSS growth beyond a warm-up pass: 1,024 samples {small} KiB, 8,192 samples {large} KiB "
          f"(8x the data, ratio {max(large, 1) / max(small, 1):.2f}); accumulated state for a 64-kernel layer: "
          f"{held} bytes whatever the number of samples")


def resnet_step() -> None:
    import cnn_redundancy as cr
    from cnn_redundancy.analyses.distinctiveness import activation_stats
    from cnn_redundancy.compression.pruning.rules import least_distinct
    from cnn_redundancy.compression.pruning.surgeon import Surgeon
    from cnn_redundancy.core.observe import resolve_observe

    model = cr.get_model("torchvision:resnet18", num_classes=10).eval()
    data = OnTheFly(64, (3, 32, 32))
    t0 = time.perf_counter()
    surgeon = Surgeon(model, torch.zeros(1, 3, 32, 32))
    t_graph = time.perf_counter() - t0
    names = cr.conv_layers(model)
    obs = resolve_observe(model, names)
    for step in range(3):
        t0 = time.perf_counter()
        prunable = [n for n in names if surgeon.can_remove(n)]
        t_rest = time.perf_counter() - t0
        t0 = time.perf_counter()
        stats = activation_stats(model, data, prunable, observe={n: obs[n] for n in prunable}, batch_size=64)
        t_pass = time.perf_counter() - t0
        t0 = time.perf_counter()
        entry = least_distinct(surgeon, stats, None, "weaker")
        t_rest += time.perf_counter() - t0
        print(f"resnet18 step {step + 1}: distinctiveness pass {t_pass:.2f} s (64 images, 20 layers); "
              f"prunability check + selection + removal {t_rest:.3f} s (target well under 1 s); removed {entry['removed']}")
    print(f"resnet18 dependency graph built once: {t_graph:.2f} s")


if __name__ == "__main__":
    throughput()
    memory()
    resnet_step()
