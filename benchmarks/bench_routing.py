"""Layer skipping: measured versus ideal speedup of the skip network (images batched by exit).

The baseline is the full network (every conv layer) on the same images in the same run. The ideal
speedup is the ratio of MACs (full / mean MACs of the chosen exits); the measured one is the ratio
of wall times. Run alone: ``python benchmarks/bench_routing.py``.
"""

from __future__ import annotations

import time

import torch

import cnn_redundancy as cr
from cnn_redundancy.skipnet import measure_latency

N, SIDE, CHANNELS, REPEATS, BATCH = 1024, 28, (32, 32, 32), 5, 256


def main() -> None:
    torch.manual_seed(0)
    model = cr.get_model("equal_width_cnn", channels=CHANNELS, input_size=SIDE).eval()
    skip = cr.SkipNetwork(model)
    x = torch.randn(N, 1, SIDE, SIDE)
    macs = skip.exit_macs()
    full_t = measure_latency(model, x, repeats=REPEATS, batch_size=BATCH)
    print(f"equal_width_cnn channels={CHANNELS}, {N} images {SIDE}x{SIDE}, threads={torch.get_num_threads()}")
    print(f"full network: {full_t * 1e3:.4f} ms/image, {macs[-1] / 1e6:.2f} M MACs/image")
    g = torch.Generator().manual_seed(0)
    mixes = {f"all exit {k}": torch.full((N,), k, dtype=torch.long) for k in range(skip.depth)}
    mixes["uniform mix 0/1/2"] = torch.randint(0, skip.depth, (N,), generator=g)
    mixes["mnist5k-like mix 56/5/39%"] = torch.multinomial(torch.tensor([0.56, 0.05, 0.39]), N, replacement=True, generator=g)
    print(f"{'exits':28s} {'ms/image':>9s} {'measured':>9s} {'ideal':>7s} {'measured/ideal':>15s}")
    for name, exits in mixes.items():
        times = []
        with torch.no_grad():
            skip(x[:BATCH], exits[:BATCH])  # warm-up
            for _ in range(REPEATS):
                t0 = time.perf_counter()
                for i in range(0, N, BATCH):
                    skip(x[i : i + BATCH], exits[i : i + BATCH])
                times.append((time.perf_counter() - t0) / N)
        t = sorted(times)[len(times) // 2]
        mean_macs = float(torch.tensor([macs[int(e)] for e in exits], dtype=torch.float64).mean())
        ideal = macs[-1] / mean_macs
        measured = full_t / t
        print(f"{name:28s} {t * 1e3:9.4f} {measured:8.2f}x {ideal:6.2f}x {measured / ideal:14.2f}")

if __name__ == "__main__":
    main()
