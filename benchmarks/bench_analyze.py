"""``analyze`` with its default lenses against plain inference on the same data.

torchvision resnet18 (10 classes, random weights), 1,024 random images of 64x64 (seeded per index,
made on access), batch 128. The baseline is one plain inference pass over the same 1,024 images,
timed in the same run (the best of three). Printed: each lens's time as a multiple of that pass,
the total (target: at most 60 passes), and the peak memory growth from 512 to 2,048 images.

Run: ``python benchmarks/bench_analyze.py`` (``--model torchvision:resnet50`` for a deeper model).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

os.environ.setdefault("CNN_REDUNDANCY_QUIET", "1")

import torch  # noqa: E402

import cnn_redundancy as cr  # noqa: E402
from cnn_redundancy.survey import analyze  # noqa: E402
from lazy_images import LazyImages  # noqa: E402


def plain_pass(model, data) -> float:
    loader = torch.utils.data.DataLoader(data, batch_size=128)
    best = float("inf")
    with torch.no_grad():
        for _ in range(3):
            t0 = time.perf_counter()
            for x, _ in loader:
                model(x)
            best = min(best, time.perf_counter() - t0)
    return best


def memory_child(name: str, n: int) -> None:
    torch.manual_seed(0)
    model = cr.get_model(name, num_classes=10).eval()
    analyze(model, LazyImages(256), lenses=["dead", "distinctiveness", "cka"], batch_size=128, progress=False)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    analyze(model, LazyImages(n), lenses=["dead", "distinctiveness", "cka"], batch_size=128, progress=False)
    print(json.dumps({"n": n, "growth_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="torchvision:resnet18")
    ap.add_argument("--images", type=int, default=1024)
    ap.add_argument("--memory-child", type=int)
    args = ap.parse_args()
    if args.memory_child:
        memory_child(args.model, args.memory_child)
        return
    torch.manual_seed(0)
    model = cr.get_model(args.model, num_classes=10).eval()
    data = LazyImages(args.images)
    # the data analyze reads (it holds out a fifth for validation): time a plain pass over the same images
    t_pass = plain_pass(model, data)
    t0 = time.perf_counter()
    res = analyze(model, data, batch_size=128, progress=False)
    total = time.perf_counter() - t0
    print(f"{args.model}, {args.images} images 64x64 ({res.data['analysis']} analysed, {res.data['validation']} "
          f"held out), batch 128, {torch.get_num_threads()} threads; one plain pass over {args.images} images: "
          f"{t_pass:.2f} s")  # fmt: skip
    per_pass = t_pass * res.data["analysis"] / args.images
    print(f"  per lens, in plain passes over the {res.data['analysis']} analysed images (the total and the estimate: "
          f"over all {args.images}):")  # fmt: skip
    for lens, secs in res.meta["seconds"].items():
        info = res.lenses[lens]
        print(f"  {lens:16s} {secs / per_pass:6.1f} passes  ({secs:6.1f} s) {info['status']}"
              + (f"; {info['sampled']}" if info.get("sampled") else ""))
    est = total - sum(res.meta["seconds"].values())
    print(f"  {'estimate+setup':16s} {est / t_pass:6.1f} passes  ({est:6.1f} s)")
    print(f"analyze total: {total / t_pass:.1f} plain inference passes over the same {args.images} images "
          f"({total:.0f} s; target <= 60)")  # fmt: skip
    rows = []
    for n in (512, 2048):
        out = subprocess.run([sys.executable, __file__, "--model", args.model, "--memory-child", str(n)],
                             capture_output=True, text=True, check=True)  # fmt: skip
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"memory (streamed lenses): peak RSS growth {rows[0]['growth_mb']:+.1f} MB at {rows[0]['n']} images, "
          f"{rows[1]['growth_mb']:+.1f} MB at {rows[1]['n']} images")


if __name__ == "__main__":
    main()
