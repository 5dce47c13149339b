"""Which shifted copies shift TTA should read: sum accuracy of each set of copies on the valid split.

    python experiments/tta_shifts.py RUN [RUN ...] [--weights raw] [--data IMAGES.npy:LABELS.npy]

The valid split decides (the battery is a test, never tuned on): default data is the demo valid split.
Each row reads the run's network through `evaluate.ShiftTTA` with another set of (dx, dy) shifts; the
first row is the plain network. One column per run, then their mean.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mlns_fast.data.demo import demo_split  # noqa: E402
from mlns_fast.data.sources import load_source  # noqa: E402
from mlns_fast.errors import MlnsError  # noqa: E402
from mlns_fast.reading import ShiftTTA, load_trained, predict_arrays  # noqa: E402
from mlns_fast.runs import DEFAULT_RUNS_DIR, resolve_run  # noqa: E402

CROSS = lambda d: ((0, 0), (-d, 0), (d, 0), (0, -d), (0, d))  # noqa: E731
VARIANTS = {
    "none (plain)": None,
    f"5: +-2 px along each axis{' (the default)' if ShiftTTA.SHIFTS == CROSS(2) else ''}": CROSS(2),
    "5: +-1 px": CROSS(1),
    "5: +-3 px": CROSS(3),
    "9: +-1 and +-2 px": CROSS(1) + CROSS(2)[1:],
    "9: the 3 x 3 grid of {-2, 0, 2} px": tuple((dx, dy) for dx in (-2, 0, 2) for dy in (-2, 0, 2)),
    "3: +-2 px horizontally only": CROSS(2)[:3],
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", help="run folders or names")
    p.add_argument("--weights", default="raw", help="best | raw | ema")
    p.add_argument("--data", default=None, help="IMAGES.npy:LABELS.npy, FILE.npz or DIR (default: the demo valid split)")
    p.add_argument("--runs-dir", default=DEFAULT_RUNS_DIR)
    a = p.parse_args()
    try:
        runs = [resolve_run(r, a.runs_dir) for r in a.runs]
        size = runs[0].config().size
        samples = load_source(a.data, size) if a.data else demo_split("valid").at_size(size)
        # each run's network loaded once, plain and wrapped in TTA; the variants only change the shifts
        nets = [{tta: load_trained(run, a.weights, tta=tta)[1] for tta in (False, True)} for run in runs]
        images = [samples.at_size(run.config().size).images for run in runs]
        print(f"| copies | {' | '.join(r.name for r in runs)} | mean |\n|---|{'---|' * len(runs)}---|")
        for name, shifts in VARIANTS.items():
            accs = []
            for net, x in zip(nets, images):
                model = net[shifts is not None]
                if shifts is not None:
                    model.SHIFTS = shifts  # this instance only
                accs.append(float((predict_arrays(model, x)["sum"] == samples.sums).mean()))
            print(f"| {name} | {' | '.join(f'{x:.4f}' for x in accs)} | {sum(accs) / len(accs):.4f} |", flush=True)
    except MlnsError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
