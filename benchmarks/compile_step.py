"""Eager vs `torch.compile` (what `--compile` does: `model.compile()`) per training step of a model.

    python benchmarks/compile_step.py --arch mlns_cnn --bs 128 --steps 10

One step = forward under the run's autocast, the loss, backward and a fused AdamW step, on a fixed
random batch (no data loading). Prints the first compiled step (compilation included) and the
median ms per step of each mode after warm-up.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, step_seconds, training_step  # noqa: E402

from mlns_fast.config import resolve_config  # noqa: E402
from mlns_fast.device import resolve_precision  # noqa: E402


def step_times(cfg, compiled: bool, steps: int, device) -> tuple[float, float]:
    """(first step's seconds, median ms of the next `steps` steps)."""
    times = step_seconds(training_step(cfg, device, compiled), steps + 2)
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
