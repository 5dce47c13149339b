"""A run's recorded final valid accuracy (raw and EMA: summary.json) against its saved weights read again.

The saved weights are read on the run's own valid split, in one process, without TTA and without the
temperature fitted after training, in the precision the run validated in (bf16 autocast where it trained in bf16). For a one-process run the two agree. Under DDP
they did not before the forty-third round: each rank's EMA validated with its own BatchNorm buffers, and
the recorded figure was the mean of the ranks' EMAs, none of them the one saved (RESULTS.md).

    python experiments/recorded_valid.py RUN [--runs-dir experiments/runs]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mlns_fast.data.loaders import resolve_real  # noqa: E402
from mlns_fast.errors import MlnsError  # noqa: E402
from mlns_fast.losses import sum_accuracy  # noqa: E402
from mlns_fast.reading import load_trained, predict_outputs  # noqa: E402
from mlns_fast.runs import DEFAULT_RUNS_DIR, RunDir, resolve_run  # noqa: E402

WEIGHTS = (("raw", "final_acc"), ("ema", "final_acc_ema"))


def reread(run: RunDir) -> list[dict]:
    """One row per weight set the run saved: the recorded accuracy and the saved weights' accuracy read here."""
    summary, cfg = run.summary(), run.config()
    _, valid = resolve_real(cfg, need_train=False)
    valid = valid.at_size(cfg.size)
    rows = []
    for which, key in WEIGHTS:
        if summary.get(key) is None:
            continue  # no EMA in this run
        # validation read the network before its temperature was fitted; on a digits head the temperature can
        # move the sum's argmax
        model = load_trained(run, which, calibrate=False)[1]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=summary.get("precision") == "bf16"):
            out = predict_outputs(model, valid.images)
        read = float(sum_accuracy(out.float(), torch.from_numpy(valid.sums)))  # the run's own `acc` metric
        rows.append({"weights": which, "recorded": float(summary[key]), "read": read, "n": len(valid)})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run")
    p.add_argument("--runs-dir", default=DEFAULT_RUNS_DIR)
    a = p.parse_args()
    try:
        run = resolve_run(a.run, a.runs_dir)
        rows = reread(run)
    except MlnsError as e:
        p.exit(2, f"error: {e}\n")
    for r in rows:
        same = "the same" if abs(r["recorded"] - r["read"]) < 1e-6 else "DIFFERENT"  # recorded in float32
        print(f"{run.name} {r['weights']}: recorded {r['recorded']:.5f}, saved weights read here {r['read']:.5f} "
              f"(n={r['n']}): {same}")


if __name__ == "__main__":
    main()
