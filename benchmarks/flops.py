"""Arithmetic of the model: FLOPs of a training step per image, and of each backbone stage's forward.

    python benchmarks/flops.py --arch mlns_cnn
    python benchmarks/flops.py --arch resnet18 --prune-stages 1
    python benchmarks/flops.py --arch mlns_cnn --epochs 9 --images 39936 --peak 64   # a run's floor at a peak

Counted by torch's FlopCounterMode (convolutions and matrix products: the arithmetic that bounds a CPU's
step). With --peak (GFLOP/s, e.g. cores x FLOP per cycle x clock) it prints the fewest minutes a run of
--epochs x --images could take at that rate: a floor no pipeline can beat.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).parent))
from common import train_flops_per_image  # noqa: E402

from mlns_fast.config import IMAGE_SIZE, ModelConfig  # noqa: E402
from mlns_fast.model import count_params, create_model  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="mlns_cnn")
    ap.add_argument("--prune-stages", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=9)
    ap.add_argument("--images", type=int, default=39_936, help="training images per epoch (the default: 312 x 128)")
    ap.add_argument("--peak", type=float, default=0.0, help="a machine's peak GFLOP/s, for the run's floor")
    a = ap.parse_args()
    model = create_model(ModelConfig(arch=a.arch, prune_stages=a.prune_stages), IMAGE_SIZE)
    x = torch.rand(4, 1, *IMAGE_SIZE)
    model.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    per_module = {k: sum(v.values()) / len(x) for k, v in counter.get_flop_counts().items()}
    total = per_module.pop("Global")
    print(f"{a.arch}{f' --prune-stages {a.prune_stages}' if a.prune_stages else ''}: grid {model.grid}, "
          f"{count_params(model) / 1e6:.2f} M parameters")
    print(f"forward          : {total / 1e6:8.1f} MFLOP per image")
    for name, flops in per_module.items():
        if name.count(".") == 2 and name.startswith("MlnsNet.backbone.") or name == "MlnsNet.head":
            print(f"  {name.removeprefix('MlnsNet.'):<15}: {flops / 1e6:8.1f} MFLOP ({flops / total:5.1%})")
    step = train_flops_per_image(model, x, lambda out: out.float().logsumexp(-1).sum())
    run = step * a.epochs * a.images
    print(f"training step    : {step / 1e9:8.3f} GFLOP per image (forward + backward)")
    print(f"a run            : {run / 1e12:8.1f} TFLOP ({a.epochs} epochs x {a.images:,} images)"
          + (f"; at {a.peak:g} GFLOP/s no less than {run / (a.peak * 1e9) / 60:.1f} min" if a.peak else ""))


if __name__ == "__main__":
    main()
