"""The reading's line map as shifted slices against the four-kernel conv2d it replaced, side by side in one process.

    python benchmarks/ink_maps.py --rounds 6

Alternates the two, round by round: the map alone on a batch of 128 (fp32, channels-last, one channel, as the
model reads it), and eager reading of the default model (untrained: the same speed) on 512 images at batch 256
with `InkFit.line_map` swapped. Prints medians, their ratio and the largest difference between the two maps.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from common import machine  # noqa: E402

from mlns_fast.config import resolve_config  # noqa: E402
from mlns_fast.model import InkFit, create_model  # noqa: E402
from mlns_fast.reading import predict_arrays  # noqa: E402

KERNELS = torch.zeros(4, 1, 3, 3)  # |, -, \, /: the conv2d the slices replaced
KERNELS[0, 0, :, 1] = KERNELS[1, 0, 1, :] = 1 / 3
KERNELS[2, 0], KERNELS[3, 0] = torch.eye(3) / 3, torch.eye(3).flip(1) / 3


def conv_line_map(x: torch.Tensor) -> torch.Tensor:
    return F.conv2d(x, KERNELS.to(x.dtype), padding=1).amax(1, keepdim=True)


def seconds(fn, reps: int) -> float:
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t) / reps


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=6)
    a = ap.parse_args()
    print(f"machine: {machine()}")
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(128, 1, 40, 168, generator=g) * (torch.rand(128, 1, 40, 168, generator=g) > 0.8))
    x = x.contiguous(memory_format=torch.channels_last)
    images = np.random.default_rng(0).integers(0, 256, (512, 40, 168), dtype=np.uint8)
    net = create_model(resolve_config().model, (40, 168)).eval()
    slices = InkFit.line_map
    maps = {"conv2d": conv_line_map, "slices": slices}
    times = {(what, k): [] for what in ("map", "read") for k in maps}
    for fn in maps.values():  # warm-up
        fn(x)
    for _ in range(a.rounds):
        for k, fn in maps.items():
            times["map", k].append(seconds(lambda: fn(x), 20) * 1e3)
            InkFit.line_map = staticmethod(fn)
            times["read", k].append(len(images) / seconds(lambda: predict_arrays(net, images, bs=256), 1))
    InkFit.line_map = staticmethod(slices)
    med = {key: statistics.median(v) for key, v in times.items()}
    print(f"line map, batch 128    : conv2d {med['map', 'conv2d']:.2f} ms, slices {med['map', 'slices']:.2f} ms "
          f"({med['map', 'conv2d'] / med['map', 'slices']:.2f}x)")
    print(f"eager reading, bs 256  : conv2d {med['read', 'conv2d']:.0f} img/s, slices {med['read', 'slices']:.0f} img/s "
          f"({med['read', 'slices'] / med['read', 'conv2d']:.2f}x); medians of {a.rounds} alternating rounds")
    print(f"largest |difference|   : {(conv_line_map(x) - slices(x)).abs().max().item():.1e}")


if __name__ == "__main__":
    main()
