"""``compress`` to half the MACs against Torch-Pruning's one-shot MetaPruner, on torchvision resnet18.

resnet18 (10 classes, random weights) at 32x32, 256 calibration images (seeded per index), 64
validation and 64 test images. The budget: at most 3x the time of Torch-Pruning's one-shot
``MetaPruner`` (global L1) to the same MACs plus 40 plain inference passes over the calibration
images, all measured in this run. Printed: the ratio for the channel stage alone with the paper's
criterion (distinctiveness) and with L1, each reaching 50% of the MACs.

Run: ``python benchmarks/bench_compress.py``.
"""

from __future__ import annotations

import os
import time

os.environ.setdefault("CNN_REDUNDANCY_QUIET", "1")

import torch  # noqa: E402
from torch import nn  # noqa: E402

import cnn_redundancy as cr  # noqa: E402
from cnn_redundancy.compression.compress import compress  # noqa: E402
from lazy_images import LazyImages  # noqa: E402


def one_shot(model, example, ratio: float) -> tuple[nn.Module, float]:
    import copy

    import torch_pruning as tp

    m = copy.deepcopy(model)
    t0 = time.perf_counter()
    pruner = tp.pruner.MetaPruner(m, example, importance=tp.importance.GroupMagnitudeImportance(p=1),
                                  global_pruning=True, pruning_ratio=ratio, root_module_types=[nn.Conv2d],
                                  ignored_layers=[m.fc])  # fmt: skip
    pruner.step()
    return m, time.perf_counter() - t0


def main() -> None:
    torch.manual_seed(0)
    model = cr.get_model("torchvision:resnet18", num_classes=10, seed=0).eval()
    small = (3, 32, 32)
    calib, val, test = (LazyImages(256, small), LazyImages(64, small, offset=10_000),
                        LazyImages(64, small, offset=20_000))
    example = torch.zeros(1, 3, 32, 32)
    macs0 = sum(cr.count_macs(model, example).values())
    lo, hi = 0.0, 0.9  # the channel ratio that gives half the MACs (not timed)
    for _ in range(12):
        mid = (lo + hi) / 2
        pruned, _ = one_shot(model, example, mid)
        lo, hi = (mid, hi) if sum(cr.count_macs(pruned, example).values()) > 0.5 * macs0 else (lo, mid)
    t_tp = min(one_shot(model, example, hi)[1] for _ in range(3))
    loader = torch.utils.data.DataLoader(calib, batch_size=128)
    with torch.no_grad():
        t0 = time.perf_counter()
        for x, _ in loader:
            model(x)
        t_pass = time.perf_counter() - t0
    budget = t_tp + 40 * t_pass
    print(f"resnet18 32x32, {macs0 / 1e6:.0f} M MACs; 256 calibration images; {torch.get_num_threads()} threads")
    print(f"Torch-Pruning one-shot MetaPruner (global L1, channel ratio {hi:.3f}) to 50% MACs: {t_tp:.2f} s; "
          f"one plain pass over the calibration images: {t_pass:.2f} s; budget unit (one-shot + 40 passes): {budget:.1f} s")
    for crit in ("distinctiveness", "l1"):
        t0 = time.perf_counter()
        r = compress(model, calib, val=val, test=test, target_macs=0.5, max_drop=None, criterion=crit,
                     stages=("channels",), baselines=(), calibration=256, batch_size=128, progress=False)  # fmt: skip
        t = time.perf_counter() - t0
        print(f"compress channels ({crit}): {100 * r.final['macs_fraction']:.1f}% of the MACs in {len(r.steps)} steps, "
              f"{t:.1f} s = {t / budget:.2f}x (one-shot + 40 passes)   (target <= 3x)")


if __name__ == "__main__":
    main()
