"""Data speed per worker, stage by stage, on the default mix (75 % synthetic, augmented real images).

    python benchmarks/data_throughput.py --batches 20 --workers 0 1 2 --synth-pool 0 100000

Stages, each on one core (one thread: what a DataLoader worker gets), in images/s:
  render       the synthetic renderer alone (the run's layout and glyphs)
  pool         a synthetic item drawn from a pre-rendered pool (--synth-pool N > 0): index and roll
  augment      albumentations on real images alone
  items        `Items[key]` over the training plan: render or augment, plus the item tensors
  collate      the loader's collation of those items into a batch
  loader W=w   the whole training DataLoader with w workers, batches delivered in this process,
               including the batch transform (uint8 -> float on the device), no model attached
Per-worker figures are the loader's img/s divided by w (w >= 1). Each --synth-pool value repeats
the table (0 = render every synthetic image fresh, the default; N = draw from a pool of N, built
first, or read from the cache, before the timing), and so does each --real-style value:

    python benchmarks/data_throughput.py --batches 20 --workers 1 --real-style 0 0.5
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import machine  # noqa: E402

from mlns_fast.config import resolve_config  # noqa: E402
from mlns_fast.data.loaders import REAL, SYNTH, build_dataloaders  # noqa: E402


def rate(fn, items: list) -> float:
    """Images/s of `fn` over `items` (one call per item) after one warm-up call."""
    fn(items[0])
    t0 = time.perf_counter()
    for it in items:
        fn(it)
    return len(items) / (time.perf_counter() - t0)


def stage_rates(cfg, n_batches: int) -> dict[str, float]:
    dl = build_dataloaders(cfg).train
    items, keys = dl.dataset, dl._plan()[: n_batches * dl.bs]
    synth = [k for k in keys if k[0] == SYNTH]
    real = [k for k in keys if k[0] == REAL]
    out = {"render": rate(lambda k: items.renderer(k[1], k[2]), synth)}
    if items.pool is not None:
        out["pool"] = rate(lambda k: items.pool.item(k[1], k[2]), synth)
    if items.aug is not None:
        out["augment"] = rate(lambda k: items.aug(image=items.real.images[k[2]]), real)
    batch = [items[k] for k in keys[: dl.bs]]
    out["items"] = rate(lambda k: items[k], keys)
    t0 = time.perf_counter()
    for _ in range(n_batches):
        dl.create_batch(batch)
    out["collate"] = n_batches * dl.bs / (time.perf_counter() - t0)
    return out


def loader_rate(cfg, batches: int) -> float:
    """Images/s the training DataLoader delivers (after 2 warm-up batches)."""
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
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--synth-pool", type=int, nargs="+", default=[0])
    ap.add_argument("--real-style", type=float, nargs="+", default=[0.0])
    a = ap.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    print(f"machine: {machine()}")
    for pool, style in [(p, st) for p in a.synth_pool for st in a.real_style]:
        flags = dict(bs=128, synth_pool=pool, real_style=style)  # the default recipe, but for these two
        cfg = resolve_config(**flags)
        t0 = time.perf_counter()
        build_dataloaders(cfg)  # builds the pool (all cores) or reads it from the cache
        print(f"default mix: data={cfg.data.data}, mix={cfg.data.mix}, glyphs={cfg.render.glyphs}, "
              f"elastic={cfg.render.elastic}, augment={cfg.data.augment}, real_style={style}, bs={cfg.data.bs}, "
              f"synth_pool={pool}" + (f" (ready in {time.perf_counter() - t0:.1f} s)" if pool else ""))
        for name, r in stage_rates(cfg, a.batches).items():
            print(f"{name:12s}: {r:8.0f} img/s per core")
        for w in a.workers:
            r = loader_rate(resolve_config(**flags, workers=w), a.batches)
            per = f", {r / w:7.0f} per worker" if w else " (in this process)"
            print(f"loader W={w}  : {r:8.0f} img/s{per}")

if __name__ == "__main__":
    main()
