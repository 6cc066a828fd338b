"""Layer skipping: measured versus ideal speedup of the skip network (images batched by exit).

The baseline is the full network (every conv layer) on the same images, timed in the same run and
interleaved with the skip network (full, skip, full, skip, ...) so that both see the same machine
load; the measured speedup is the median of the per-round ratios. The ideal speedup is the ratio of
MACs (full / mean MACs of the chosen exits). Run alone: ``python benchmarks/bench_routing.py``.
"""

from __future__ import annotations

import statistics
import time

import torch

import cnn_redundancy as cr

N, SIDE, CHANNELS, ROUNDS, BATCH = 1024, 28, (32, 32, 32), 7, 256


def per_image(fn, x: torch.Tensor, exits: torch.Tensor | None) -> float:
    t0 = time.perf_counter()
    for i in range(0, len(x), BATCH):
        fn(x[i : i + BATCH]) if exits is None else fn(x[i : i + BATCH], exits[i : i + BATCH])
    return (time.perf_counter() - t0) / len(x)


def main() -> None:
    torch.manual_seed(0)
    model = cr.get_model("equal_width_cnn", channels=CHANNELS, input_size=SIDE).eval()
    skip = cr.SkipNetwork(model)
    x = torch.randn(N, 1, SIDE, SIDE)
    macs = skip.exit_macs()
    print(f"equal_width_cnn channels={CHANNELS}, {N} images {SIDE}x{SIDE}, batch {BATCH}, threads={torch.get_num_threads()}")
    print(f"full network: {macs[-1] / 1e6:.2f} M MACs/image; exits cost {', '.join(f'{m / 1e6:.2f}' for m in macs)} M")
    g = torch.Generator().manual_seed(0)
    mixes = {f"all exit {k}": torch.full((N,), k, dtype=torch.long) for k in range(skip.depth)}
    mixes["uniform mix 0/1/2"] = torch.randint(0, skip.depth, (N,), generator=g)
    mixes["mnist5k router mix 56/5/39%"] = torch.multinomial(torch.tensor([0.565, 0.054, 0.381]), N, replacement=True, generator=g)
    print(f"{'exits':30s} {'full ms':>8s} {'skip ms':>8s} {'measured':>9s} {'ideal':>7s} {'measured/ideal':>15s}")
    with torch.no_grad():
        model(x[:BATCH])
        for name, exits in mixes.items():
            skip(x[:BATCH], exits[:BATCH])  # warm-up
            full_t, skip_t = [], []
            for _ in range(ROUNDS):
                full_t.append(per_image(model, x, None))
                skip_t.append(per_image(skip, x, exits))
            measured = statistics.median(f / s for f, s in zip(full_t, skip_t))
            ideal = macs[-1] / float(torch.tensor([macs[int(e)] for e in exits], dtype=torch.float64).mean())
            print(f"{name:30s} {min(full_t) * 1e3:8.4f} {min(skip_t) * 1e3:8.4f} {measured:8.2f}x {ideal:6.2f}x "
                  f"{measured / ideal:14.2f}")


if __name__ == "__main__":
    main()
