"""Data speed: renderer images/s on one core, and DataLoader images/s with W workers vs the model's training speed.

    python benchmarks/data_throughput.py --n 5000 --workers 0 1 2
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import cv2
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import machine  # noqa: E402

from mlns_fast.config import LAYOUTS, resolve_config  # noqa: E402
from mlns_fast.data.loaders import build_dataloaders  # noqa: E402
from mlns_fast.data.mnist import embedded_bank  # noqa: E402
from mlns_fast.data.render import Renderer  # noqa: E402


def renderer_rate(layout: str, glyphs: str, n: int) -> float:
    cv2.setNumThreads(1)  # one core: what a DataLoader worker gets
    r = Renderer(replace(LAYOUTS[layout], glyphs=glyphs), embedded_bank("train"), seed=0)
    r(0)
    t0 = time.perf_counter()
    for i in range(n):
        r(i)
    return n / (time.perf_counter() - t0)


def loader_rate(mode: str, workers: int, batches: int) -> float:
    cfg = resolve_config(data=mode, workers=workers, bs=128)
    dl = build_dataloaders(cfg).train
    t0, n = None, 0
    for i, (x, *_) in enumerate(dl):
        if i == 2:
            t0 = time.perf_counter()
        elif i > 2:
            n += len(x)
        if i == batches + 2:
            break
    return n / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--batches", type=int, default=30)
    a = ap.parse_args()
    torch.set_num_threads(1)
    print(f"machine: {machine()}")
    for layout in ("train", "course"):
        for glyphs in ("handwriting", "fonts", "mixed"):
            print(f"renderer {layout:6s} {glyphs:11s}: {renderer_rate(layout, glyphs, a.n):7.0f} img/s per core")
    for mode in ("synthetic", "mixed"):
        for w in a.workers:
            print(f"DataLoader {mode:9s} workers={w}: {loader_rate(mode, w, a.batches):7.0f} img/s")


if __name__ == "__main__":
    main()
