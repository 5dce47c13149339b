"""Per-trial overhead of `mlns-fast sweep`: what a trial costs beyond its own training epochs.

Runs a study of tiny trials in this process (one worker, journal file), then trains the same
configs with plain `train()`. For each trial:

    sweep overhead  = (start of the next trial - start of this trial) - the run's train_seconds
    train overhead  = plain train() wall time                         - the run's train_seconds

train_seconds is the sum of the run's epoch times (metrics.csv `seconds`); the rest of `train()`
(loaders, model, run folder, weights, curves.png) is paid by every run, sweep or not. The sweep
machinery's own share is the difference of the two (target: <= 2 s per trial).

    python benchmarks/sweep_overhead.py --trials 8 --epochs 2
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tomli_w

sys.path.insert(0, str(Path(__file__).parent))
from common import machine  # noqa: E402

from mlns_fast.data.demo import demo_split  # noqa: E402
from mlns_fast.data.sources import save_npz  # noqa: E402
from mlns_fast.runs import RunDir  # noqa: E402
from mlns_fast.sweep import load_sweep, open_storage, run_sweep, study_folder  # noqa: E402
from mlns_fast.training import train  # noqa: E402


def tiny_sweep(root: Path, trials_name: str, epochs: int) -> Path:
    """A sweep file over lr and mix of runs of 3 batches of 16 per epoch (the test suite's toy size)."""
    save_npz(demo_split("train").subset(slice(0, 96)), root / "train.npz")
    valid = demo_split("valid").subset(slice(0, 48))
    np.save(root / "vx.npy", valid.images)
    np.save(root / "vy.npy", valid.sums)
    d = {"defaults": {"data": {"real": [str(root / "train.npz")], "valid": [f"{root / 'vx.npy'}:{root / 'vy.npy'}"],
                               "bs": 16, "workers": 0, "synthetic_per_epoch": 48, "mix": 0.5},
                      "model": {"channels_last": False}, "train": {"epochs": epochs, "precision": "fp32"}},
         "space": {"train.lr": {"low": 1e-3, "high": 1e-2, "log": True}, "data.mix": {"low": 0.25, "high": 0.75}},
         "study": {"name": trials_name, "metric": "valid_loss", "pruner": "none"}}
    path = root / "bench.toml"
    path.write_text(tomli_w.dumps(d))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=2)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="sweep-bench-"))
    path, runs = tiny_sweep(root, "bench", args.epochs), root / "runs"
    t0 = time.perf_counter()
    run_sweep(path, runs, trials=args.trials)
    total = time.perf_counter() - t0

    import optuna
    sweep = load_sweep(path)
    storage = open_storage(str(study_folder(runs, "bench") / "journal.log"))
    trials = optuna.load_study(study_name="bench", storage=storage).trials
    train_s = [RunDir(runs / t.user_attrs["run"]).summary()["train_seconds"] for t in trials]
    sweep_over = [(b.datetime_start - a.datetime_start).total_seconds() - s
                  for a, b, s in zip(trials, trials[1:], train_s)]
    plain_over = []
    for t, s in zip(trials, train_s):  # the same configs, trained without the sweep
        t1 = time.perf_counter()
        r = train(sweep.trial_config(t.params, t.number), root / "plain", quiet=True)
        plain_over.append(time.perf_counter() - t1 - r["train_seconds"])

    print(f"machine: {machine()}")
    print(f"{len(trials)} trials of {args.epochs} epochs; run_sweep total {total:.1f} s "
          f"(incl. study creation and results/plots once); mean train_seconds {statistics.mean(train_s):.2f} s")
    print(f"per trial beyond its epochs, sweep:       mean {statistics.mean(sweep_over):.2f} s, "
          f"max {max(sweep_over):.2f} s (n={len(sweep_over)})")
    print(f"per trial beyond its epochs, plain train: mean {statistics.mean(plain_over):.2f} s, "
          f"max {max(plain_over):.2f} s (n={len(plain_over)})")
    print(f"sweep machinery per trial (difference of means): "
          f"{statistics.mean(sweep_over) - statistics.mean(plain_over[:-1] or plain_over):.2f} s")


if __name__ == "__main__":
    main()
