"""fastai callbacks: EMA (timm's ModelEmaV3), epoch plan, self-training, guards, training controls (gradient
accumulation, early stopping), the heap trim, the run tracker."""
from __future__ import annotations

import logging
import math
import signal
import threading
import time

import numpy as np
import torch
import torch.distributed as dist
from fastai.callback.core import Callback, CancelFitException
from fastai.callback.fp16 import MixedPrecision
from fastai.callback.tracker import EarlyStoppingCallback
from fastai.callback.training import GradientAccumulation
from fastai.distributed import DistributedTrainer
from fastai.callback.progress import ProgressCallback
from fastai.callback.schedule import ParamScheduler
from fastai.imports import noop  # the one fastai's no_logging sets (fastcore has its own)
from fastai.learner import AvgLoss, AvgMetric, AvgSmoothLoss, Learner, Recorder, ValueMetric
from fastai.torch_core import find_bs, num_distrib, to_detach
from fastcore.foundation import L
from timm.utils import ModelEmaV3, distribute_bn, unwrap_model

from .device import precision_callbacks
from .errors import RunError
from .heap import HEAP_TRIM_EVERY, malloc_trim
from .losses import acc, box_loss
from .model import backbone_stages
from .reading import batches
from .runs import METRIC_COLUMNS, state_dict_problem

log = logging.getLogger(__name__)


def scorer(dls, module, loss_func, cbs=()) -> Learner:
    """A quiet fastai Learner that only scores `module` (validate, get_preds) on `dls.valid`: fastai's
    own validation loop for weights other than the training Learner's (EMA, calibration)."""
    learn = Learner(dls, module, loss_func=loss_func, metrics=[DeviceAvgMetric(acc)], cbs=list(cbs))
    learn.remove_cbs(ProgressCallback)
    keep_losses_on_device(learn)
    return learn


def keep_losses_on_device(learn: Learner) -> None:
    """The Recorder's running losses accumulated on the device (read once per epoch), not moved to the
    CPU every batch as fastai's are: each such move makes the host wait for the device."""
    learn.recorder.loss = DeviceAvgLoss()
    learn.recorder.smooth_loss = DeviceSmoothLoss(beta=learn.recorder.smooth_loss.beta)


def stop_fit(learn: Learner, status: str, message: str) -> None:
    """End the fit now, recording why: `learn.stop_reason` is written here only, read by the run's
    end (`train.fit`) and by `CompletedEpochs` (a stopped epoch is not a completed one)."""
    learn.stop_reason = (status, message)
    raise CancelFitException()


class Reports(Callback):
    """A callback with figures for the run's summary.json: `RunTracker` adds what `summary()` returns."""

    def summary(self) -> dict:
        return {}


class EMACallback(Callback):
    """Exponential moving average of the weights through timm's `ModelEmaV3`, validated every epoch.

    Ordered right after MixedPrecision so a step the grad scaler cancelled (fp16 overflow) is not
    averaged in. The EMA copy stays fp32 (fastai keeps master weights fp32 under autocast) and
    averages BatchNorm buffers too (`exclude_buffers=False`). After fastai validates the raw
    weights, the EMA weights go through fastai's own validation as well: a second Learner over the
    EMA module, the same loss, metric, valid loader and precision (`learn.precision`).
    `valid_loss_ema` / `acc_ema` expose the result as metrics of the training Learner.
    """
    order = MixedPrecision.order + 1

    def __init__(self, decay: float, warmup: bool = False):
        self.decay, self.warmup = decay, warmup
        self.model_ema, self.updates = None, 0
        self.valid_loss, self.acc = float("nan"), float("nan")

    def before_fit(self):
        if self.model_ema is None:
            self.model_ema = ModelEmaV3(unwrap_model(self.learn.model), decay=self.decay, use_warmup=self.warmup)
        device = self.dls.device or torch.device("cpu")
        self.scorer = scorer(self.dls, self.model_ema.module, self.learn.loss_func,
                             precision_callbacks(self.learn.precision, device))

    def before_batch(self):
        self.cancelled = False

    def after_cancel_step(self):
        self.cancelled = True

    def after_step(self):
        if self.cancelled:
            return
        self.updates += 1
        self.model_ema.update(unwrap_model(self.learn.model), step=self.updates if self.warmup else None)

    def after_validate(self):
        self.sync_ranks()
        self.valid_loss, self.acc = self.scorer.validate()

    def sync_ranks(self) -> None:
        """Under DDP, every rank's EMA BatchNorm statistics replaced by their mean over the ranks (timm's
        `distribute_bn`, as timm's train.py does for its EMA each epoch), so that every rank validates,
        and rank 0 saves, one EMA. The EMA's weights agree across ranks (DDP's synchronised steps), its
        BN buffers do not: without SyncBatchNorm (the CPU) each rank averages in its own buffers, which DDP
        overwrites with rank 0's only at the next forward; the recorded `acc_ema` was then the mean of
        two networks' accuracies, neither of them the one saved."""
        if num_distrib() > 1:
            distribute_bn(self.model_ema.module, num_distrib(), reduce=True)

    def state_dict(self) -> dict:
        return {"ema": self.model_ema.module.state_dict(), "ema_updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.model_ema.module.load_state_dict(state["ema"])
        self.updates = state.get("ema_updates", 0)

    def metrics(self) -> list:
        """fastai metrics reading this callback's last EMA validation."""
        return [ValueMetric(self.valid_loss_ema), ValueMetric(self.acc_ema)]

    def valid_loss_ema(self):
        return self.valid_loss

    def acc_ema(self):
        return self.acc


class EpochTable(Callback):
    """fastai's epoch table without progress bars (`--progress table`): the bars redraw with carriage
    returns, which fill a log file. Hand-written: fastprogress's console master bar, which prints the
    table, writes a bar character as soon as it is created. Same columns and layout as fastai's."""
    order = ProgressCallback.order

    def before_fit(self):
        self.old_logger, self.widths = self.learn.logger, None
        if self.old_logger is noop:  # fastai's no_logging (lr_find's sweep), as ProgressCallback honours it
            return
        self.learn.logger = self._write
        self._write(self.recorder.metric_names)

    def _write(self, log):
        cells = [f"{v:.6f}" if isinstance(v, float) else str(v) for v in log]
        if self.widths is None:  # the header: names padded to 8, as fastprogress does
            self.widths = [max(8, len(c)) for c in cells]
        print("  ".join(c.ljust(w) for c, w in zip(cells, self.widths)).rstrip(), flush=True)

    def after_fit(self):
        self.learn.logger = self.old_logger


class EpochPlan(Callback):
    """Tells the training loader which epoch it is, so its item plan (order, synthetic keys) is a pure function of it."""

    def before_train(self):
        self.dls.train.epoch = self.epoch


class SelfTraining(Reports):
    """Self-training on real images labelled with sums only: before each epoch after the first, the
    current weights read every real training image; where the four readings sum to the image's label
    and each digit's probability is at least `threshold`, the readings become that image's digit labels
    for the epoch (the loss then takes per-digit cross-entropy instead of the sum marginal). Readings
    are refreshed every epoch, so a wrong early reading is not kept. Hand-written: fastai and timm have
    no pseudo-labelling, and here the label check (the sum) is specific to this task."""

    def __init__(self, threshold: float, bs: int = 512):
        self.threshold, self.bs = threshold, bs
        self.history: list[float] = []  # share of real images labelled, per epoch

    def summary(self) -> dict:
        """What the run's summary.json records of self-training (RunTracker collects it)."""
        return {"self_train_labelled": self.history}

    def before_train(self):
        items = self.dls.train.dataset
        if self.epoch == 0 or items.real is None or items.real.digits is not None:
            return
        model, was_training = self.learn.model, self.learn.model.training
        model.eval()
        with torch.no_grad():
            probs = [model(torch.from_numpy(x).to(self.dls.device or "cpu")).float().softmax(-1).cpu()
                     for x in batches(items.real.images, self.bs)]
        model.train(was_training)
        conf, digits = torch.cat(probs).max(-1)  # (N, 4) each
        ok = (digits.sum(1).numpy() == items.real.sums) & (conf.min(1).values.numpy() >= self.threshold)
        items.pseudo = np.where(ok[:, None], digits.numpy(), -1).astype(np.int64)
        self.history.append(round(float(ok.mean()), 4))
        log.info("self-training: epoch %d, %.1f %% of real images digit-labelled", self.epoch, 100 * ok.mean())


class BoxTarget(Callback):
    """`--box-weight`: the per-column box target (`losses.box_loss`) beside the head's loss, the way
    fastai's RNNRegularizer adds its terms: the training batch's digit spans leave `yb` before the loss
    and the metrics see it, the model's training output (logits, column logits, column x) is taken
    apart after the prediction, and the weighted term joins the loss before the backward pass.
    Ordered first, so every other callback sees the batch and the prediction as without it."""
    order = -10

    def __init__(self, weight: float):
        self.weight, self.spans, self.aux = weight, None, None

    def before_batch(self):
        self.spans = None
        if len(self.learn.yb) == 4:  # training batches only: validation items carry no spans
            *yb, self.spans = self.learn.yb
            self.learn.yb = tuple(yb)

    def after_pred(self):
        self.aux = None
        if isinstance(self.learn.pred, tuple):  # the model in training mode
            self.learn.pred, *self.aux = self.learn.pred

    def after_loss(self):
        if self.aux is None or self.spans is None:
            return
        cols, xs = self.aux
        term = self.weight * box_loss(cols, xs, self.spans, self.learn.yb[1])
        self.learn.loss_grad = self.learn.loss_grad + term
        self.learn.loss = self.learn.loss + term.detach()


class ProgressiveResize(Callback):
    """`--progressive`: fastai's progressive resizing, per epoch rather than per DataLoaders. The first
    `epochs` training epochs set the model's `canvas` to `scale` of its image size, where its input stage
    (the ink fit, else a resize) draws each image; validation, later epochs and every use after the fit
    see the full size. Items and loaders stay as they are: the canvas is the model's, so the rendered
    batches, their order and the seed's draws are those of a full-size run. Hand-written: fastai resizes
    through the DataLoaders' transforms, and here the resampling the ink fit already does is the resize."""

    def __init__(self, scale: float, epochs: int):
        self.scale, self.epochs = scale, epochs

    def _set(self, canvas) -> None:
        unwrap_model(self.learn.model).canvas = canvas

    def before_train(self):
        size = unwrap_model(self.learn.model).size
        small = self.epoch < self.epochs
        self._set(tuple(max(1, round(n * self.scale)) for n in size) if small else None)

    def after_train(self):
        self._set(None)

    def after_fit(self):
        self._set(None)


class FreezeOut(Callback):
    """`--freeze-out F`: FreezeOut (Brock et al., 2017) by epoch. The backbone's stages (`model.backbone_stages`)
    stop training one after another, the first after F of the epochs and each later one at even steps from
    there to the end, so that the last stage, like the reader, trains throughout. A frozen front takes no
    backward at all: neither its weights' gradients nor its input's, nor its BatchNorm's and ReLU's, which on
    a CPU are the largest maps (the default CNN's step: 0.76x with its first stage frozen, 0.59x with two;
    `benchmarks/frozen_step.py`). BatchNorm in a frozen stage still normalises by the batch, as it did while
    it trained. The paper also anneals each layer's lr to zero by its freeze: with `anneal` (`--freeze-anneal`)
    each stage's parameter groups (`optim.decay_groups(stages=True)` tags them) follow the fit's own lr
    schedule compressed to end at the stage's freeze -- one-cycle's warm-up and its low-lr finish, in the
    stage's share of the run; without it one-cycle's schedule runs on unchanged until the stage stops (on the
    default: tight -1.7 in every run measured, RESULTS.md, issue 20).
    Hand-written: fastai's `freeze_to` fixes the optimizer's parameter groups for a whole fit; this moves
    with the epoch. Only `train` adds it: lr-find's warm-up and sweep train every stage."""
    order = ParamScheduler.order + 1  # sets the stages' lrs after the schedule has set the batch's

    def __init__(self, start: float, anneal: bool = False):
        self.start, self.anneal = start, anneal

    def before_fit(self):
        self.frozen = []  # what this fit froze (and gives back after it), not what was frozen before
        stages = backbone_stages(unwrap_model(self.learn.model).backbone)[:-1]
        self.stages = [(round(self.n_epoch * (self.start + i * (1 - self.start) / len(stages))), ps)
                       for i, ps in enumerate(stages)]
        # each optimizer group's end of schedule as a share of the fit: its stage's freeze, else the fit's end
        self.ends = [self.stages[pg["stage"]][0] / self.n_epoch if "stage" in pg else 1.0
                     for pg in self.opt.opt.param_groups]

    def before_epoch(self):  # by the epoch's number, so a resumed fit freezes what the first one had
        for at, params in self.stages:
            if self.epoch >= at:
                self.frozen += [p for p in params if p.requires_grad]
                for p in params:
                    p.requires_grad_(False)

    def before_batch(self):
        if not (self.anneal and self.training):
            return
        lr, pct = self.learn.param_scheduler.scheds["lr"], self.pct_train  # pct_train: by the epoch's number too
        # fastai's fit_one_cycle schedules an array, a value per group (its lr_max, read from the groups' hypers):
        # read once per distinct end (a stage's groups share one), each group taking its own value from it
        at = {end: lr(min(pct / end, 1.0) if end else 1.0) for end in set(self.ends)}
        self.opt.set_hyper("lr", [float(at[end][i]) for i, end in enumerate(self.ends)])

    def after_fit(self):
        for p in self.frozen:
            p.requires_grad_(True)
        self.frozen = []


class DivergenceGuard(Callback):
    """Stops training at the first NaN/inf loss, recording where; no step is taken from it.

    Reading the loss on the host every batch (`.item()`) would make the CPU wait for the device to
    drain, so it cannot queue the next batches. Instead each batch's flag stays on the device and
    goes to the optimizer, which skips that step on the device (`DecayGroupsWrapper.skip_if`: fused
    AdamW's `found_inf`, the grad scaler's protocol: weights, moments and step count untouched), and
    the host reads the flags every `every` batches and at the end of each training epoch, before
    validation and the checkpoint. A NaN loss therefore never reaches the weights, and the run ends
    at most `every` batches after it with the first bad batch recorded. With an optimizer that
    cannot skip on the device, the flag is read at once, before backward (one sync per batch).
    Under DDP the flag is all-reduced on the device first, so every rank skips and stops together.
    """
    order = Recorder.order - 1

    def __init__(self, every: int = 32):
        self.every, self.window = every, []

    def before_epoch(self):
        self.window = []  # (flag, loss, batch, lr) of the batches since the last read

    def after_loss(self):
        loss = self.learn.loss.detach()
        bad = (~torch.isfinite(loss)).any().float()  # 0-dim, on the loss's device: NCCL reduces CUDA tensors only
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)  # every rank skips and stops together
        lr = self.opt.hypers[-1]["lr"] if self.opt is not None else float("nan")
        self.window.append((bad, loss, self.iter, lr))
        skip_if = getattr(self.opt, "skip_if", None) if self.training else None
        if self.training and (skip_if is None or not skip_if(bad)):
            self.check()

    def after_batch(self):
        if len(self.window) >= self.every:
            self.check()

    def after_train(self):
        self.check()

    def after_validate(self):  # a non-finite validation loss ends the run too (not the weights' doing, but no use going on)
        self.check()

    def check(self) -> None:
        """Read the flags gathered since the last read (one host sync); stop at the first bad batch."""
        window, self.window = self.window, []
        if not window:
            return
        flags = torch.stack([w[0] for w in window])
        if not flags.any().item():
            return
        _, loss, batch, lr = window[int(flags.argmax())]
        stop_fit(self.learn, "diverged", f"loss became {loss.float().mean().item()} at epoch {self.epoch}, "
                                         f"batch {batch}, lr {lr:.3g}")


class DeviceAvgMetric(AvgMetric):
    """fastai's `AvgMetric` summing on the device (fastai's moves every batch's value to the CPU)."""

    def accumulate(self, learn):
        bs = find_bs(learn.yb)
        self.total += to_detach(self.func(learn.pred, *learn.yb), cpu=False) * bs
        self.count += bs


class DeviceAvgLoss(AvgLoss):
    """fastai's `AvgLoss` (the validation loss) summing on the device."""

    def accumulate(self, learn):
        bs = find_bs(learn.yb)
        self.total += to_detach(learn.loss.mean(), cpu=False) * bs
        self.count += bs


class DeviceSmoothLoss(AvgSmoothLoss):
    """fastai's smoothed training loss (Recorder's `smooth_loss`), kept on the loss's device: fastai's
    own moves every batch's loss to the CPU (`to_detach`), a host sync per batch. Read once an epoch."""

    def accumulate(self, learn):
        self.count += 1
        loss = to_detach(learn.loss.mean(), cpu=False)  # gathered across ranks, as fastai's
        self.val = torch.lerp(loss, self.val.to(loss.device), self.beta)


class LazyProgress(ProgressCallback):
    """fastai's progress bar, showing the smoothed loss every `every` batches instead of every batch
    (formatting it is a host sync: `.item()`)."""

    def __init__(self, every: int = 32):
        self.every = every

    def after_batch(self):
        self.pbar.update(self.iter + 1)
        if self.training and self.iter % self.every == 0 and hasattr(self.learn, "smooth_loss"):
            self.pbar.comment = f"{self.learn.smooth_loss.item():.4f}"


class HeapTrim(Callback):
    """Every `every` training batches and after each validation, give the C heap's freed memory back to
    the system (glibc's `malloc_trim(0)`).

    Why by hand: on a CPU torch allocates tensors with the C library's malloc (its caching allocator
    is CUDA's), and glibc keeps the activation buffers a step frees in its heap: in a resnet18 run the
    heap grew by 6-10 MiB a step and the run peaked at 11.4 GiB of RSS; the same run trimmed peaked
    at 2.2 GiB with the same weights (RESULTS.md, thirty-eighth round). Neither torch nor fastai
    trims it. One trim costs about 29 ms, 0.2 % of the 50 steps it follows (benchmarks/heap.py).
    The C heap's other settings: `heap`."""
    order = Recorder.order + 1

    def __init__(self, every: int = HEAP_TRIM_EVERY):
        self.every, self.trim = every, malloc_trim() if every else None

    def after_batch(self):
        if self.trim and self.training and self.learn.train_iter % self.every == 0:
            self.trim(0)

    def after_validate(self):
        if self.trim:
            self.trim(0)


class SignalStop(Callback):
    """SIGINT / SIGTERM end the current batch and then training, recorded as an interruption.

    The handlers are installed by `with stop:` around the whole run -- training *and* finishing it
    (temperature, weights, summary) -- so that no moment of a run falls back to the default
    handlers; `train.fit` reads `caught` after the last epoch. A second signal acts at once."""

    def __init__(self):
        self.caught, self.old = None, {}

    def __enter__(self) -> "SignalStop":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.old[sig] = signal.signal(sig, self._catch)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self.old.items():
            signal.signal(sig, handler)
        self.old = {}

    def _catch(self, signum, frame):
        self.caught = signal.Signals(signum).name
        for sig, handler in self.old.items():  # a second signal acts at once
            signal.signal(sig, handler)

    def after_batch(self):
        if self.caught:
            stop_fit(self.learn, "interrupted", f"{self.caught} at epoch {self.epoch}, batch {self.iter}")


class Accumulate(GradientAccumulation):
    """fastai's GradientAccumulation over `n` batches of `bs` images (it counts images: n_acc = n x bs),
    starting every epoch clean: a partial accumulation left at the end of an epoch is dropped rather
    than carried into the next, so an epoch's updates do not depend on the one before it and a run
    resumed from its epoch checkpoint takes the same steps as one that never stopped."""

    def __init__(self, n: int, bs: int):
        super().__init__(n_acc=n * bs)

    def before_train(self):
        self.count = 0
        self.learn.opt.zero_grad()


class EarlyStop(EarlyStoppingCallback, Reports):
    """fastai's EarlyStoppingCallback on a valid metric (higher is better), remembering why it stopped.

    `history`: the metric's values in the epochs before this fit (a resumed run), replayed through the
    same rule so patience counts across an interruption. After a stop, `stopped` says why; the run
    itself ends as finished (its weights saved), with `stop_reason` early-stopped in summary.json."""

    def __init__(self, monitor: str, patience: int, history=()):
        super().__init__(monitor=monitor, comp=np.greater, patience=patience)
        self.history, self.stopped = list(history), None

    def summary(self) -> dict:
        """summary.json's `stop_reason` once it stopped the run (RunTracker collects it)."""
        return {"stop_reason": self.stopped["stop_reason"]} if self.stopped else {}

    def before_fit(self):
        super().before_fit()
        for val in self.history:
            self.wait = 0 if val is not None and val > self.best else self.wait + 1
            self.best = max(self.best, val) if val is not None else self.best

    def after_epoch(self):
        try:
            super().after_epoch()
        except CancelFitException:
            self.stopped = {"stop_reason": "early-stopped", "message": f"{self.monitor} did not improve on "
                            f"{self.best:.4f} for {self.wait} epochs (stopped after epoch {self.epoch})"}
            raise


class CompletedEpochs(Callback):
    """Base of callbacks that act after an epoch only if it ran to its end: not cancelled or stopped,
    and validated. `completed_metrics()` is then the epoch's metrics by name, else None."""

    def before_epoch(self):
        self.skipped = False

    def after_cancel_epoch(self):
        self.skipped = True

    def completed_metrics(self) -> dict | None:
        rec = self.learn.recorder
        if self.skipped or rec.cancel_train or rec.cancel_valid or self.learn.stop_reason:
            return None
        return dict(zip(rec.metric_names, rec.log))


class RunTracker(CompletedEpochs):
    """Owns a run's epoch rows, checkpoint, resume and summary (the shape of fastai's TrackerCallback).
    summary.json holds its own keys, the run's `info` (given at construction) and what the Learner's
    `Reports` callbacks return.

    After every completed epoch: a metrics.csv row, an atomic checkpoint, then summary.json. Given
    a checkpoint, `before_fit` restores weights, optimizer, EMA, RNG and the running train loss
    (after Recorder reset it), and fit starts at `start_epoch`. `finish` writes the final weights,
    summary and curves. Ordered after Recorder, so an epoch's metrics are final when it reads them.
    """
    order = Recorder.order + 5  # (`self.folder`, not `self.run`: fastai's Callback.run is its on/off switch)

    def __init__(self, run, cfg, info: dict, ckpt: dict | None = None, ema: EMACallback | None = None):
        self.folder, self.cfg, self.info, self.ckpt, self.ema = run, cfg, info, ckpt, ema
        self.start_epoch = ckpt["epoch"] + 1 if ckpt else 0
        self.rows = [r for r in run.metrics() if r["epoch"] < self.start_epoch]
        self.steps = [r for r in run.steps() if r["epoch"] < self.start_epoch]

    def before_fit(self):
        if self.ckpt is not None:
            self._restore(self.ckpt)
            self.ckpt = None

    def check_checkpoint(self) -> None:
        """Before anything of the run is rewritten: the checkpoint's model (and EMA) dict must match
        the model's keys and shapes, and its optimizer state must load into the learner's optimizer;
        RunError naming the file otherwise (a foreign or hand-edited checkpoint)."""
        if self.ckpt is None:
            return
        where, model = self.folder.checkpoint_path, unwrap_model(self.learn.model)
        for key in ("model", "ema") if self.ema else ("model",):
            problem = state_dict_problem(self.ckpt[key], model) if key in self.ckpt else None
            if problem:
                raise RunError(f"{where}: its {key} weights do not fit this run's model ({problem})")
        if self.learn.opt is None:
            self.learn.create_opt()
        try:
            self._load_opt(self.ckpt["opt"])
            problem = _opt_state_problem(self.learn.opt)
        except Exception as e:  # whatever the optimizer's own loader objects to
            problem = f"{type(e).__name__}: {str(e).splitlines()[0][:100] if str(e) else 'does not load'}"
        if problem:
            raise RunError(f"{where}: its optimizer state does not fit this run's optimizer ({problem})")

    def _load_opt(self, state: dict) -> None:
        self.learn.opt.load_state_dict(state)  # optim.DecayGroupsWrapper: torch's optimizer state

    def before_epoch(self):
        super().before_epoch()
        self.t0 = time.perf_counter()

    def after_batch(self):
        if self.training:  # tensors kept as they are: a .item() per step would wait for the GPU
            self.steps.append({"step": self.epoch * self.n_iter + self.iter + 1, "epoch": self.epoch,
                               "loss": self.learn.loss.detach(), "smooth_loss": self.learn.smooth_loss.detach(),
                               "lr": self.opt.hypers[-1]["lr"]})

    def after_epoch(self):
        vals = self.completed_metrics()
        self.steps = [{k: _clean(v) for k, v in r.items()} for r in self.steps]
        if vals is None:
            return
        vals.update(epoch=self.epoch, lr=self.opt.hypers[-1]["lr"], seconds=round(time.perf_counter() - self.t0, 3))
        self.rows.append({c: _clean(vals.get(c)) for c in METRIC_COLUMNS})
        self.folder.write_metrics(self.rows)
        self.folder.write_steps(self.steps)
        self.folder.save_checkpoint(self._state())
        self.write_summary("running")

    def _state(self) -> dict:
        learn = self.learn
        state = {"epoch": self.epoch, "train_iter": learn.train_iter, "model": unwrap_model(learn.model).state_dict(),
                 "opt": _plain(learn.opt.state_dict()), "rng_torch": torch.get_rng_state(),
                 "smooth_loss": {"count": learn.recorder.smooth_loss.count, "val": learn.recorder.smooth_loss.val.cpu()}}
        if torch.cuda.is_available():
            state["rng_cuda"] = torch.cuda.get_rng_state_all()
        return {**state, **(self.ema.state_dict() if self.ema else {})}

    def _restore(self, ckpt: dict) -> None:
        learn = self.learn
        unwrap_model(learn.model).load_state_dict(ckpt["model"])
        self._load_opt(ckpt["opt"])
        if self.ema and "ema" in ckpt:
            self.ema.load_state_dict(ckpt)
        torch.set_rng_state(ckpt["rng_torch"])
        if isinstance(ckpt.get("train_iter"), int):  # fastai counts steps from 0 every fit: the global step goes on
            learn.train_iter = ckpt["train_iter"]
        if "rng_cuda" in ckpt and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(ckpt["rng_cuda"])
        if ckpt.get("smooth_loss"):
            learn.recorder.smooth_loss.count = ckpt["smooth_loss"]["count"]
            learn.recorder.smooth_loss.val = ckpt["smooth_loss"]["val"]
        log.info("resuming %s at epoch %d", self.folder.path, self.start_epoch)

    def finish(self, status: str, message: str = "", **extra) -> dict:
        """After fit: final weights (finished runs only), curves.png, then summary.json -- last, as the
        commit point: a run killed before it is still `running` (stale) with its final checkpoint,
        and `--resume` finishes it; after it, the weights it names are on disk."""
        if status in ("finished", "pruned"):  # a pruned sweep trial still ends a clean epoch: keep its weights
            self.folder.save_weights(unwrap_model(self.learn.model), ema=False)
            if self.ema:
                self.folder.save_weights(self.ema.model_ema.module, ema=True)
            extra["weights"] = self.best_weights()
        self.folder.write_curves(self.rows)
        return self.write_summary(status, message=message, **extra)

    def _reported(self) -> dict:
        """The summary keys of the Learner's `Reports` callbacks (e.g. SelfTraining's `self_train_labelled`)."""
        return {k: v for cb in self.learn.cbs if isinstance(cb, Reports) for k, v in cb.summary().items()}

    def best_weights(self) -> str:
        """`ema` or `raw`: the set that scored better on validation after the last epoch (EMA on ties);
        evaluate, predict and export use it unless told otherwise."""
        last = self.rows[-1] if self.rows else {}
        raw, ema = last.get("acc"), last.get("acc_ema")
        return "ema" if self.ema and ema is not None and (raw is None or ema >= raw) else "raw"

    def write_summary(self, status: str, **extra) -> dict:
        """summary.json: status, accuracies (best / final, raw / EMA), cost, environment; earlier keys kept."""
        cfg, rows = self.cfg, self.rows
        accs = [r["acc"] for r in rows if r.get("acc") is not None]
        emas = [r["acc_ema"] for r in rows if r.get("acc_ema") is not None]
        wall = sum(r.get("seconds") or 0.0 for r in rows)
        try:
            old = self.folder.summary()
        except RunError:
            old = {}
        summary = {**old, "status": status, "name": cfg.name or self.folder.name, "run": self.folder.name,
                   "arch": cfg.model.arch, "head": cfg.model.head, "data": cfg.data.data, "ema": cfg.train.ema,
                   "epochs": cfg.train.epochs, "epochs_done": len(rows),
                   "best_acc": max(accs, default=None), "final_acc": accs[-1] if accs else None,
                   "best_acc_ema": max(emas, default=None), "final_acc_ema": emas[-1] if emas else None,
                   "train_seconds": round(wall, 2), "minutes": round(wall / 60, 2), "config_digest": cfg.digest(),
                   **self.info, **self._reported(), **extra}
        self.folder.write_summary(summary)
        return summary


def _clean(v):
    if isinstance(v, torch.Tensor):
        v = v.item()
    if isinstance(v, float) and math.isnan(v):
        return None
    return v


def _opt_state_problem(opt) -> str | None:
    """A per-parameter optimizer state tensor whose shape is not its parameter's (a foreign state that
    loads but would fail at the first step). Works for fastai's Optimizer and torch optimizers
    (an OptimWrapper's `.opt`): both keep `state` as {parameter: {name: value}}."""
    inner = getattr(opt, "opt", opt)
    for p, st in getattr(inner, "state", {}).items():
        for name, v in (st.items() if isinstance(st, dict) else ()):
            if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape != p.shape:
                return f"{name} has shape {tuple(v.shape)} for a parameter of shape {tuple(p.shape)}"
    return None


def _plain(o):
    """Lists, dicts, tensors and Python scalars only: an optimizer's state can hold tuples (betas),
    fastcore `L`s or numpy scalars, which `torch.load(weights_only=True)` may refuse to unpickle."""
    if isinstance(o, dict):
        return {k: _plain(v) for k, v in o.items()}
    if isinstance(o, (list, tuple, L)):
        return [_plain(v) for v in o]
    if isinstance(o, np.generic):
        return o.item()
    return o


class ShardedTrainer(DistributedTrainer):
    """fastai's DistributedTrainer (accelerate, DDP, SyncBatchNorm) minus its DistributedDL.

    DistributedDL broadcasts index lists as CUDA tensors (NCCL only) and shards them by striding,
    which would break both CPU (gloo) runs and the per-batch synthetic share. `PlanDL` already
    gives each rank its own shard of real images and its own synthetic stream, so the loaders
    pass through unchanged.
    """

    def _wrap_dl(self, dl):
        return dl
