"""Shift TTA plus copies with thicker or thinner strokes: sum accuracy on the valid split and some battery sets.

    python experiments/tta_strokes.py RUN [RUN ...] [--weights raw]

The valid split decides (the battery is a test, never tuned on); the battery sets are printed beside it
to show what a stroke copy would cost or give under shift. Each variant reads the run's network through
shift TTA (`reading.ShiftTTA`, after its ink fit) and adds copies: the centre image dilated or eroded
by a 3 x 3 (or 2 x 2) max-pool, or all five shifted copies of a dilated image.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mlns_fast.data.demo import demo_split  # noqa: E402
from mlns_fast.errors import MlnsError  # noqa: E402
from mlns_fast.losses import mean_log_probs  # noqa: E402
from mlns_fast.reading import ShiftTTA, load_trained, predict_arrays  # noqa: E402
from mlns_fast.robustness import battery  # noqa: E402
from mlns_fast.runs import DEFAULT_RUNS_DIR, resolve_run  # noqa: E402

SETS = ["tight", "small", "thick", "thin", "blur", "lowres", "sklearn-digits", "fonts"]


def dilate(x: torch.Tensor, k: int = 3) -> torch.Tensor:
    """Grey-level dilation of bright ink on black: a k x k max-pool (k = 2 grows down and right only)."""
    return F.max_pool2d(F.pad(x, (0, 1, 0, 1)), 2, 1) if k == 2 else F.max_pool2d(x, k, 1, k // 2)


def erode(x: torch.Tensor, k: int = 3) -> torch.Tensor:
    return -dilate(-x, k)


# variant -> the extra copies: (stroke op, shifted too?)
VARIANTS = {
    "shift TTA (the default)": [],
    "+ centre dilated 2 x 2": [(lambda x: dilate(x, 2), False)],
    "+ centre dilated 3 x 3": [(dilate, False)],
    "+ centre eroded 3 x 3": [(erode, False)],
    "+ centre dilated and eroded 3 x 3": [(dilate, False), (erode, False)],
    "+ five shifts dilated 2 x 2": [(lambda x: dilate(x, 2), True)],
    "+ five shifts dilated 3 x 3": [(dilate, True)],
}


class StrokeTTA(ShiftTTA):
    extra: list = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fit is not None:
            x = self.fit(x)
        h, w, p = x.shape[-2], x.shape[-1], max(max(abs(dx), abs(dy)) for dx, dy in self.SHIFTS)

        def shifted(z):
            z = F.pad(z, (p, p, p, p))
            return [self.model(z[..., p + dy:p + dy + h, p + dx:p + dx + w]) for dx, dy in self.SHIFTS]
        outs = shifted(x)
        for op, shift in self.extra:
            outs += shifted(op(x)) if shift else [self.model(op(x))]
        return mean_log_probs(outs)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", help="run folders or names")
    p.add_argument("--weights", default="raw", help="best | raw | ema")
    p.add_argument("--runs-dir", default=DEFAULT_RUNS_DIR)
    a = p.parse_args()
    try:
        sets = {"valid": demo_split("valid"), **{k: v for k, v in battery(SETS).items() if k != "demo-test"}}
        acc = {}
        for r in a.runs:
            run = resolve_run(r, a.runs_dir)
            cfg, net = load_trained(run, a.weights, tta=True)
            net.__class__ = StrokeTTA  # the same module, read with extra copies
            for name, extra in VARIANTS.items():
                net.extra = extra
                for s, samples in sets.items():
                    x = samples.at_size(cfg.size)
                    acc[r, name, s] = float((predict_arrays(net, x.images)["sum"] == x.sums).mean())
        print(f"| copies (mean of {len(a.runs)} runs) | {' | '.join(sets)} |\n|---|{'---|' * len(sets)}")
        for name in VARIANTS:
            print(f"| {name} | {' | '.join(f'{np.mean([acc[r, name, s] for r in a.runs]):.4f}' for s in sets)} |")
    except MlnsError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
