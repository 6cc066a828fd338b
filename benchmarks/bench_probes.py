"""Shuffle-probe speed and memory: fast engine vs the naive way vs Captum's LayerFeaturePermutation.

Sweep the input channels of ``layer4.0.conv2`` of torchvision ``resnet18`` (random weights, 10
classes) over 256 images of 64x64 in batches of 128. Times are per perturbed channel, measured in
this run; ratios compare against the naive way (one full forward pass per channel with an
input-permuting pre-hook) and Captum's LayerFeaturePermutation (one full forward per channel).
Each is measured three times, interleaved with the others, and the best time counts.

Run: ``python benchmarks/bench_probes.py`` (``--quick`` for fewer channels).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch

os.environ.setdefault("CNN_REDUNDANCY_QUIET", "1")

from cnn_redundancy import (
    channel_shuffle,  # noqa: E402
    get_model,  # noqa: E402
)
from lazy_images import LazyImages  # noqa: E402

LAYER = "layer4.0.conv2"
ROUNDS = 3


def model():
    torch.manual_seed(0)
    return get_model("torchvision:resnet18", num_classes=10).eval()


def timed(fn, *args, **kw):
    t = time.perf_counter()
    out = fn(*args, **kw)
    return out, time.perf_counter() - t


def captum_per_channel(m, data, n_channels: int) -> float:
    """Captum permutes a layer's output: permuting bn1's output channels equals permuting conv2's input
    channels (the ReLU between them is elementwise)."""
    from captum.attr import LayerFeaturePermutation

    block = m.layer4[0]
    c = block.conv2.in_channels
    mask = torch.full((1, c, 1, 1), n_channels, dtype=torch.long)
    mask[0, :n_channels, 0, 0] = torch.arange(n_channels)  # n_channels groups + one group for the rest
    loader = torch.utils.data.DataLoader(data, batch_size=128)
    t = time.perf_counter()
    with torch.no_grad():
        for x, y in loader:
            # per-example logit of the true class (Captum selects targets twice if given target=)
            lfp = LayerFeaturePermutation(lambda inp, y=y: m(inp)[torch.arange(len(y)), y], block.bn1)
            lfp.attribute(x, layer_mask=mask)
    return (time.perf_counter() - t) / (n_channels + 1)


def memory_child(n_images: int) -> None:
    m = model()
    data = LazyImages(n_images)
    channel_shuffle(m, data, LAYER, channels=range(4), batch_size=128)  # warm-up: allocator, fx trace
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    channel_shuffle(m, data, LAYER, channels=range(16), batch_size=128)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"n": n_images, "base_mb": base / 1024, "peak_mb": peak / 1024}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--memory-child", type=int)
    args = ap.parse_args()
    if args.memory_child:
        memory_child(args.memory_child)
        return
    torch.set_num_threads(os.cpu_count() or 1)
    m = model()
    data = LazyImages(256)
    n_slow = 4 if args.quick else 8
    n_fast = 32 if args.quick else 128
    print(f"resnet18 {LAYER} ({m.get_submodule(LAYER).in_channels} input channels), 256 images 64x64, batch 128, "
          f"{torch.get_num_threads()} threads")  # fmt: skip
    # warm-up (fx tracing, allocator)
    channel_shuffle(m, data, LAYER, channels=[0], batch_size=128, engine="fast")

    # every measurement ROUNDS times, interleaved, keeping the best: the machine's other load only ever
    # slows a run down, and interleaving exposes each side to the same conditions
    best: dict[str, float] = {}

    def note(name: str, t: float) -> None:
        best[name] = min(best.get(name, t), t)

    def keep(name: str, fn, *args, **kw):
        out, t = timed(fn, *args, **kw)
        note(name, t)
        return out

    for _ in range(ROUNDS):
        naive_m = keep("naive_m", channel_shuffle, m, data, LAYER, channels=range(n_slow), batch_size=128, engine="naive")
        fast_m = keep("fast_m", channel_shuffle, m, data, LAYER, channels=range(n_fast), batch_size=128, engine="fast")
        naive_c = keep("naive_c", channel_shuffle, m, data, LAYER, channels=range(n_slow), batch_size=128,
                       engine="naive", metric=None)  # fmt: skip
        fast_c = keep("fast_c", channel_shuffle, m, data, LAYER, batch_size=128, engine="fast", metric=None)
        note("captum", captum_per_channel(m, data, n_slow))  # per channel, timed inside
    t_naive_m, t_fast_m, t_naive_c, t_fast_c, t_captum = (best[k] for k in ("naive_m", "fast_m", "naive_c", "fast_c", "captum"))
    n_all = len(fast_c.channels[LAYER])

    per = {
        "naive (hook + full forward per channel)": t_naive_m / n_slow,
        "captum LayerFeaturePermutation": t_captum,
        "fast metric sweep (accuracy + cosine)": t_fast_m / n_fast,
        "naive cosine sweep": t_naive_c / n_slow,
        "fast cosine sweep (metric=None)": t_fast_c / n_all,
    }
    for k, v in per.items():
        print(f"  {k:44s} {v * 1000:9.2f} ms/channel")
    nm = per["naive (hook + full forward per channel)"]
    fm = per["fast metric sweep (accuracy + cosine)"]
    fc = per["fast cosine sweep (metric=None)"]
    print(f"metric sweep: {nm / fm:5.1f}x faster than naive, {t_captum / fm:5.1f}x faster than captum   (target >= 3x)")
    print(f"cosine sweep: {per['naive cosine sweep'] / fc:5.1f}x faster than naive, {t_captum / fc:5.1f}x faster than captum   (target >= 10x)")

    k = n_slow
    dcos = max(abs(a - b) for ra, rb in zip(fast_m.cosine[LAYER][:k], naive_m.cosine[LAYER]) for a, b in zip(ra, rb))
    dcos_c = max(abs(a - b) for ra, rb in zip(fast_c.cosine[LAYER][:k], naive_c.cosine[LAYER]) for a, b in zip(ra, rb))
    same_metric = fast_m.metric[LAYER][:k] == naive_m.metric[LAYER] and fast_m.baseline == naive_m.baseline
    print(f"same numbers: max |cosine fast - naive| = {max(dcos, dcos_c):.2e}; accuracies identical: {same_metric}")

    rows = []
    for n in (256, 1024) if args.quick else (256, 1024, 4096):
        out = subprocess.run([sys.executable, __file__, "--memory-child", str(n)], capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    one_batch = 128 * m.get_submodule(LAYER).in_channels * 2 * 2 * 4 / 2**20
    for r in rows:
        print(f"memory: {r['n']:5d} images: peak RSS {r['peak_mb']:7.1f} MB (after warm-up {r['base_mb']:7.1f} MB)")
    growth = rows[-1]["peak_mb"] - rows[0]["peak_mb"]
    print(f"memory growth from {rows[0]['n']} to {rows[-1]['n']} images: {growth:+.1f} MB "
          f"({rows[-1]['n'] // rows[0]['n']}x the data; one batch of conv2 input is {one_batch:.1f} MB)")  # fmt: skip


if __name__ == "__main__":
    main()
