"""Layer-scope zero-ablation sweep: split fast path vs the naive sweep (L full evaluations).

Target: the fast sweep over all L conv layers costs at most 0.6x the time of L full evaluations of
the data set. Both sweeps must give the same numbers. Usage: python benchmarks/bench_ablation.py
[model] [n_images]  (default resnet20 512; set OMP_NUM_THREADS for a fixed thread count).
"""

from __future__ import annotations

import statistics
import sys
import time

import torch

import cnn_redundancy as cr
from cnn_redundancy import zero_ablation


def main() -> int:
    name = sys.argv[1] if len(sys.argv) > 1 else "resnet20"
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 512
    cr.set_progress(False)
    torch.manual_seed(0)
    model = cr.get_model(name, in_channels=1, input_size=28).eval()
    data = cr.subset(cr.load_dataset("mnist5k", "test"), n, seed=0)
    L = len(cr.conv_layers(model))
    zero_ablation(model, cr.subset(data, 8), scope="layer")  # warm-up: one-time imports and code generation
    one = statistics.median(_timed(lambda: cr.evaluate(model, data))[0] for _ in range(3))
    runs = [(_timed(lambda: zero_ablation(model, data, scope="layer")),
             _timed(lambda: zero_ablation(model, data, scope="layer", engine="naive"))) for _ in range(2)]
    (t_fast, fast), (t_naive, naive) = min(r[0] for r in runs), min(r[1] for r in runs)  # least disturbed of two
    same = fast.scores == naive.scores and fast.baseline == naive.baseline and fast.changed == naive.changed
    print(f"{name}, {n} mnist5k images, {L} conv layers, {torch.get_num_threads()} thread(s)")
    print(f"one full evaluation            {one:8.2f} s")
    print(f"L full evaluations (L x above) {L * one:8.2f} s")
    print(f"naive sweep (L+1 passes)       {t_naive:8.2f} s")
    print(f"split fast sweep               {t_fast:8.2f} s   (fast path used: {fast.meta['fast_path']})")
    print(f"ratio fast / (L evaluations)   {t_fast / (L * one):8.3f}   (target <= 0.6)")
    print(f"ratio fast / naive sweep       {t_fast / t_naive:8.3f}")
    print(f"same numbers from both sweeps: {same}")
    return 0 if same else 1


class _Timed(tuple):
    def __lt__(self, other):
        return self[0] < other[0]


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return _Timed((time.perf_counter() - t, out))


if __name__ == "__main__":
    sys.exit(main())
