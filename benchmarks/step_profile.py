"""Where one training step's time goes, per op and per convolution, and which oneDNN kernel computes each.

    python benchmarks/step_profile.py                       # the default model, batch 128, the run's precision
    python benchmarks/step_profile.py --arch resnet18 --prune-stages 2 --kernels

One step = what `compile_step.py` times (forward under the run's autocast, the loss, backward, fused
AdamW) on a fixed random batch, no loader: the step's own cost, to set beside an epoch's seconds. It
prints the median step after warm-up, torch.profiler's ops by self time over `--steps` steps, and each
convolution's forward and backward by input shape (a slow kernel for one layer shows there, not in the
op totals). `--kernels` also runs one step under oneDNN's verbose mode and lists the implementation
of every convolution and matrix product (`brg_conv_fwd:avx512_core_bf16`, `jit:uni`, `ref:any`...):
a `ref` or `gemm` kernel where the CPU has a vector one is a fallback worth a look.

Run it on an otherwise idle machine: beside another process the convolutions' backward (two threads
waiting on each other) reads several times slower than it is.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import os
import statistics
import sys
import tempfile
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, step_seconds, training_step  # noqa: E402

from mlns_fast.config import resolve_config  # noqa: E402
from mlns_fast.device import resolve_precision  # noqa: E402

CONV_OPS = ("aten::mkldnn_convolution", "aten::convolution_backward")


@contextlib.contextmanager
def stdout_to(path: str):
    """Send the process's file descriptor 1 to `path`: oneDNN's verbose lines are written by C code,
    past Python's sys.stdout, so only the descriptor itself can catch them."""
    sys.stdout.flush()
    saved = os.dup(1)
    with open(path, "w") as f:
        os.dup2(f.fileno(), 1)
        try:
            yield
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)


def kernels(step) -> list[tuple[str, str, str, float]]:
    """(primitive, implementation, shape, ms) of every convolution and matmul oneDNN runs in a step (the
    second of two under verbose mode)."""
    with tempfile.TemporaryDirectory() as tmp:
        log = os.path.join(tmp, "onednn.txt")
        with stdout_to(log), torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
            step()  # creates the primitives anew in verbose mode: its times include that
            os.write(1, b"--- second step ---\n")
            step()
        rows = []
        for line in Path(log).read_text().split("--- second step ---\n", 1)[-1].splitlines():
            f = line.split(",")
            # onednn_verbose,v1,primitive,exec,cpu,KIND,IMPL,PROP,FORMATS,ATTRS,AUX,SHAPE,MS
            if len(f) >= 13 and f[2:4] == ["primitive", "exec"] and f[5] in ("convolution", "matmul", "inner_product"):
                rows.append((f"{f[5]} {f[7]}", f[6], f[-2], float(f[-1])))
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="mlns_cnn")
    ap.add_argument("--prune-stages", type=int, default=0)
    ap.add_argument("--bs", type=int, default=128)
    ap.add_argument("--steps", type=int, default=3, help="steps profiled (after --warmup untimed ones)")
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--rows", type=int, default=15, help="ops listed, by self time")
    ap.add_argument("--kernels", action="store_true", help="list oneDNN's implementation of each conv / matmul")
    a = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    flags = {"prune_stages": a.prune_stages} if a.prune_stages else {}
    cfg = resolve_config(arch=a.arch, bs=a.bs, **flags)
    print(f"machine: {machine()}")
    print(f"arch {a.arch}, bs {a.bs}, precision {resolve_precision(cfg.train.precision, device)}, "
          f"channels_last {cfg.model.channels_last}")
    step = training_step(cfg, device)
    times = step_seconds(step, a.warmup + 5)
    ms = statistics.median(times[a.warmup:]) * 1000
    print(f"step: {ms:.1f} ms median of 5 after {a.warmup} ({a.bs / ms * 1000:.0f} img/s)")

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(a.steps):
            step()
    ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in ops)
    print(f"\nops by self CPU time ({a.steps} steps profiled: {total / a.steps / 1000:.1f} ms a step under the profiler)")
    for e in ops[:a.rows]:
        print(f"  {e.key:42s} {e.self_cpu_time_total / a.steps / 1000:8.1f} ms  {100 * e.self_cpu_time_total / total:5.1f} %"
              f"  x{e.count // a.steps}")
    print("\nconvolutions by input shape (ms a step; backward's first shape is the output's gradient)")
    for e in prof.key_averages(group_by_input_shape=True):
        if e.key in CONV_OPS:
            shapes = " ".join("x".join(map(str, s)) for s in e.input_shapes if s)
            print(f"  {'forward ' if e.key == CONV_OPS[0] else 'backward'} {e.self_cpu_time_total / a.steps / 1000:7.1f}"
                  f"  {shapes}")
    if a.kernels:
        if device.type != "cpu":
            print("\n--kernels lists oneDNN's CPU kernels; this run computes on", device)
            return
        rows = kernels(step)
        print(f"\noneDNN kernels of one step ({len(rows)} calls): implementation, calls, ms in all")
        agg = collections.defaultdict(lambda: [0, 0.0])
        for prim, impl, shape, t in rows:
            agg[(prim, impl, shape)][0] += 1
            agg[(prim, impl, shape)][1] += t
        for (prim, impl, shape), (n, t) in sorted(agg.items(), key=lambda kv: -kv[1][1]):
            print(f"  {prim:34s} {impl:48s} x{n:<4d} {t:7.2f}  {shape}")


if __name__ == "__main__":
    main()
