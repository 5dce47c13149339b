"""What flushing denormal floats buys a training step on this CPU: two ways, interleaved step by step.

    python benchmarks/denormals.py --arch resnet18 --prune-stages 1 --steps 24
    python benchmarks/denormals.py --arch mlns_cnn --steps 60
    python benchmarks/denormals.py --arch resnet18 --prune-stages 1 --run r17-r18-prune1-s0   # late in a run

One process, one model, the run's loader and loss, the toolkit's optimizer (torch's fused AdamW, fastai's
betas and eps, the weight-decay groups), from scratch or from a run's epoch checkpoint (weights and
optimizer state: where a long run's state would hold small values); each step runs one of
  keep   -- IEEE denormals (torch's default),
  main   -- `torch.set_flush_denormal(True)`: the calling thread only (x86's MXCSR is per thread: the
            OpenMP threads that were created before keep theirs, so on two threads about half of each op),
alternating, so the host's drift falls on both alike. The first `--warmup` steps train
without being timed, so the optimizer state has had time to fill with small values. Prints the median
seconds of a step and of its optimizer step each way, and the ratios to `keep`.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import machine  # noqa: E402

from mlns_fast.config import resolve_config  # noqa: E402
from mlns_fast.data.loaders import build_dataloaders  # noqa: E402
from mlns_fast.losses import make_loss  # noqa: E402
from mlns_fast.model import create_model  # noqa: E402
from mlns_fast.optim import adamw, decay_groups  # noqa: E402
from mlns_fast.runs import resolve_run  # noqa: E402

WAYS = ("keep", "main")


class MainThreadOnly:
    def __enter__(self):
        torch.set_flush_denormal(True)

    def __exit__(self, *exc):
        torch.set_flush_denormal(False)


def context(way: str):
    if way == "main":
        return MainThreadOnly()
    return contextlib.nullcontext()


def denormal_count(opt) -> int:
    tiny = torch.finfo(torch.float32).tiny
    return sum(int(((t != 0) & (t.abs() < tiny)).sum())
               for st in opt.state.values() for t in st.values() if t.is_floating_point() and t.dim())


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="mlns_cnn")
    ap.add_argument("--prune-stages", type=int, default=0)
    ap.add_argument("--bs", type=int, default=128)
    ap.add_argument("--steps", type=int, default=30, help="timed steps (even: half each way)")
    ap.add_argument("--warmup", type=int, default=6)
    ap.add_argument("--lr", type=float, default=None, help="the optimizer's learning rate (default: the config's)")
    ap.add_argument("--run", default=None, help="a run (folder, name or latest): its model, weights and optimizer state")
    a = ap.parse_args()
    run = resolve_run(a.run) if a.run else None
    if run:  # the run's network, so its checkpoint fits
        model_cfg = run.config().model
        a.arch, a.prune_stages = model_cfg.arch, model_cfg.prune_stages
    cfg = resolve_config(arch=a.arch, bs=a.bs, precision="fp32", ema=0.0, prune_stages=a.prune_stages)
    device = torch.device("cpu")
    torch.manual_seed(0)
    dls = build_dataloaders(cfg, device=device)
    model = create_model(cfg.model, cfg.size)
    if cfg.model.channels_last:
        model = model.to(memory_format=torch.channels_last)
    wrapper = adamw(decay_groups(model), lr=a.lr or cfg.train.lr, wd=cfg.train.wd)
    ck = run.load_checkpoint() if run else None  # checked, weights only: a run folder is untrusted input
    if ck:
        model.load_state_dict(ck["model"])
        wrapper.load_state_dict(ck["opt"])
    opt = wrapper.opt
    loss_func = make_loss(cfg.model.head)
    print(f"machine: {machine()}")
    print(f"arch {a.arch}{f' --prune-stages {a.prune_stages}' if a.prune_stages else ''}, bs {a.bs}, fp32, "
          f"{a.steps} timed steps after {a.warmup}, cycling {', '.join(WAYS)}"
          + (f", from {run.path.name} (epoch {ck['epoch']})" if ck else ", from scratch"))
    print(f"denormal floats in the optimizer state at the start: {denormal_count(opt):,}")
    step_s = {w: [] for w in WAYS}
    opt_s = {w: [] for w in WAYS}
    n = 0
    model.train()
    while n < a.warmup + a.steps:
        for x, *y in dls.train:
            way = WAYS[n % len(WAYS)] if n >= a.warmup else "keep"
            with context(way):
                t0 = time.perf_counter()
                loss = loss_func(model(x).float(), *y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                t1 = time.perf_counter()
                opt.step()
                t2 = time.perf_counter()
            if n >= a.warmup:
                step_s[way].append(t2 - t0)
                opt_s[way].append(t2 - t1)
            n += 1
            if n >= a.warmup + a.steps:
                break
    print(f"denormal floats in the optimizer state at the end: {denormal_count(opt):,}")
    keep = statistics.median(step_s["keep"])
    keep_opt = statistics.median(opt_s["keep"])
    for w in WAYS:
        s, o = statistics.median(step_s[w]), statistics.median(opt_s[w])
        print(f"{w:5s}: step {s:7.3f} s (x{keep / s:5.2f} of keep), optimizer {o:6.3f} s (x{keep_opt / o:6.2f}), "
              f"{len(step_s[w])} steps")
    sys.stdout.flush()
    os._exit(0)  # a fastai DataLoader left mid-epoch can hang the interpreter's exit


if __name__ == "__main__":
    main()
