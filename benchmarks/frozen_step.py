"""What a training step costs with the backbone's first stages frozen, as `--freeze-out` leaves them.

    python benchmarks/frozen_step.py                                   # the default CNN: 0, 1 and 2 stages frozen
    python benchmarks/frozen_step.py --arch resnet18 --prune-stages 2

One step = what `compile_step.py` times (forward under the run's autocast, the loss, backward, fused AdamW) on
a fixed random batch, no loader. The settings take turns (`--rounds` rounds of `--steps` steps each), so a
slow minute of a shared host falls on all of them; it prints each one's median and its ratio to the step with
every stage training. Run it on an otherwise idle machine.
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
from mlns_fast.model import backbone_stages, create_model  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="mlns_cnn")
    ap.add_argument("--prune-stages", type=int, default=0)
    ap.add_argument("--bs", type=int, default=128)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=4)
    a = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = resolve_config(arch=a.arch, prune_stages=a.prune_stages, bs=a.bs)
    stages = len(backbone_stages(create_model(cfg.model, cfg.size).backbone))
    print(f"machine: {machine()}")
    print(f"arch {a.arch} (prune {a.prune_stages}: {stages} stages), bs {a.bs}, precision "
          f"{resolve_precision(cfg.train.precision, device)}; {a.rounds} rounds of {a.steps} steps, taking turns")
    steps = {k: training_step(cfg, device, frozen=k) for k in range(stages)}  # the last stage always trains
    for step in steps.values():
        step_seconds(step, 2)  # warm-up: oneDNN builds each shape's kernels on first use
    times = {k: [] for k in steps}
    for _ in range(a.rounds):
        for k, step in steps.items():
            times[k] += step_seconds(step, a.steps)
    ms = {k: statistics.median(t) * 1000 for k, t in times.items()}
    for k, m in ms.items():
        print(f"first {k} stage(s) frozen: {m:7.1f} ms/step ({a.bs / m * 1000:5.0f} img/s), {m / ms[0]:.2f}x")


if __name__ == "__main__":
    main()
