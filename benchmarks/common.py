"""Shared helpers for the benchmark scripts (not part of the test suite)."""
from __future__ import annotations

import contextlib
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from mlns_fast.device import cpu_name, resolve_precision
from mlns_fast.losses import make_loss
from mlns_fast.model import backbone_stages, create_model
from mlns_fast.optim import adamw, decay_groups


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


def training_step(cfg, device, compiled: bool = False, frozen: int = 0):
    """A closure running one training step of `cfg`'s model on a fixed random batch (no data loading): forward
    under the run's autocast, the loss, backward and a fused AdamW step, as a run computes them. `frozen`: the
    backbone's first stages that do not train, as `--freeze-out` leaves them in its later epochs."""
    torch.manual_seed(0)
    model = create_model(cfg.model, cfg.size).to(device)
    for stage in backbone_stages(model.backbone)[:frozen]:
        for p in stage:
            p.requires_grad_(False)
    if cfg.model.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if compiled:
        model.compile()
    opt, loss_func = adamw(decay_groups(model), lr=1e-3, wd=0.05), make_loss(cfg.model.head)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(resolve_precision(cfg.train.precision, device))
    autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype else contextlib.nullcontext
    bs, (h, w) = cfg.data.bs, cfg.size
    x = torch.rand(bs, 1, h, w, device=device)
    y = (torch.randint(0, 37, (bs,), device=device), torch.randint(0, 10, (bs, 4), device=device),
         torch.rand(bs, device=device) < 0.75)

    def step():
        with autocast():
            out = model(x)
        loss_func(out.float(), *y).backward()
        opt.step()
        opt.zero_grad()
        if device.type == "cuda":
            torch.cuda.synchronize()
    return step


def step_seconds(step, n: int) -> list[float]:
    """Wall seconds of each of `n` calls of `step` (which drains the device itself)."""
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return times
