"""Where a run computes and at what precision: resolved once per run, then handed around.

`auto` picks bf16 where the device computes it natively (CUDA Ampere+, or a CPU with
AVX512-BF16 / AMX), else fp32; fp16 needs CUDA. Measured on this project's 2-core AVX512-BF16 CPU,
bf16 autocast trains mlns_cnn 2.1x faster than fp32 (benchmarks/README.md), so such CPUs get it too.
"""
from __future__ import annotations

import contextlib
import functools
import os
import platform

import torch
from fastai.callback.core import Callback
from fastai.callback.fp16 import MixedPrecision
from fastai.torch_core import set_seed, to_float

from .errors import ConfigError


class CPUAutocast(Callback):
    """bf16 autocast on CPU. fastai's MixedPrecision only autocasts CUDA; bf16 needs no grad scaler."""
    order = MixedPrecision.order

    def before_batch(self):
        self.ctx = torch.autocast("cpu", dtype=torch.bfloat16)
        self.ctx.__enter__()

    def after_pred(self):
        self.learn.pred = to_float(self.pred)

    def after_loss(self):
        self.ctx.__exit__(None, None, None)

    def after_cancel_batch(self):
        with contextlib.suppress(Exception):
            self.ctx.__exit__(None, None, None)


def default_device() -> torch.device:
    """This process's GPU (its local rank's under a distributed launch), else the CPU."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, numpy and torch (fastai's `set_seed`) and choose the kernels: with `deterministic`,
    cuDNN's and torch's deterministic ones, so a GPU run repeats bit for bit (a CPU run does anyway).
    Set both ways on every call: the flags are process-wide, and a suite or sweep runs many configs in
    one process. cuBLAS reads its workspace setting when it starts, so it is set here before the
    first GPU matmul of the process (an earlier one keeps the old workspace; torch then warns)."""
    set_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.deterministic = deterministic
    torch.use_deterministic_algorithms(deterministic, warn_only=True)


def native_bf16(device: torch.device) -> bool:
    """Whether the device computes bf16 natively."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto` -> bf16 where the device has native bf16, else fp32; fp16 needs CUDA."""
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("--precision fp16 needs a CUDA GPU (use bf16 or fp32 on CPU)")
    return precision


def precision_callbacks(precision: str, device: torch.device) -> list[Callback]:
    """fastai callbacks for a resolved precision (fresh instances: each Learner needs its own)."""
    if precision == "fp32":
        return []
    if device.type == "cuda":
        return [MixedPrecision(amp_mode=precision)]  # loss scaling only for fp16 (fastai decides)
    return [CPUAutocast()]


@functools.cache  # a process's CPU does not change: /proc/cpuinfo is read once
def cpu_name() -> str:
    """This CPU's model name (Linux: /proc/cpuinfo, where `platform.processor()` is empty) and the widest
    vector instructions torch's kernels use on it (`AVX2`, `AVX512`...): two machines of one model name
    can train several times apart (a 2-core AVX512-BF16 EPYC trains the default recipe in bf16, an
    AVX2-only one in fp32: experiments/RESULTS.md), so a run's minutes are read beside both."""
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    return f"{model}, {torch.backends.cpu.get_cpu_capability()}"


def device_name(device: torch.device) -> str:
    """What a run computed on, for its summary (`compare` shows it where runs differ)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({cpu_name()})"
