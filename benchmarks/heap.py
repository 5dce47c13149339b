"""The C heap under CPU torch (`mlns_fast/heap.py`), side by side: a training process's memory with and
without the heap trim, and a reading process's speed with glibc's default mmap policy and with large blocks
kept in the heap.

    python benchmarks/heap.py                                   # resnet18 --prune-stages 2, 300 steps
    python benchmarks/heap.py --arch mlns_cnn --steps 200 --every 0 25 50 100
    python benchmarks/heap.py --read r38-r50-prune1-s1 --images 512 --pairs 2

Training: each setting trains `--steps` batches of the same run (default data, seed 0) in a process of
its own ($MLNS_FAST_HEAP_TRIM=every; 0 = no trim) and prints its peak RSS, the RSS and the C heap's
resident size after the last step, the median step time and the mean time of a trim call. The losses
are the same in every setting (a trim moves no number): the table prints the last one to show it.

Reading (`--read RUN`): each setting reads the first `--images` demo-test images through the run's raw
weights with shift TTA (`predict_outputs`, batches of 256: what `robustness` and `evaluate` do) in a
process of its own, after one warm-up batch, and prints wall, user and system seconds, minor page
faults, peak RSS and the largest difference of its outputs from the first setting's. "glibc" runs with
glibc's policy as it is ($MLNS_FAST_HEAP_KEEP=0), "kept" with `heap.keep_large_blocks` (the default).
The settings alternate, `--pairs` times. Linux only (it reads /proc).
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


def read_child(run: str, images: int, out: str) -> None:
    """One reading setting, in this process: read, save the outputs, print a JSON line."""
    import numpy as np
    from mlns_fast.data.demo import demo_split
    from mlns_fast.reading import load_trained, predict_outputs
    from mlns_fast.runs import resolve_run
    cfg, model = load_trained(resolve_run(run), "raw", tta=True)
    x = demo_split("test", cfg.size).images[:images]
    predict_outputs(model, x[:256])  # warm-up: the weights' first touch, oneDNN's kernels
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    y = predict_outputs(model, x)
    wall, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
    np.save(out, y.numpy())
    print(json.dumps({"wall": wall, "user": r1.ru_utime - r0.ru_utime, "sys": r1.ru_stime - r0.ru_stime,
                      "faults": r1.ru_minflt - r0.ru_minflt, "peak": r1.ru_maxrss >> 10, "n": len(x)}))


def read_table(a) -> None:
    """Reading, glibc's default mmap policy against large blocks kept, alternating in fresh processes."""
    import numpy as np
    settings = {"glibc": {"MLNS_FAST_HEAP_KEEP": "0"}, "kept": {"MLNS_FAST_HEAP_KEEP": "1"}}
    base = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    print(f"reading {a.read}: {a.images} demo-test images, raw weights, shift TTA, batches of 256")
    print(f"{'setting':>8} {'wall s':>7} {'img/s':>6} {'user s':>7} {'sys s':>6} {'faults':>10} {'peak MiB':>9} "
          f"{'max diff':>9}")
    with tempfile.TemporaryDirectory() as tmp:
        first = None
        for _ in range(a.pairs):
            for name, env in settings.items():
                out = os.path.join(tmp, f"{name}.npy")
                p = subprocess.run([sys.executable, __file__, "--read-child", a.read, "--images", str(a.images),
                                    "--out", out], capture_output=True, text=True, env={**base, **env})
                if p.returncode:
                    sys.exit(p.stderr)
                r, y = json.loads(p.stdout.strip().splitlines()[-1]), np.load(out)
                first = y if first is None else first
                print(f"{name:>8} {r['wall']:>7.2f} {r['n'] / r['wall']:>6.0f} {r['user']:>7.2f} {r['sys']:>6.2f} "
                      f"{r['faults']:>10,} {r['peak']:>9,} {float(np.abs(y - first).max()):>9.2g}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--prune-stages", type=int, default=2)
    ap.add_argument("--steps", type=int, default=300, help="training batches per setting")
    ap.add_argument("--every", type=int, nargs="+", default=[0, 50], help="batches between trims (0 = none)")
    ap.add_argument("--read", metavar="RUN", help="time reading through this run instead of training")
    ap.add_argument("--images", type=int, default=512, help="demo-test images read per setting (--read)")
    ap.add_argument("--pairs", type=int, default=2, help="glibc / kept pairs, alternating (--read)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--read-child", metavar="RUN", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return child(a.arch, a.prune_stages, a.steps)
    if a.read_child:
        return read_child(a.read_child, a.images, a.out)
    if a.read:
        return read_table(a)
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
