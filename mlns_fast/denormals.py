"""Denormal floats flushed to zero while a run trains on an x86 CPU, on every thread that computes it.

Arithmetic on a float below 1.2e-38 costs an x86 core dozens of cycles; a deep network's AdamW state
fills with such floats (the squares of tiny gradients), and on a 2-core AVX2 EPYC the fused AdamW step
over resnet18's channels-last state took 0.32-0.56 s with them against 0.01-0.02 s without
(benchmarks/README.md). Whether they are flushed is a bit of each thread's MXCSR register, which a thread
inherits from the one that creates it. `torch.set_flush_denormal` sets the calling thread's only: the
OpenMP threads that compute half of every op on two cores keep theirs, and the setting outlives the run
in its process (a test suite after it: Hypothesis refuses to run without subnormals). Nothing in torch or
fastai sets it for the OpenMP team and restores it after, hence by hand: glibc's `fesetenv` run on each
thread of the calling thread's team through libgomp's `GOMP_parallel`, the entry point a compiler emits
for `#pragma omp parallel` -- the team torch's parallel ops, MKL and oneDNN then run on. Where that is
not the setup (not Linux on x86-64, no libgomp in the process, an OpenMP team of another runtime),
nothing is changed and training runs as before.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
import platform
import sys

import torch

FTZ_DAZ = 0x8040  # MXCSR: flush-to-zero (results) | denormals-are-zero (inputs)
_MXCSR = slice(28, 32)  # glibc x86-64 fenv_t: the x87 environment (28 bytes), then MXCSR
_ENV_SIZE = 64  # room for fenv_t (32 bytes on glibc x86-64)


@functools.cache
def _runtime():
    """(libgomp, libm) as loaded in this process, or None where the per-team setting does not apply."""
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
        return None
    if "OpenMP" not in torch.__config__.parallel_info():
        return None
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "/libgomp" in line}
    except OSError:
        return None
    # other packages bring their own copy (scikit-learn's wheel does): torch's own is the one in its
    # folder; a torch built against the system's has it alone or cannot be told apart (then: nothing)
    own = {p for p in paths if p.startswith(os.path.dirname(torch.__file__) + os.sep)}
    paths = own or paths
    if len(paths) != 1:
        return None
    try:
        gomp = ctypes.CDLL(paths.pop(), mode=os.RTLD_NOLOAD)  # the copy torch already uses, not a new one
        libm = ctypes.CDLL(ctypes.util.find_library("m") or "libm.so.6")
    except OSError:
        return None
    gomp.GOMP_parallel.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
    gomp.GOMP_parallel.restype = None
    return gomp, libm


def _get_env(libm) -> bytes | None:
    env = ctypes.create_string_buffer(_ENV_SIZE)
    if libm.fegetenv(env) != 0:
        return None
    mxcsr = int.from_bytes(env.raw[_MXCSR], "little")
    if mxcsr >> 16 or mxcsr & 0x1F80 != 0x1F80:  # not an MXCSR with its exceptions masked: another layout
        return None
    return env.raw


def _set_team_env(gomp, libm, env: bytes) -> None:
    """Install `env` on the calling thread and on every thread of its OpenMP team."""
    buf = ctypes.create_string_buffer(env, _ENV_SIZE)
    gomp.GOMP_parallel(ctypes.cast(libm.fesetenv, ctypes.c_void_p), ctypes.addressof(buf), torch.get_num_threads(), 0)


def flushing() -> bool:
    """Whether this thread flushes denormals now (1e-39 times 1 comes out as 0)."""
    return torch.tensor([1e-39]).mul(1.0).item() == 0.0


@contextlib.contextmanager
def denormals_flushed(device: torch.device):
    """Inside: denormals flushed on the calling thread and its OpenMP team (CPU runs only); after, even
    when the body raises, every thread of the team back to the calling thread's environment from before.
    Yields whether it flushed (False: not a CPU run, already flushing, or not a setup it knows)."""
    rt = _runtime() if device.type == "cpu" else None
    before = _get_env(rt[1]) if rt else None
    if before is None or int.from_bytes(before[_MXCSR], "little") & FTZ_DAZ:
        yield False
        return
    mxcsr = int.from_bytes(before[_MXCSR], "little") | FTZ_DAZ
    _set_team_env(*rt, before[:28] + mxcsr.to_bytes(4, "little") + before[32:])
    try:
        yield True
    finally:
        _set_team_env(*rt, before)
