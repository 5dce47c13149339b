"""Eager vs `torch.compile` (what `--compile` does: `model.compile()`) per training step of a model.

    python benchmarks/compile_step.py --arch mlns_cnn --bs 128 --steps 10

One step = forward under the run's autocast, the loss, backward and a fused AdamW step, on a fixed
random batch (no data loading). Prints the first compiled step (compilation included) and the
median ms per step of each mode after warm-up.
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import machine  # noqa: E402

from mlns_fast.config import resolve_config  # noqa: E402
from mlns_fast.device import resolve_precision  # noqa: E402
from mlns_fast.losses import make_loss  # noqa: E402
from mlns_fast.model import create_model  # noqa: E402
from mlns_fast.optim import adamw, decay_groups  # noqa: E402


def step_times(cfg, compiled: bool, steps: int, device) -> tuple[float, float]:
    """(first step's seconds, median ms of the next `steps` steps)."""
    torch.manual_seed(0)
    model = create_model(cfg.model, cfg.size).to(device)
    if cfg.model.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if compiled:
        model.compile()
    opt, loss_func = adamw(decay_groups(model), lr=1e-3, wd=0.05), make_loss(cfg.model.head)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(resolve_precision(cfg.train.precision, device))
    autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype else contextlib.nullcontext
    bs, (h, w) = cfg.data.bs, cfg.size
    x = torch.rand(bs, 1, h, w, device=device)
    y = (torch.randint(0, 37, (bs,), device=device), torch.randint(0, 10, (bs, 4), device=device),
         torch.rand(bs, device=device) < 0.75)
    times = []
    for _ in range(steps + 2):
        t0 = time.perf_counter()
        with autocast():
            out = model(x)
        loss_func(out.float(), *y).backward()
        opt.step()
        opt.zero_grad()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return times[0], statistics.median(times[2:]) * 1000


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="mlns_cnn")
    ap.add_argument("--bs", type=int, default=128)
    ap.add_argument("--steps", type=int, default=10)
    a = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = resolve_config(arch=a.arch, bs=a.bs)
    print(f"machine: {machine()}")
    print(f"arch {a.arch}, bs {a.bs}, precision {resolve_precision(cfg.train.precision, device)}, "
          f"channels_last {cfg.model.channels_last}; median of {a.steps} steps after 2")
    first_e, eager = step_times(cfg, False, a.steps, device)
    first_c, comp = step_times(cfg, True, a.steps, device)
    print(f"eager   : {eager:8.1f} ms/step ({a.bs / eager * 1000:7.0f} img/s), first step {first_e:6.1f} s")
    print(f"compiled: {comp:8.1f} ms/step ({a.bs / comp * 1000:7.0f} img/s), first step {first_c:6.1f} s "
          f"(compilation)")
    print(f"speed-up compiled / eager: {eager / comp:.3f}")


if __name__ == "__main__":
    main()
