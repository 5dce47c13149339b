"""Host synchronisations per training step of the toolkit's Learner, counted with torch.profiler (CPU).

    python benchmarks/sync_profile.py --batches 20

Profiles `--batches` training batches of the Learner (mlns_cnn, the default data mix, EMA on,
progress bar on) and counts, per batch, the ops that make the host wait for the device on a GPU:
`aten::_local_scalar_dense` (`.item()`, `float(t)`, `bool(t)`), `aten::nonzero` (boolean-mask
indexing, `.nonzero()`) and device-to-host copies (`aten::_to_copy` to the CPU; none on a CPU run).
Run with `learn.fit` (constant lr): fastai's one-cycle scheduler does its own math on small host
tensors every batch (`.item()` on CPU tensors), which would be counted here but never waits for
a device. Reads inside `Optimizer.step` are listed apart: torch's fused AdamW on a CPU reads its
step counters (host tensors there) once per parameter tensor; on CUDA they stay on the device.
"""
from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

import torch
from fastai.callback.core import Callback, CancelFitException
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).parent))
from common import machine  # noqa: E402

from mlns_fast.callbacks import EMACallback  # noqa: E402
from mlns_fast.config import resolve_config  # noqa: E402
from mlns_fast.data.loaders import build_dataloaders  # noqa: E402
from mlns_fast.model import create_model  # noqa: E402

from mlns_fast.training import build_learner  # noqa: E402

SYNC_OPS = ("aten::_local_scalar_dense", "aten::nonzero", "aten::is_nonzero")


class Profile(Callback):
    """Profiles training batches `warmup` .. `warmup + n - 1`, then ends the fit."""
    order = 1000

    def __init__(self, warmup: int, n: int):
        self.warmup, self.n, self.prof = warmup, n, profile(activities=[ProfilerActivity.CPU])

    def before_batch(self):
        if self.training and self.train_iter == self.warmup:
            self.prof.__enter__()

    def after_batch(self):
        if self.training and self.train_iter == self.warmup + self.n:
            self.prof.__exit__(None, None, None)
            raise CancelFitException()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--bs", type=int, default=32)
    a = ap.parse_args()
    cfg = resolve_config(bs=a.bs, workers=0, precision="bf16")
    device = torch.device("cpu")
    prof = Profile(3, a.batches)
    learn = build_learner(cfg, build_dataloaders(cfg, device=device), create_model(cfg.model, cfg.size), device, "bf16",
                          quiet=False, extra_cbs=[EMACallback(cfg.train.ema), prof])
    learn.fit(100, lr=cfg.train.lr)
    counts = collections.Counter((e.name, in_optimizer(e)) for e in prof.prof.events() if e.name in SYNC_OPS)
    print(f"machine: {machine()}")
    print(f"{a.batches} training batches of {a.bs} (mlns_cnn, bf16, EMA, progress bar); per batch:")
    for op in SYNC_OPS:
        print(f"  {op:28s}: {counts[op, False] / a.batches:6.2f}   (+ {counts[op, True] / a.batches:.2f} inside "
              f"Optimizer.step)")


def in_optimizer(event) -> bool:
    while event is not None:
        if event.name.startswith("Optimizer.step"):
            return True
        event = event.cpu_parent
    return False


if __name__ == "__main__":
    main()
