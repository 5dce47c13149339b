"""One optimizer step over a model's parameters: fastai `Adam` vs the toolkit's wrapper vs bare torch AdamW.

    python benchmarks/optim_step.py --arch resnet50 --steps 20

Gradients come from one backward pass (a tiny batch: their shapes are the parameters'), then each
optimizer steps `--steps` times after 3 warm-up steps on its own copy of the parameters; prints the
median ms per step, the ratio to `AdamW(fused=True)` (target for the wrapper: <= 1.2) and the
top-level tensor ops per step counted with `torch.profiler`.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import timm
import torch
from fastai.optimizer import Adam

sys.path.insert(0, str(Path(__file__).parent))
from common import machine  # noqa: E402

from mlns_fast.optim import adamw, decay_groups  # noqa: E402


def optimizers():
    """name -> (model -> optimizer with a .step()), each with the recipe's hyper-parameters."""
    hp = dict(lr=1e-3, betas=(0.9, 0.99), eps=1e-5, weight_decay=0.05)
    return {
        "fastai Adam": lambda m: Adam(list(m.parameters()), lr=1e-3, wd=0.05),
        "toolkit (fused AdamW, OptimWrapper)": lambda m: adamw(decay_groups(m), lr=1e-3, wd=0.05),
        "torch AdamW(foreach=True)": lambda m: torch.optim.AdamW(m.parameters(), foreach=True, **hp),
        "torch AdamW(fused=True)": lambda m: torch.optim.AdamW(m.parameters(), fused=True, **hp),
    }


def time_steps(opts: dict, steps: int) -> dict[str, float]:
    """Median milliseconds of one `opt.step()` per optimizer after 3 warm-up steps, the optimizers
    taking turns step by step (so that load from other processes is shared fairly)."""
    times = {name: [] for name in opts}
    for i in range(steps + 3):
        for name, opt in opts.items():
            t0 = time.perf_counter()
            opt.step()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            if i >= 3:
                times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) * 1000 for name, t in times.items()}


def ops_per_step(opt) -> int:
    """Top-level aten ops one step issues (one kernel launch each on a GPU)."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        opt.step()
    aten = lambda e: e is not None and e.name.startswith("aten::")  # noqa: E731
    return sum(1 for e in prof.events() if aten(e) and not aten(e.cpu_parent))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="resnet50")
    ap.add_argument("--steps", type=int, default=20)
    a = ap.parse_args()
    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    base = timm.create_model(a.arch, num_classes=37).to(device)
    base(torch.randn(2, 3, 64, 64, device=device)).sum().backward()
    print(f"machine: {machine()}")
    print(f"{a.arch}: {sum(p.numel() for p in base.parameters()) / 1e6:.1f} M parameters in "
          f"{len(list(base.parameters()))} tensors; median of {a.steps} steps")
    opts = {}
    for name, make in optimizers().items():
        model = copy.deepcopy(base)  # its own parameters (deepcopy leaves the gradients behind)
        for p, q in zip(base.parameters(), model.parameters()):
            q.grad = p.grad.clone()
        opts[name] = make(model)
    ms = time_steps(opts, a.steps)
    fused = ms["torch AdamW(fused=True)"]
    for name, opt in opts.items():
        print(f"{name:36s}: {ms[name]:7.1f} ms/step  {ms[name] / fused:5.2f}x fused  "
              f"{ops_per_step(opt):5d} top-level ops")


if __name__ == "__main__":
    main()
