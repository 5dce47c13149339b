"""Where a CPU training batch goes with each loader-worker setup: waiting for the batch, forward, backward.

    python benchmarks/loader_workers.py --batches 300 --rounds 2
    python benchmarks/loader_workers.py --epoch --rounds 3 --setups before today
    python benchmarks/loader_workers.py --batches 60 --setups before today --arch resnet18 --prune-stages 2
    python benchmarks/loader_workers.py --batches 300 --setups today --progressive 0.75

Each setup trains the default recipe's Learner (mlns_cnn, the default data mix, EMA off) for
`--batches` batches after 10 untimed ones, in a fresh process, the setups taking turns round by
round (the host drifts between processes: compare within a round). Per batch, in ms: `wait` (from
the end of one batch to the start of the next: the loader), `fwd` (forward), `bwd` (loss and
backward), `step` (optimizer and the rest), and the total. `--epoch`: instead, one whole epoch of
`mlns-fast train --epochs 1` (EMA, run folder and validation included; in a temporary runs
folder), its phases in seconds and the epoch's wall time (`total`, validation included).
`--progressive S`: the batches (the epoch) of a `--progressive S` run's smaller canvas. Setups:

  before    one worker at normal priority (the toolkit until 2026-12-07)
  one-idle  one worker at idle priority
  today     the default: a worker per thread the trainer computes with, at idle priority
            (`loaders.resolve_workers`, `PlanDL.wif`)

A worker that renders while the trainer's threads compute takes a core from one of them, and the
other waits for it at the end of every op: `before` shows it as a forward far longer than the same
forward alone. Run it with nothing else on the machine.
"""
from __future__ import annotations

import argparse
import collections
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import machine  # noqa: E402

SETUPS = ("before", "one-idle", "today")
PHASES = ("wait", "fwd", "bwd", "step")


def child(setup: str, batches: int, epoch: bool, model: dict) -> None:
    from fastai.callback.core import Callback, CancelFitException

    from mlns_fast.config import resolve_config
    from mlns_fast.data import loaders
    from mlns_fast.training import prepare, train

    if setup == "before":  # the earlier worker: the stop signals handled, its priority left as it was
        loaders.PlanDL.background = property(lambda self: False)

    class Phases(Callback):
        order = -100  # its before_* marks come first

        def __init__(self, skip):
            self.t, self.last, self.i, self.skip = collections.defaultdict(float), None, 0, skip

        def _mark(self, phase):
            now = time.perf_counter()
            if self.last is not None and self.i >= self.skip:
                self.t[phase] += now - self.last
            self.last = now

        def before_epoch(self):
            self.t0 = self.last = time.perf_counter()

        def before_batch(self):
            if self.training:
                self._mark("wait")

        def after_pred(self):
            if self.training:
                self._mark("fwd")

        def after_backward(self):
            if self.training:
                self._mark("bwd")

        def after_batch(self):
            if not self.training:
                return
            self._mark("step")
            self.i += 1
            if not epoch and self.i == batches + self.skip:
                print(" ".join(f"{k}={1000 * self.t[k] / batches:.1f}" for k in PHASES), flush=True)
                raise CancelFitException()

        def before_validate(self):
            self.v0 = time.perf_counter()

        def after_validate(self):
            self.t["valid"] += time.perf_counter() - self.v0

        def after_epoch(self):
            print(" ".join(f"{k}={self.t[k]:.1f}" for k in (*PHASES, "valid"))
                  + f" total={time.perf_counter() - self.t0:.1f}", flush=True)

    workers = 1 if setup in ("before", "one-idle") else -1
    if epoch:
        with tempfile.TemporaryDirectory() as runs:
            cfg = resolve_config(workers=workers, epochs=1, name=f"loader-{setup}", **model)
            n = loaders.resolve_workers(workers, "cpu")
            print(f"workers={n}", flush=True)
            train(cfg, runs_dir=runs, quiet=True, extra_cbs=[Phases(0)])
        return
    cfg = resolve_config(workers=workers, ema=0.0, **model)
    p = prepare(cfg)
    print(f"workers={p.dls.train.fake_l.num_workers}", flush=True)
    p.learner(quiet=True, extra_cbs=[Phases(10)]).fit(1, lr=cfg.train.lr)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=100)
    ap.add_argument("--epoch", action="store_true", help="one whole epoch of `mlns-fast train` per setup")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--arch", default="mlns_cnn")
    ap.add_argument("--prune-stages", type=int, default=0)
    ap.add_argument("--lr", type=float, help="the run's peak lr (--epoch; default: the recipe's)")
    ap.add_argument("--progressive", type=float, default=1.0, help="train on the canvas of `--progressive` (its first epochs)")
    ap.add_argument("--setups", nargs="+", choices=SETUPS, default=list(SETUPS))
    ap.add_argument("--child", choices=SETUPS, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return child(a.child, a.batches, a.epoch, dict(arch=a.arch, prune_stages=a.prune_stages, lr=a.lr,
                                                       progressive=a.progressive))
    unit = "s in one epoch of `mlns-fast train --epochs 1`" if a.epoch else \
        f"ms a batch, {a.batches} batches of the default recipe's Learner after 10"
    unit += f"; {a.arch}" + (f" --prune-stages {a.prune_stages}" if a.prune_stages else "") + \
        (f" --progressive {a.progressive}" if a.progressive < 1 else "")
    print(f"machine: {machine()}; {unit}")
    phases = (*PHASES, "valid") if a.epoch else PHASES
    totals = collections.defaultdict(list)
    for r in range(a.rounds):
        for setup in a.setups:
            cmd = [sys.executable, __file__, "--child", setup, "--batches", str(a.batches), "--arch", a.arch,
                   "--prune-stages", str(a.prune_stages), "--progressive", str(a.progressive)] + ["--epoch"] * a.epoch \
                + (["--lr", str(a.lr)] if a.lr else [])
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.split()
            fields = dict(f.split("=") for f in out)
            total = float(fields["total"]) if a.epoch else sum(float(fields[k]) for k in PHASES)
            totals[setup].append(total)
            print(f"round {r + 1}  {setup:9s} workers {fields['workers']}  "
                  + "  ".join(f"{k} {float(fields[k]):6.1f}" for k in phases) + f"  total {total:6.1f}", flush=True)
    for setup in a.setups:
        print(f"{setup:9s} median total {statistics.median(totals[setup]):6.1f} "
              f"({', '.join(f'{t:.1f}' for t in totals[setup])})")


if __name__ == "__main__":
    main()
