"""The C heap under CPU torch: what glibc's malloc keeps, gives back and faults in again.

On a CPU torch takes every tensor from the C library's malloc (its caching allocator is CUDA's), so
glibc's policies decide two costs that neither torch nor fastai handles:

- **Freed memory kept** (training): glibc keeps the activation blocks a step frees in its heap; a
  resnet18 run's heap grew by 6-10 MiB a step. `malloc_trim` gives them back (`callbacks.HeapTrim`,
  every `heap_trim_every()` training batches; RESULTS.md, thirty-eighth round).
- **Large blocks mapped afresh** (reading): glibc serves every block above its mmap threshold (32 MiB
  at most, whatever it adapts to) with a new mmap and unmaps it on free, so the kernel faults in and
  zeroes every page of it again at the next batch. Reading 256 images at a time allocates activations
  far above that (the CNN's first map alone: 256 x 32 x 40 x 168 floats, 220 MiB): a resnet50
  battery spent a third of its CPU time in the kernel, 297 million page faults. `keep_large_blocks`
  serves them from the heap instead, where a freed block is reused as it is: reading (`reading`, for
  evaluate, robustness, predict) sets it. Training does not: its steps ran no faster with it and its
  validations gained under 1 % of a run, for more memory (benchmarks/README.md).

glibc's own variables (`MALLOC_MMAP_MAX_`, `MALLOC_TRIM_THRESHOLD_`, ..., `GLIBC_TUNABLES`) win where a
user gives them; note that any of them also turns glibc's adaptive mmap threshold off (a default run's
training step then took 305 ms instead of 229: every block above 128 KiB mapped afresh).

Written by hand because it is two glibc calls through ctypes: Intel's `torch.backends.xeon.run_cpu`
gets the same effect by preloading jemalloc or tcmalloc, which the toolkit cannot assume installed.
Outside glibc (macOS, Windows, musl) every function here does nothing.
"""
from __future__ import annotations

import ctypes
import os
from functools import lru_cache

from .errors import ConfigError

HEAP_TRIM_ENV = "MLNS_FAST_HEAP_TRIM"  # training batches between trims; 0 = never
HEAP_TRIM_EVERY = 50  # measured: benchmarks/heap.py
HEAP_KEEP_ENV = "MLNS_FAST_HEAP_KEEP"  # 1 (default): keep large blocks in the heap; 0: glibc's policy as it is

# mallopt parameters (glibc's malloc.h)
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
KEEP_TOP = 1 << 30  # a free heap top under this stays, for the next batch to reuse
# glibc's own settings of the same things: where the user gave any, theirs stand
GLIBC_MALLOC_ENV = ("MALLOC_MMAP_MAX_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")


@lru_cache(maxsize=None)
def _glibc_function(name: str):
    try:
        return getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError, TypeError):
        return None


def malloc_trim():
    """glibc's `malloc_trim`, or None where the C library has none (macOS, Windows, musl)."""
    return _glibc_function("malloc_trim")


def heap_trim_every() -> int:
    """$MLNS_FAST_HEAP_TRIM, else HEAP_TRIM_EVERY."""
    v = os.environ.get(HEAP_TRIM_ENV, "").strip()
    if not v:
        return HEAP_TRIM_EVERY
    if not v.isdigit():
        raise ConfigError(f"${HEAP_TRIM_ENV}={v!r}: give the training batches between heap trims (0 = never)")
    return int(v)


def heap_keep() -> bool:
    """$MLNS_FAST_HEAP_KEEP: 1 (the default) or 0."""
    v = os.environ.get(HEAP_KEEP_ENV, "").strip()
    if v not in ("", "0", "1"):
        raise ConfigError(f"${HEAP_KEEP_ENV}={v!r}: give 1 (keep large blocks in the heap) or 0 (glibc's policy)")
    return v != "0"


def user_malloc_settings() -> list[str]:
    """The glibc malloc settings the environment gives (MALLOC_*_ variables, GLIBC_TUNABLES's malloc ones)."""
    given = [k for k in GLIBC_MALLOC_ENV if k in os.environ]
    if "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        given.append("GLIBC_TUNABLES")
    return given


_kept: bool | None = None  # keep_large_blocks's answer, once per process


def keep_large_blocks() -> bool:
    """Serve large blocks from the heap and keep a freed heap top up to KEEP_TOP, for the rest of the
    process (glibc's `mallopt(M_MMAP_MAX, 0)` and `mallopt(M_TRIM_THRESHOLD, KEEP_TOP)`): the next batch
    reuses the last one's pages instead of faulting in fresh ones. Numbers do not change, only where
    the memory comes from. True when set; False outside glibc, with $MLNS_FAST_HEAP_KEEP=0, or where the
    user set glibc's malloc through its own environment variables (theirs stand). Idempotent."""
    global _kept
    wanted = heap_keep()  # a bad value is refused on every call, also once the setting is made
    if _kept is None:
        mallopt = _glibc_function("mallopt")
        _kept = bool(mallopt and wanted and not user_malloc_settings()
                     and mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, KEEP_TOP) == 1)
    return _kept
