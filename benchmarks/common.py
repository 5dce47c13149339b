"""Shared helpers for the benchmark scripts (not part of the test suite)."""
from __future__ import annotations

import platform
import time

import torch


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {torch.get_num_threads()} torch threads, {gpu}, torch {torch.__version__}"


class Timer:
    """Wall time of the steps after `warmup` steps."""

    def __init__(self, warmup: int):
        self.warmup, self.n, self.t0, self.items = warmup, 0, None, 0

    def step(self, items: int) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.n += 1
        if self.n == self.warmup:
            self.t0 = time.perf_counter()
        elif self.n > self.warmup:
            self.items += items

    @property
    def rate(self) -> float:
        return self.items / (time.perf_counter() - self.t0)
