"""Training images/s: the toolkit's fastai Learner vs a plain PyTorch loop, same model, data, batch, precision.

    python benchmarks/train_throughput.py --arch mlns_cnn --batches 40
    python benchmarks/train_throughput.py --arch resnet50 --batches 12 --bs 64
    python benchmarks/train_throughput.py --arch resnet18 --prune-stages 1 --batches 6

Both loops run in one process after warm-up, over the same DataLoader (mixed real + synthetic),
with AdamW (the plain loop: torch fused AdamW over all parameters) and the same autocast; EMA off in both (it is measured separately with --ema).
Prints images/s for each, the ratio Learner / plain (target >= 0.95), peak memory, and the arithmetic
they sustain: FLOPs of a training step per image (torch's FlopCounterMode) times images/s, to set
beside the machine's peak (a step near it is bounded by the model's size, not by the pipeline).
"""
from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import torch
from fastai.callback.core import Callback, CancelFitException

sys.path.insert(0, str(Path(__file__).parent))
from common import Timer, machine, train_flops_per_image  # noqa: E402

from mlns_fast.config import resolve_config  # noqa: E402
from mlns_fast.data.loaders import build_dataloaders  # noqa: E402
from mlns_fast.losses import make_loss  # noqa: E402
from mlns_fast.model import create_model  # noqa: E402
from mlns_fast.device import resolve_precision  # noqa: E402
from mlns_fast.training import build_learner  # noqa: E402


class TimeBatches(Callback):
    order = 100

    def __init__(self, timer):
        self.timer = timer

    def after_batch(self):
        if self.training:
            self.timer.step(len(self.learn.xb[0]))
            if self.timer.done:
                raise CancelFitException()


def learner_rate(cfg, device, n, warmup):
    torch.manual_seed(0)
    timer = Timer(warmup, warmup + n)
    learn = build_learner(cfg, build_dataloaders(cfg, device=device), create_model(cfg.model, cfg.size), device,
                          resolve_precision(cfg.train.precision, device), quiet=True, extra_cbs=[TimeBatches(timer)])
    learn.fit(100, lr=cfg.train.lr)
    return timer.rate


def plain_rate(cfg, device, n, warmup):
    torch.manual_seed(0)
    dls = build_dataloaders(cfg, device=device)
    model = create_model(cfg.model, cfg.size).to(device)
    if cfg.model.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.wd, fused=True)
    loss_func = make_loss(cfg.model.head)
    precision = resolve_precision(cfg.train.precision, device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype else contextlib.nullcontext
    timer = Timer(warmup, warmup + n)
    model.train()
    while not timer.done:
        for x, *y in dls.train:
            with autocast():
                out = model(x)
            loss = loss_func(out.float(), *y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            timer.step(len(x))
            if timer.done:
                break
    return timer.rate


def step_flops(cfg, device) -> float:
    """FLOPs of one training step per image, counted on one batch of the run's loader."""
    torch.manual_seed(0)
    x, *y = next(iter(build_dataloaders(cfg, device=device).train))
    model = create_model(cfg.model, cfg.size).to(device)
    loss_func = make_loss(cfg.model.head)
    return train_flops_per_image(model, x, lambda out: loss_func(out.float(), *y))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="mlns_cnn")
    ap.add_argument("--bs", type=int, default=128)
    ap.add_argument("--batches", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--prune-stages", type=int, default=0, help="timm backbones: remove the last N stages")
    ap.add_argument("--synth-pool", type=int, default=0, help="draw synthetic images from a pre-rendered pool of N")
    a = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = resolve_config(arch=a.arch, bs=a.bs, precision=a.precision, channels_last=a.channels_last,
                         workers=a.workers, ema=0.0, synth_pool=a.synth_pool, prune_stages=a.prune_stages)
    print(f"machine: {machine()}")
    print(f"arch {a.arch}{f' --prune-stages {a.prune_stages}' if a.prune_stages else ''}, bs {a.bs}, precision {resolve_precision(a.precision, device)}, "
          f"channels_last {a.channels_last}, workers {a.workers}, synth_pool {a.synth_pool}, {a.batches} batches after {a.warmup} warm-up")
    plain = plain_rate(cfg, device, a.batches, a.warmup)
    learner = learner_rate(cfg, device, a.batches, a.warmup)
    print(f"plain PyTorch loop : {plain:8.1f} img/s")
    print(f"fastai Learner     : {learner:8.1f} img/s")
    print(f"ratio Learner/plain: {learner / plain:8.3f}")
    flops = step_flops(cfg, device)
    print(f"training arithmetic: {flops / 1e9:8.3f} GFLOP per image (forward + backward); sustained "
          f"{plain * flops / 1e9:.1f} (plain) / {learner * flops / 1e9:.1f} (Learner) GFLOP/s")
    import resource
    print(f"peak memory        : {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:8.0f} MiB RSS (process)"
          + (f", {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB CUDA" if torch.cuda.is_available() else ""))


if __name__ == "__main__":
    main()
