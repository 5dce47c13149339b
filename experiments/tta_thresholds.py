"""Shift TTA at two ink-fit thresholds, read as one: sum accuracy on the valid split and every battery set.

    python experiments/tta_thresholds.py RUN [RUN ...] [--rel 0.3 --rel 0.15] [--weights raw]

At the default threshold (0.3, `[model] ink_rel`) the ink fit cuts the thin end of an outer digit off; read at
0.15 the same weights get thin strokes right and lose a little on other writers (issue 20, twenty-seventh
round). Here each run is read by shift TTA (`reading.ShiftTTA`: five shifted copies after the ink fit) once
per threshold, and the copies of all thresholds are averaged into one reading (the mean log-probabilities of
every copy, as ShiftTTA averages its own). The images where the fit cuts nothing read almost alike at both
thresholds; where it cuts, the uncut copies get a vote. The valid split decides; the battery is a test.
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mlns_fast.data.demo import demo_split  # noqa: E402
from mlns_fast.errors import MlnsError  # noqa: E402
from mlns_fast.reading import ShiftTTA, load_trained, predict_outputs, read_outputs  # noqa: E402
from mlns_fast.robustness import battery  # noqa: E402
from mlns_fast.runs import DEFAULT_RUNS_DIR, resolve_run  # noqa: E402


def readings(net, rels: list[float]) -> list:
    """`net` (a ShiftTTA around a network with an ink fit) once per threshold: copies sharing its weights."""
    if net.fit is None:
        raise MlnsError("the run's network has no ink fit (--zoom 1): nothing to read at another threshold")
    out = []
    for rel in rels:
        fit = copy.deepcopy(net.fit)
        fit.rel = rel
        out.append(ShiftTTA(net.model, fit).eval())  # the same network (and temperature), its own fit
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", help="run folders or names")
    p.add_argument("--rel", type=float, action="append", default=[], help="thresholds (default: 0.3 and 0.15)")
    p.add_argument("--weights", default="raw", help="best | raw | ema")
    p.add_argument("--runs-dir", default=DEFAULT_RUNS_DIR)
    a = p.parse_args()
    rels = a.rel or [0.3, 0.15]
    if len(rels) < 2 or not all(0 < r < 1 for r in rels):
        p.exit(2, f"error: give two or more --rel in (0, 1); got {rels}\n")
    try:
        sets = {"valid": demo_split("valid"), **battery()}  # the battery's demo-test: the test split
        shifted = [s for s in sets if s not in ("valid", "demo-test")]
        names = [*map(str, rels), " + ".join(map(str, rels))]
        print(f"| run, threshold(s) | {' | '.join(sets)} | {len(shifted)} shifted sets |\n"
              f"|---|{'---|' * (len(sets) + 1)}", flush=True)
        acc = {}
        for r in a.runs:
            run = resolve_run(r, a.runs_dir)
            cfg, net = load_trained(run, a.weights, tta=True)
            nets = readings(net, rels)
            for s, samples in sets.items():
                x = samples.at_size(cfg.size)
                outs = [predict_outputs(n, x.images) for n in nets]
                for name, out in zip(names, outs + [sum(outs) / len(outs)]):  # every copy weighted alike
                    acc[r, name, s] = float((read_outputs(out)["sum"] == x.sums).mean())
            for name in names:
                cells = [acc[r, name, s] for s in sets]
                print(f"| {cfg.name}, {name} | {' | '.join(f'{v:.4f}' for v in cells)} | "
                      f"{np.mean([acc[r, name, s] for s in shifted]):.4f} |", flush=True)
        if len(a.runs) > 1:
            for name in names:
                cells = [np.mean([acc[r, name, s] for r in a.runs]) for s in sets]
                print(f"| mean of {len(a.runs)}, {name} | {' | '.join(f'{v:.4f}' for v in cells)} | "
                      f"{np.mean([acc[r, name, s] for r in a.runs for s in shifted]):.4f} |")
    except MlnsError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
