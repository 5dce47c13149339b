"""Shared helpers for the benchmark scripts (not part of the test suite)."""
from __future__ import annotations

import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from mlns_fast.device import cpu_name


def machine() -> str:
    cpu = cpu_name()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {torch.get_num_threads()} torch threads, {gpu}, torch {torch.__version__}"


class Timer:
    """Wall time of steps `warmup`+1 .. `total`, the device drained only at those two marks.

    Synchronising every step would stop the host from queueing work ahead of a GPU, the very
    overlap a training loop is measured on."""

    def __init__(self, warmup: int, total: int):
        self.warmup, self.total, self.n, self.t0, self.t1, self.items = warmup, total, 0, None, None, 0

    @staticmethod
    def _sync() -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def step(self, items: int) -> None:
        self.n += 1
        if self.n == self.warmup:
            self._sync()
            self.t0 = time.perf_counter()
        elif self.n > self.warmup:
            self.items += items
        if self.n == self.total:
            self._sync()
            self.t1 = time.perf_counter()

    @property
    def done(self) -> bool:
        return self.n >= self.total

    @property
    def rate(self) -> float:
        return self.items / (self.t1 - self.t0)


def train_flops_per_image(model: torch.nn.Module, x: torch.Tensor, loss_of) -> float:
    """FLOPs of one training step (forward and backward) per image, as torch's FlopCounterMode counts
    them: convolutions and matrix products, the arithmetic that bounds a CPU's step (the GRU's fused
    cell and the elementwise ops are not counted). `loss_of(out)` turns the model's output into a loss."""
    model.train()
    with FlopCounterMode(display=False) as counter:
        loss_of(model(x)).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / len(x)
