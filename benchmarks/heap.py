"""Memory of a training process with and without the heap trim (`callbacks.HeapTrim`), side by side.

    python benchmarks/heap.py                                   # resnet18 --prune-stages 2, 300 steps
    python benchmarks/heap.py --arch mlns_cnn --steps 200 --every 0 25 50 100

Each setting trains `--steps` batches of the same run (default data, seed 0) in a process of its own
($MLNS_FAST_HEAP_TRIM=every; 0 = no trim) and prints its peak RSS, the RSS and the C heap's resident
size after the last step, the median step time and the mean time of a trim call. The losses are the
same in every setting (a trim moves no number): the table prints the last one to show it. Linux only (it reads /proc).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

from fastai.callback.core import Callback, CancelFitException


def resident_mib(kind: str = "total") -> int:
    """This process's RSS, or the resident size of its C heap ([heap] in smaps), in MiB."""
    if kind == "total":
        return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") >> 20
    kib, inside = 0, False
    for line in open("/proc/self/smaps"):
        head = line.split()
        if not line[0].isupper():  # a mapping's header: address range, perms, ..., name
            inside = head[-1] == "[heap]"
        elif inside and head[0] == "Rss:":
            kib += int(head[1])
    return kib >> 10


class Watch(Callback):
    """Times each training step; after `steps` of them reads the memory (before that step's trim) and
    stops the fit."""
    order = 50  # before HeapTrim's

    def __init__(self, steps: int):
        self.steps, self.times, self.trims = steps, [], []

    def before_fit(self):
        """Time each of HeapTrim's calls too."""
        from mlns_fast.callbacks import HeapTrim
        cb = next(c for c in self.learn.cbs if isinstance(c, HeapTrim))
        if cb.trim is not None:
            cb.trim = self.timed(cb.trim)

    def timed(self, trim):
        def call(pad: int) -> int:
            t0 = time.perf_counter()
            out = trim(pad)
            self.trims.append(time.perf_counter() - t0)
            return out
        return call

    def before_batch(self):
        self.t0 = time.perf_counter()

    def after_batch(self):
        if not self.training:
            return
        self.times.append(time.perf_counter() - self.t0)
        if len(self.times) >= self.steps:
            self.last_loss, self.rss, self.heap = float(self.learn.loss), resident_mib(), resident_mib("heap")
            raise CancelFitException()


def child(arch: str, prune: int, steps: int) -> None:
    """One setting, in this process: train, print a JSON line."""
    from mlns_fast.config import resolve_config
    from mlns_fast.training import train
    cfg = resolve_config(arch=arch, prune_stages=prune, epochs=1, lr=1e-2)
    watch = Watch(steps)
    with tempfile.TemporaryDirectory() as runs:
        train(cfg, runs_dir=runs, quiet=True, extra_cbs=[watch])
    print(json.dumps({"peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss >> 10, "rss": watch.rss,
                      "heap": watch.heap, "step_ms": 1000 * statistics.median(watch.times[5:]),
                      "loss": watch.last_loss, "steps": len(watch.times),
                      "trim_ms": 1000 * statistics.mean(watch.trims) if watch.trims else 0.0}))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--prune-stages", type=int, default=2)
    ap.add_argument("--steps", type=int, default=300, help="training batches per setting")
    ap.add_argument("--every", type=int, nargs="+", default=[0, 50], help="batches between trims (0 = none)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return child(a.arch, a.prune_stages, a.steps)
    print(f"{a.arch} --prune-stages {a.prune_stages}, {a.steps} steps a setting")
    print(f"{'every':>6} {'peak MiB':>9} {'end RSS':>8} {'end heap':>9} {'step ms':>8} {'last loss':>10} {'trim ms':>8}")
    for every in a.every:
        out = subprocess.run([sys.executable, __file__, "--child", "--arch", a.arch, "--prune-stages",
                              str(a.prune_stages), "--steps", str(a.steps)], capture_output=True, text=True,
                             env={**os.environ, "MLNS_FAST_HEAP_TRIM": str(every)})
        if out.returncode:
            sys.exit(out.stderr)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{every:>6} {r['peak']:>9} {r['rss']:>8} {r['heap']:>9} {r['step_ms']:>8.0f} {r['loss']:>10.5f} {r['trim_ms']:>8.1f}")


if __name__ == "__main__":
    main()
