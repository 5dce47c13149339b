"""Why EMA weights scored worse than raw weights early in training (issue 10), measured in one run.

One training run; beside it several EMAs of the same trajectory (timm's ModelEmaV3: decay 0.99
plain, 0.99 with timm's warm-up, 0.999 with warm-up), each scored on the demo valid split after
every epoch twice: with the BatchNorm buffers averaged as they are, and with BatchNorm statistics
re-estimated on training batches for the averaged weights (torch's `swa_utils.update_bn`, what SWA
does). Prints one table; the figures go to RESULTS.md.

    python experiments/ema_probe.py --arch mlns_cnn --epochs 2 --synthetic-per-epoch 16000
"""
from __future__ import annotations

import argparse
import copy
import itertools
import time

import torch
from fastai.callback.core import Callback
from timm.utils import ModelEmaV3, unwrap_model
from torch.optim.swa_utils import update_bn

from mlns_fast.callbacks import scorer
from mlns_fast.config import resolve_config
from mlns_fast.device import precision_callbacks
from mlns_fast.training import prepare

VARIANTS = {"0.99": (0.99, False), "0.99+warmup": (0.99, True), "0.999+warmup": (0.999, True)}


class EMAProbe(Callback):
    """Keeps one ModelEmaV3 per variant and scores each after every epoch, with and without BN re-estimation."""
    order = 60

    def __init__(self, bn_batches: int):
        self.bn_batches, self.rows = bn_batches, []

    def before_fit(self):
        model = unwrap_model(self.learn.model)
        self.emas = {k: ModelEmaV3(model, decay=d, use_warmup=w) for k, (d, w) in VARIANTS.items()}
        self.step = 0

    def after_step(self):
        self.step += 1
        for k, ema in self.emas.items():
            ema.update(unwrap_model(self.learn.model), step=self.step if VARIANTS[k][1] else None)

    def after_epoch(self):
        row = {"epoch": self.epoch + 1, "steps": self.step, "raw": self._score(unwrap_model(self.learn.model))}
        for k, ema in self.emas.items():
            row[k] = self._score(ema.module)
            recal = copy.deepcopy(ema.module)
            batches = [b[0] for b in itertools.islice(self.dls.train, self.bn_batches)]
            update_bn(batches, recal)
            row[k + " +bn"] = self._score(recal)
        self.rows.append(row)
        print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)

    def _score(self, module) -> float:
        cbs = precision_callbacks(self.learn.precision, self.dls.device or torch.device("cpu"))
        return float(scorer(self.dls, module, self.learn.loss_func, cbs).validate()[1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="mlns_cnn")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--synthetic-per-epoch", type=int, default=16000)
    ap.add_argument("--bn-batches", type=int, default=20)
    ap.add_argument("--lr", type=float, default=3e-3)
    a = ap.parse_args()
    cfg = resolve_config(arch=a.arch, data="synthetic", synthetic_per_epoch=a.synthetic_per_epoch,
                         epochs=a.epochs, ema=0.0, lr=a.lr)
    probe = EMAProbe(a.bn_batches)
    prepared = prepare(cfg, device="cpu")
    precision = prepared.precision
    learn = prepared.learner(quiet=True, extra_cbs=[probe])
    t0 = time.perf_counter()
    learn.fit_one_cycle(cfg.train.epochs, lr_max=cfg.train.lr)
    print(f"\n{a.arch}, synthetic {a.synthetic_per_epoch}/epoch, {a.epochs} epochs, lr {a.lr}, precision {precision}, "
          f"{time.perf_counter() - t0:.0f} s; valid sum accuracy (demo valid split)")
    cols = list(probe.rows[0])
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in probe.rows:
        print("| " + " | ".join(f"{r[c]:.4f}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")


if __name__ == "__main__":
    main()
