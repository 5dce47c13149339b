"""fastai callbacks: EMA (timm's ModelEmaV3), CPU bf16 autocast, epoch plan, guards, run logging."""
from __future__ import annotations

import contextlib
import logging
import math
import signal
import threading
import time

import torch
import torch.distributed as dist
from fastai.callback.core import Callback, CancelFitException
from fastai.distributed import DistributedTrainer
from fastai.callback.fp16 import MixedPrecision
from fastai.learner import Recorder
from fastai.torch_core import to_float
from timm.utils import ModelEmaV3

from .losses import sum_log_probs

log = logging.getLogger(__name__)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain model inside a DistributedDataParallel wrapper (or the model itself)."""
    return getattr(model, "module", model)


@torch.no_grad()
def evaluate_module(model: torch.nn.Module, dl, loss_func, autocast=contextlib.nullcontext) -> tuple[float, float]:
    """Mean loss and sum accuracy of `model` over a loader of (x, sums, digits, known) batches."""
    was_training = model.training
    model.eval()
    loss_sum, correct, n = 0.0, 0, 0
    for x, *y in dl:
        with autocast():
            out = model(x)
        out = out.float()
        loss_sum += float(loss_func(out, *y)) * len(x)
        correct += int((sum_log_probs(out).argmax(1) == y[0]).sum())
        n += len(x)
    model.train(was_training)
    return loss_sum / max(n, 1), correct / max(n, 1)


class EMACallback(Callback):
    """Exponential moving average of the weights through timm's `ModelEmaV3`, validated every epoch.

    Ordered right after MixedPrecision so a step the grad scaler cancelled (fp16 overflow) is not
    averaged in. The EMA copy stays fp32 (fastai keeps master weights fp32 under autocast) and
    averages BatchNorm buffers too (`exclude_buffers=False`). After each validation of the raw
    weights it validates the EMA weights; `valid_loss_ema` / `acc_ema` expose them as metrics.
    """
    order = MixedPrecision.order + 1

    def __init__(self, decay: float, warmup: bool = False, autocast=contextlib.nullcontext):
        self.decay, self.warmup, self.autocast = decay, warmup, autocast
        self.model_ema, self.updates, self.state_to_load = None, 0, None
        self.valid_loss, self.acc = float("nan"), float("nan")

    def before_fit(self):
        if self.model_ema is None:
            self.model_ema = ModelEmaV3(unwrap(self.learn.model), decay=self.decay, use_warmup=self.warmup)
        if self.state_to_load is not None:
            self.model_ema.module.load_state_dict(self.state_to_load)
            self.state_to_load = None

    def before_batch(self):
        self.cancelled = False

    def after_cancel_step(self):
        self.cancelled = True

    def after_step(self):
        if self.cancelled:
            return
        self.updates += 1
        self.model_ema.update(unwrap(self.learn.model), step=self.updates if self.warmup else None)

    def after_validate(self):
        self.valid_loss, self.acc = evaluate_module(self.model_ema.module, self.dls.valid, self.learn.loss_func, self.autocast)

    # metric hooks (fastai ValueMetric reads these after validation)
    def valid_loss_ema(self):
        return self.valid_loss

    def acc_ema(self):
        return self.acc


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


class EpochPlan(Callback):
    """Tells the training loader which epoch it is, so its item plan (order, synthetic keys) is a pure function of it."""

    def before_train(self):
        self.dls.train.epoch = self.epoch


class DivergenceGuard(Callback):
    """Stops training at the first NaN/inf loss, before it reaches the weights, recording where."""
    order = Recorder.order - 1

    def after_loss(self):
        bad = torch.tensor([0.0 if torch.isfinite(self.learn.loss).item() else 1.0])
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(bad)  # every rank stops together, or the others would wait forever
        if bad.item():
            lr = self.opt.hypers[-1]["lr"] if self.opt is not None else float("nan")
            self.learn.stop_reason = ("diverged", f"loss became {self.learn.loss.detach().item()} at epoch {self.epoch}, "
                                                  f"batch {self.iter}, lr {lr:.3g}")
            raise CancelFitException()


class SignalStop(Callback):
    """SIGINT / SIGTERM end the current batch and then training, recorded as an interruption."""

    def before_fit(self):
        self.caught, self.old = None, {}
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.old[sig] = signal.signal(sig, self._catch)

    def _catch(self, signum, frame):
        self.caught = signal.Signals(signum).name
        for sig, handler in self.old.items():  # a second signal acts at once
            signal.signal(sig, handler)

    def after_batch(self):
        if self.caught:
            self.learn.stop_reason = ("interrupted", f"{self.caught} at epoch {self.epoch}, batch {self.iter}")
            raise CancelFitException()

    def after_fit(self):
        for sig, handler in self.old.items():
            signal.signal(sig, handler)


class RunLog(Callback):
    """After every completed epoch: a metrics.csv row, then an atomic checkpoint, then summary.json."""
    order = Recorder.order + 5

    def __init__(self, run, rows: list[dict], on_epoch):
        self.run, self.rows, self.on_epoch = run, rows, on_epoch
        self.smooth_to_load = None

    def before_fit(self):
        # Recorder (ordered before us) just reset its running-average train loss; a resumed run
        # continues the one it had, so its train_loss column matches an uninterrupted run.
        if self.smooth_to_load is not None:
            sl = self.learn.recorder.smooth_loss
            sl.count, sl.val = self.smooth_to_load["count"], self.smooth_to_load["val"]
            self.smooth_to_load = None

    def before_epoch(self):
        self.skipped, self.t0 = False, time.perf_counter()

    def after_cancel_epoch(self):
        self.skipped = True

    def after_epoch(self):
        rec = self.learn.recorder
        if self.skipped or rec.cancel_train or rec.cancel_valid or getattr(self.learn, "stop_reason", None):
            return
        vals = dict(zip(rec.metric_names, rec.log))
        row = {"epoch": self.epoch, "train_loss": vals.get("train_loss"), "valid_loss": vals.get("valid_loss"),
               "acc": vals.get("acc"), "valid_loss_ema": vals.get("valid_loss_ema"), "acc_ema": vals.get("acc_ema"),
               "lr": self.opt.hypers[-1]["lr"], "seconds": round(time.perf_counter() - self.t0, 3)}
        self.rows.append({k: _clean(v) for k, v in row.items()})
        self.run.write_metrics(self.rows)
        self.on_epoch(self.learn, self.epoch)


def _clean(v):
    if isinstance(v, torch.Tensor):
        v = v.item()
    if isinstance(v, float) and math.isnan(v):
        return None
    return v


class ShardedTrainer(DistributedTrainer):
    """fastai's DistributedTrainer (accelerate, DDP, SyncBatchNorm) minus its DistributedDL.

    DistributedDL broadcasts index lists as CUDA tensors (NCCL only) and shards them by striding,
    which would break both CPU (gloo) runs and the per-batch synthetic share. `PlanDL` already
    gives each rank its own shard of real images and its own synthetic stream, so the loaders
    pass through unchanged.
    """

    def _wrap_dl(self, dl):
        return dl
