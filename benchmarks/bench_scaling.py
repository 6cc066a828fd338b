"""What each analysis costs, as a multiple of one plain inference pass over the same data, and what a
second process buys.

1. The table: for torchvision resnet18 and resnet50 (random weights, 10 classes) at 64x64 and at
   224x224 (few images), each analysis' time divided by the time of one plain inference pass over
   the same images, so that ``analysis time = k x inference time`` (inference: the best of three
   passes before and three after the analyses). Sweeps are per unit (per
   shuffled channel: 8 channels of each of three layers; per ablated conv: every conv), the
   others for the whole analysis. Impulse responses need no data: their time in seconds at 64x64.
2. Setup: the fixed cost of an analysis (tracing, building results) against its per-image cost:
   time at 256 images over 256 x (the cost of one more image, from 256 and 768 images).
3. Distributed: the same analyses in 2 gloo processes of 1 thread against 1 process of 1 thread
   (both under ``torchrun --standalone``, timed inside the workers, the best of two calls each; three
   launches of each, alternating, and the best of them), and whether every run gave the same JSON
   (``meta.world_size`` aside). Beside them, in the same launches, plain inference with each process
   running its own batches and nothing exchanged: the most a second process can give on this
   machine at the time (two processes share its memory bandwidth, and the other load on it).

Run: ``python benchmarks/bench_scaling.py`` (``--quick`` for the 64x64 part alone). On a GPU:
``python benchmarks/bench_scaling.py --quick --device cuda`` gives the table and the impulse times
there (the model on the GPU, batches copied to it; every timing waits for the GPU to finish), with
images per second of plain inference; the distributed part stays on the CPU (gloo).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("CNN_REDUNDANCY_QUIET", "1")

import torch  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

import cnn_redundancy as cr  # noqa: E402
from cnn_redundancy.core.batches import resolve_device  # noqa: E402

DEVICE = torch.device("cpu")  # where the table's models and analyses run (--device)
SHUFFLED = ("layer1.0.conv2", "layer3.0.conv2", "layer4.0.conv2")  # an early, a middle and a late layer
CHANNELS = list(range(8))


def images(n: int, side: int, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 3, side, side, generator=g), torch.randint(0, 10, (n,), generator=g))


def model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return cr.get_model(f"torchvision:{name}", num_classes=10).eval()


def _synchronize() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


def timed(fn) -> float:
    _synchronize()
    t = time.perf_counter()
    fn()
    _synchronize()  # a GPU's work is done when it says so, not when the call returns
    return time.perf_counter() - t


def inference(m: torch.nn.Module, data, batch_size: int) -> float:
    """Seconds of the best of three plain forward passes over ``data`` (no hooks, no analysis)."""

    def run() -> None:
        with torch.no_grad():
            for x, _ in DataLoader(data, batch_size=batch_size, pin_memory=DEVICE.type == "cuda"):
                m(x.to(DEVICE, non_blocking=True))

    return min(timed(run) for _ in range(3))


def multiples(name: str, side: int, n: int, n_sweep: int, batch_size: int) -> dict[str, float]:
    """``{analysis: time / inference time over the same images}`` (sweeps per unit); impulse in seconds."""
    m = model(name).to(DEVICE)  # the analyses run where the model is
    data, sweep_data = images(n, side), images(n_sweep, side)
    kw = {"batch_size": batch_size, "progress": False}
    t_inf, t_sweep_inf = inference(m, data, batch_size), inference(m, sweep_data, batch_size)
    n_convs = len(cr.conv_layers(m))
    units = len(SHUFFLED) * len(CHANNELS)
    times = {  # (seconds, units): 0 units for one pass over ``data``, else that many units over ``sweep_data``
        "evaluate (accuracy)": (timed(lambda: cr.evaluate(m, data, **kw)), 0),
        "distinctiveness (every conv)": (timed(lambda: cr.distinctiveness(m, data, **kw)), 0),
        "strongest-activation labels (every conv)": (timed(lambda: cr.strongest_activation_labels(m, data, **kw)), 0),
        "channel shuffle, cosine only, per channel": (timed(lambda: cr.channel_shuffle(
            m, sweep_data, list(SHUFFLED), channels=CHANNELS, metric=None, **kw)), units),
        "channel shuffle, accuracy + cosine, per channel": (timed(lambda: cr.channel_shuffle(
            m, sweep_data, list(SHUFFLED), channels=CHANNELS, **kw)), units),
        "zero-ablation, per ablated conv": (timed(lambda: cr.zero_ablation(m, sweep_data, **kw)), n_convs),
    }  # fmt: skip
    # inference timed again after the analyses, the best kept: a burst of other load on the machine during
    # the first timing would otherwise shrink every multiple of the column
    t_inf = min(t_inf, inference(m, data, batch_size))
    t_sweep_inf = min(t_sweep_inf, inference(m, sweep_data, batch_size))
    out = {k: t / (per * t_sweep_inf if per else t_inf) for k, (t, per) in times.items()}
    out["inference ms/image"] = 1000 * t_inf / n
    out["inference images/s"] = n / t_inf
    return out


def table(configs: list[tuple[str, int, int, int, int]]) -> None:
    cols = {f"{name} {side}x{side}": multiples(name, side, n, n_sweep, bs) for name, side, n, n_sweep, bs in configs}
    header = " | ".join(cols)
    print(f"| analysis (k = time / one inference pass over the same images) | {header} |")
    print("|---|" + "---|" * len(cols))
    for row in next(iter(cols.values())):
        cells = " | ".join(f"{c[row]:.2f}" if "ms" in row else f"{c[row]:.0f}" if "/s" in row else f"{c[row]:.3g}x"
                           for c in cols.values())  # fmt: skip
        print(f"| {row} | {cells} |")
    sizes = ", ".join(f"{name} {side}x{side}: {n} images ({n_sweep} for the sweeps)" for name, side, n, n_sweep, _ in configs)
    where = f"{torch.cuda.get_device_name(DEVICE)} ({DEVICE})" if DEVICE.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"images: {sizes}; {where}")


def impulse() -> None:
    """Impulse responses and their NCC need no data: seconds (goal: resnet50 at 64x64 in at most 10 s)."""
    with warnings.catch_warnings():  # the deepest maps are 2x2 at 64x64: timed all the same, not warned about
        warnings.simplefilter("ignore")
        times = {name: timed(lambda name=name: cr.impulse_response(model(name).to(DEVICE), input_shape=(3, 64, 64)))
                 for name in ("resnet18", "resnet50")}  # fmt: skip
    print("impulse_response (responses + NCC of every conv layer, 64x64): "
          + ", ".join(f"{name} {t:.1f} s" for name, t in times.items()) + " (goal for resnet50: <= 10 s)")
    narrow_impulse()


def narrow_impulse() -> None:
    """Few kernels on mid-size maps: the NCC's path chosen per layer against the direct path on every layer
    (what a cost model of multiply-adds alone chose here: it left out the direct path's cost per shift)."""
    from cnn_redundancy.core import metrics

    torch.manual_seed(0)
    layers = [torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU()]
    for _ in range(39):
        layers += [torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU()]
    net = torch.nn.Sequential(*layers).eval()
    run = lambda: cr.impulse_response(net, input_shape=(3, 24, 24))  # noqa: E731
    chosen, cheaper = min(timed(run) for _ in range(2)), metrics._fourier_is_cheaper
    metrics._fourier_is_cheaper = lambda *a: False
    try:
        direct = min(timed(run) for _ in range(2))
    finally:
        metrics._fourier_is_cheaper = cheaper
    print(f"impulse_response, 40 convs of 8 kernels at 24x24: {chosen:.2f} s, {direct / chosen:.1f}x faster than "
          f"the direct path on every layer ({direct:.2f} s)")


def setup_cost() -> None:
    """Time at 256 images against 256 times the cost of one more image (goal: at most 2x)."""
    for name, side, analysis in (("resnet50", 32, "distinctiveness"), ("mobilenet_v2", 32, "zero-ablation")):
        m, fn = model(name), cr.get_analysis(analysis).fn

        def run(n: int, m=m, fn=fn, side=side) -> None:
            fn(m, images(n, side), batch_size=256, progress=False)

        run(8)  # warm-up
        t = {n: min(timed(lambda n=n: run(n)) for _ in range(2)) for n in (256, 768)}
        per_image = (t[768] - t[256]) / 512
        print(f"{analysis} on {name} {side}x{side}: 256 images {t[256]:.2f} s, 768 images {t[768]:.2f} s; "
              f"time at 256 images = {t[256] / (256 * per_image):.2f} x 256 x the per-image cost (goal <= 2)")


PLAIN = "plain inference (each process its own batches, nothing exchanged)"


def worker(out: Path) -> None:
    """Under torchrun: time three analyses inside the process group; rank 0 writes times and results."""
    from cnn_redundancy.core.distributed import launched, rank, world_size

    torch.set_num_threads(1)
    m, data, more = model("resnet18"), images(256, 64), images(1024, 64)
    kw = {"batch_size": 32, "progress": False}

    def plain() -> None:  # this process' batches, nothing exchanged: the most a second process can give here
        with torch.no_grad():
            for i, (x, _) in enumerate(DataLoader(data, batch_size=32)):
                if i % world_size() == rank():
                    m(x)
        torch.distributed.barrier() if world_size() > 1 else None  # done when the slower process is

    runs = {
        PLAIN: plain,
        "distinctiveness": lambda: cr.distinctiveness(m, data, **kw),
        "distinctiveness, 1,024 images": lambda: cr.distinctiveness(m, more, **kw),
        "channel shuffle (accuracy + cosine, 16 channels of layer3.0.conv2)":
            lambda: cr.channel_shuffle(m, data, "layer3.0.conv2", channels=range(16), **kw),
        "zero-ablation (layer4)": lambda: cr.zero_ablation(m, data, "layer4.*", **kw),
    }  # fmt: skip
    with launched("cpu"):
        cr.evaluate(m, images(32, 64), batch_size=32, progress=False)  # warm-up
        times, results = {}, {}
        for label, run in runs.items():
            best = math.inf
            for _ in range(2):  # the best of two: the first call also pays one-time costs (allocator, buffers)
                torch.distributed.barrier() if world_size() > 1 else None
                t = time.perf_counter()
                res = run()  # None for plain inference
                best = min(best, time.perf_counter() - t)
            times[label] = best
            if res is not None:
                d = res.to_dict()
                d["meta"].pop("world_size")
                results[label] = d
        if rank() == 0:
            out.write_text(json.dumps({"times": times, "results": results, "world_size": world_size()}))


def distributed_overhead(rounds: int = 3) -> None:
    """1 process against 2, launched alternately ``rounds`` times each; the best time of each side (the
    machine's other load only ever slows a run down), and whether every run gave the same JSON."""
    here = Path(__file__).resolve()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CNN_REDUNDANCY_QUIET": "1", "MASTER_ADDR": "127.0.0.1"}
    best: dict[int, dict[str, float]] = {1: {}, 2: {}}
    results: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(rounds):
            for n in (1, 2):
                out = Path(tmp) / f"{n}.json"
                cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(n),
                       str(here), "--worker", str(out)]  # fmt: skip
                subprocess.run(cmd, check=True, env=env, capture_output=True, text=True)
                got = json.loads(out.read_text())
                for label, t in got["times"].items():
                    best[n][label] = min(best[n].get(label, math.inf), t)
                results.append(got["results"])
    print(f"resnet18 64x64, 256 images in batches of 32 unless said, 1 thread per process (torchrun --standalone, "
          f"gloo); best of {rounds} launches of each, alternating:")  # fmt: skip
    ceiling = best[1][PLAIN] / best[2][PLAIN]
    for label, t1 in best[1].items():
        t2 = best[2][label]
        line = f"  {label}: 1 process {t1:.2f} s, 2 processes {t2:.2f} s: {t1 / t2:.2f}x faster"
        if label != PLAIN:
            same = all(r[label] == results[0][label] for r in results)
            line += f" ({t1 / t2 / ceiling:.0%} of plain inference's); same JSON: {same}"
        print(line)


def main() -> None:
    ap = argparse.ArgumentParser(description="each analysis as a multiple of plain inference; 2 processes against 1")
    ap.add_argument("--quick", action="store_true", help="the 64x64 table and the distributed part only")
    ap.add_argument("--device", default="cpu", help="where the table and the impulse times run: cpu, cuda or cuda:N")
    ap.add_argument("--worker", type=Path, help="(internal) a torchrun worker writing its times to this file")
    args = ap.parse_args()
    if args.worker:
        return worker(args.worker)
    global DEVICE
    DEVICE = resolve_device(args.device)
    cr.set_progress(False)
    configs = [("resnet18", 64, 256, 64, 64), ("resnet50", 64, 256, 64, 64)]
    if not args.quick:
        configs += [("resnet18", 224, 16, 8, 8), ("resnet50", 224, 16, 8, 8)]
    table(configs)
    impulse()
    if not args.quick:
        setup_cost()
    distributed_overhead()


if __name__ == "__main__":
    main()
