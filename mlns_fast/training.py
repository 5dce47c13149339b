"""Training: a fastai Learner with the one-cycle schedule, AdamW, EMA, mixed precision and run tracking.

`train(cfg)` is the whole job behind `mlns-fast train`; `lr_find(cfg)` behind `mlns-fast lr-find`.
User errors (data, arch, weights, options) are raised before a run folder exists.
"""
from __future__ import annotations

import functools
import logging
import math
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import fastai.callback.schedule  # noqa: F401  (patches Learner.fit_one_cycle and lr_find in)
from fastai.callback.channelslast import ChannelsLast
from fastai.callback.core import Callback, CancelFitException, CancelValidException
from fastai.callback.progress import ProgressCallback
from fastai.data.core import DataLoaders
from fastai.learner import Learner
from fastai.torch_core import num_distrib, rank_distrib
from fastprogress.fastprogress import IN_NOTEBOOK
from timm.utils import unwrap_model

from .callbacks import (Accumulate, BoxTarget, DeviceAvgMetric, DivergenceGuard, EarlyStop, EMACallback, EpochPlan, EpochTable,
                        FreezeOut, HeapTrim, LazyProgress, ProgressiveResize, RunTracker, SelfTraining, ShardedTrainer,
                        SignalStop, keep_losses_on_device, scorer)
from .config import RunConfig
from .data.demo import demo_version
from .data.loaders import build_dataloaders
from .data.sources import content_hash
from .device import default_device, device_name, precision_callbacks, resolve_precision, seed_everything
from .errors import ConfigError, RunError
from .files import atomic_path, atomic_write
from .heap import heap_trim_every
from .losses import acc, fit_temperature, make_loss
from .model import backbone_stages, check_arch, count_params, create_model
from .optim import adamw, decay_groups
from .outputs import check_output
from .runs import DEFAULT_RUNS_DIR, NullRun, RunDir, finished_weights, git_commit, library_versions, resolve_run

log = logging.getLogger(__name__)


PROGRESS = ("bar", "table", "none")


def resolve_progress(progress: str | None, quiet: bool) -> str:
    """How training reports: `none` when quiet; by default bars on a terminal or in a notebook, and the
    epoch table alone when output goes to a file or pipe (carriage-return bars would fill it)."""
    if quiet:
        return "none"
    return progress or ("bar" if sys.stdout.isatty() or IN_NOTEBOOK else "table")


def build_learner(cfg: RunConfig, dls, model, device, precision: str, quiet: bool = False,
                  extra_cbs=(), progress: str | None = None) -> Learner:
    """The Learner of a run config: loss of its head, torch's fused AdamW (no decay on norm and bias
    parameters: `optim.py`), sum-accuracy metric, precision callbacks.

    Shared state it carries for callbacks: `learn.precision` (the resolved precision: the EMA and
    calibration scorers make their own precision callbacks from it) and `learn.stop_reason`
    (None, or the (status, message) a `callbacks.stop_fit` recorded)."""
    t = cfg.train
    cbs = [EpochPlan(), DivergenceGuard(), HeapTrim(heap_trim_every()), *precision_callbacks(precision, device),
           *extra_cbs]
    if cfg.model.channels_last:
        cbs.append(ChannelsLast())
    if cfg.model.box_weight:
        cbs.append(BoxTarget(cfg.model.box_weight))
    if t.progressive < 1:
        cbs.append(ProgressiveResize(t.progressive, round(t.progressive_until * t.epochs)))
    if t.accum > 1:
        cbs.append(Accumulate(t.accum, cfg.data.bs))
    learn = Learner(dls, model.to(device), loss_func=make_loss(cfg.model.head, t.digit_weight, t.sum_weight,
                                                               t.label_smoothing),
                    opt_func=adamw, splitter=functools.partial(decay_groups, body_lr=t.body_lr,
                                                               stages=t.freeze_anneal),
                    lr=t.lr, wd=t.wd, metrics=[DeviceAvgMetric(acc)], cbs=cbs)
    keep_losses_on_device(learn)  # no host sync per batch
    learn.remove_cbs(ProgressCallback)  # its per-batch loss comment is a host sync: LazyProgress shows it less often
    shown = resolve_progress(progress, quiet)
    if shown == "bar":
        learn.add_cb(LazyProgress())
    elif shown == "table":
        learn.add_cb(EpochTable())
    else:
        learn.logger = lambda *a, **k: None
    learn.precision, learn.stop_reason = precision, None
    return learn


@dataclass
class Prepared:
    """Everything a Learner is built from, resolved once for one run config."""
    cfg: RunConfig  # with `--init RUN` resolved to the weights file it names
    device: torch.device
    precision: str  # resolved: fp32 | bf16 | fp16
    dls: DataLoaders
    model: torch.nn.Module

    def learner(self, quiet: bool = False, extra_cbs=(), progress: str | None = None) -> Learner:
        return build_learner(self.cfg, self.dls, self.model, self.device, self.precision, quiet, extra_cbs, progress)


def prepare(cfg: RunConfig, device=None, runs_dir: str | Path = DEFAULT_RUNS_DIR, rank: int = 0,
            world: int = 1) -> Prepared:
    """The one way to get from a run config to a Learner's parts (train and lr-find): device, first
    weights, seed, precision, architecture check, loaders, model -- each resolved here once. User
    errors (arch, data, weights, options) are raised here, before any run folder exists."""
    device = torch.device(device) if device else default_device()
    heap_trim_every()  # a bad $MLNS_FAST_HEAP_TRIM is refused here too, before any run folder exists
    cfg = resolve_init(cfg, runs_dir)
    seed_everything(cfg.train.seed, cfg.train.deterministic)
    precision = resolve_precision(cfg.train.precision, device)
    check_arch(cfg.model.arch)  # a mistyped name is refused before the data is loaded (or the demo set built)
    if world > 1 and cfg.train.freeze_out < 1:  # DDP's reducer waits for every parameter's gradient each step
        raise ConfigError("--freeze-out trains in one process only (DDP expects a gradient for every parameter)")
    dls = build_dataloaders(cfg, device=device, rank=rank, world=world, progress=rank == 0 and sys.stderr.isatty())
    check_accum(cfg.train.accum, len(dls.train))
    model = create_model(cfg.model, cfg.size)
    if cfg.train.freeze_out < 1:
        backbone_stages(model.backbone)  # a backbone without stages is refused here, before any run folder
    if cfg.train.compile:
        model.compile()  # in place: state-dict keys stay those of the plain model
    return Prepared(cfg, device, precision, dls, model)


def train(cfg: RunConfig, runs_dir: str | Path = DEFAULT_RUNS_DIR, quiet: bool = False,
          resume: str | None = None, extra_cbs=(), device=None, summary_extra: dict | None = None,
          progress: str | None = None) -> dict:
    """Train one run (or resume one) and return its summary; writes everything into its run folder.

    `summary_extra`: keys added to the run's summary.json (e.g. a sweep's study and trial number)."""
    run, ckpt = resume_point(resume, runs_dir) if resume else (None, None)
    if run is not None:
        cfg = run.config()
        if ckpt is not None:  # the checkpoint replaces the first weights
            cfg = replace(cfg, model=cfg.model.without_first_weights())
    rank, world = rank_distrib(), max(num_distrib(), 1)  # set by `accelerate launch` / torchrun
    p = prepare(cfg, device, runs_dir, rank, world)
    cfg = p.cfg
    run = NullRun() if rank > 0 else run or RunDir.create(runs_dir, cfg)
    if rank == 0:
        log.info("run folder: %s", run.path)  # named now, so a long run can be watched or found
        threads = f" ({torch.get_num_threads()} threads)" if p.device.type == "cpu" else ""
        log.info("training on %s in %s%s", device_name(p.device), p.precision, threads)  # what its minutes mean
    run.lock()
    try:
        return _train(run, p, ckpt, quiet or rank > 0, extra_cbs, summary_extra, world, progress)
    finally:
        run.unlock()


def _train(run, p: "Prepared", ckpt, quiet: bool, extra_cbs, summary_extra, world: int,
           progress: str | None = None) -> dict:
    """The part of `train` that runs while the run is locked: callbacks, learner, checks, fit."""
    cfg = p.cfg
    t = cfg.train
    ema = EMACallback(t.ema, t.ema_warmup) if t.ema > 0 else None
    info = {"params": count_params(p.model), "grid": p.model.grid, "device": device_name(p.device),
            "precision": p.precision, "threads": torch.get_num_threads(), "versions": library_versions(),
            "git_commit": git_commit(), "data_sources": data_sources(p.dls), **labels(cfg), **(summary_extra or {})}
    live = start_tracking(cfg, run, Path(run.path).parent, info) if not isinstance(run, NullRun) else []
    tracker, stop = RunTracker(run, cfg, info, ckpt, ema), SignalStop()
    cbs = [stop, tracker, *([ema] if ema else []), *live, *extra_cbs]
    if t.early_stop:
        monitor = "acc_ema" if ema else "acc"
        cbs.append(EarlyStop(monitor, t.early_stop, [r.get(monitor) for r in tracker.rows]))
    if t.self_train and cfg.data.data != "synthetic":
        cbs.append(SelfTraining(t.self_train))
    if t.freeze_out < 1:  # the training job's alone: lr-find's sweep and warm-up train every stage
        cbs.append(FreezeOut(t.freeze_out, t.freeze_anneal))
    if world > 1:  # DDP through accelerate; fastai's own distrib_ctx would re-shard our loaders
        cuda = p.device.type == "cuda"  # SyncBatchNorm is CUDA-only; on CPU, DDP broadcasts BN buffers
        cbs.append(ShardedTrainer(sync_bn=cuda, cpu=not cuda))
    learn = p.learner(quiet, cbs, progress)
    if ema:
        learn.metrics += ema.metrics()
    tracker.check_checkpoint()  # a checkpoint that does not fit is refused before the status is rewritten
    with stop:  # from the first batch until summary.json says how the run ended
        return fit(learn, tracker, cfg, stop, live)


def data_sources(dls) -> dict:
    """What a run trained and validated on, for summary.json: per part its source (paths, or the demo
    with its cache version) and a hash of the images and labels themselves (`compare` shows both)."""
    out = {}
    for part, dl in (("train", dls.train), ("valid", dls.valid)):
        s = dl.dataset.real
        if s is not None:
            source = s.source.replace("demo:", f"demo-{demo_version()}:", 1) if s.source.startswith("demo:") else s.source
            out[part] = {"source": source, "sha1": content_hash(s), "n": len(s)}
    return out


def labels(cfg: RunConfig) -> dict:
    """summary.json keys of the run's `--tag` labels and `--note` (only those given)."""
    tr = cfg.track
    return {**({"tags": tr.tags()} if tr.tag else {}), **({"note": tr.note} if tr.note else {})}


def start_tracking(cfg: RunConfig, run, runs_dir, info: dict) -> list:
    """The live trackers' callbacks (none unless `--track`)."""
    if not cfg.track.track:
        return []
    from .tracking import create_trackers
    return create_trackers(cfg, run, runs_dir, info)


def check_accum(accum: int, batches: int) -> None:
    """`--accum` must leave at least one optimizer step per epoch (each epoch starts a fresh accumulation)."""
    if accum > batches:
        raise ConfigError(f"--accum {accum} exceeds the {batches} batches of an epoch: no optimizer step would be "
                          f"taken; use at most {batches} (or a smaller --bs)")


def resolve_init(cfg: RunConfig, runs_dir) -> RunConfig:
    """`--init RUN`: the config with the run's best weights file in its place (a weights file stays as
    given, made absolute); this resolved config is what the run records and what its digest covers."""
    ref = cfg.model.init
    if not ref:
        return cfg
    p = Path(ref)
    if p.is_file() and p.suffix in (".safetensors", ".pt", ".pth"):
        path = p.resolve()
    else:
        path = finished_weights(resolve_run(ref, runs_dir), "best").resolve()
    return replace(cfg, model=replace(cfg.model, init=str(path)))


def resume_point(ref: str, runs_dir) -> tuple[RunDir, dict | None]:
    """The run to resume and its checkpoint; None when it stopped before its first checkpoint (it
    then starts again from epoch 1 with its own config, in its own folder)."""
    run = resolve_run(ref, runs_dir)
    cfg, ckpt, status, rows = run.config(), run.load_checkpoint(), run.status(), run.metrics()
    if status == "finished" and run.summary().get("stop_reason") == "early-stopped":
        raise RunError(f"{run.path}: finished (early-stopped after {run.summary().get('epochs_done')} epochs); "
                       f"nothing to resume")
    if status == "finished":
        raise RunError(f"{run.path}: already trained all {cfg.train.epochs} epochs; nothing to resume")
    if ckpt is not None and ckpt["epoch"] + 1 > cfg.train.epochs:
        raise RunError(f"{run.checkpoint_path}: epoch {ckpt['epoch'] + 1} is past the run's {cfg.train.epochs}")
    if ckpt is not None and ckpt["epoch"] >= len(rows):
        raise RunError(f"{run.path / 'metrics.csv'}: has {len(rows)} epoch rows, the checkpoint is at epoch "
                       f"{ckpt['epoch'] + 1}")
    pid = run.holder()
    if pid is not None:
        raise RunError(f"{run.path}: is being trained by process {pid}; stop it first")
    if ckpt is None:
        log.info("%s: no checkpoint yet (it stopped during its first epoch); starting it again", run.path)
    elif ckpt["epoch"] + 1 == cfg.train.epochs:
        log.info("%s: all %d epochs trained; finishing the run (temperature, weights, summary)", run.path,
                 cfg.train.epochs)
    return run, ckpt


def fit(learn: Learner, tracker: RunTracker, cfg: RunConfig, stop: SignalStop | None = None, live=()) -> dict:
    """Run the one-cycle schedule (from the tracker's start epoch; all epochs done: none, the run is
    only finished) and record how it ended; the live trackers get the run folder's final files last.
    A stop signal after the last epoch leaves the run `interrupted` with its final checkpoint:
    `--resume` then finishes it without training."""
    t = cfg.train
    tracker.write_summary("running", started=time.strftime("%Y-%m-%d %H:%M:%S"))
    try:
        learn.fit_one_cycle(t.epochs, lr_max=t.lr, wd=t.wd, start_epoch=tracker.start_epoch)
        status, message = learn.stop_reason or ("finished", "")
        extra = {}
        if status == "finished":
            extra["temperature"] = temperatures(learn, tracker.ema, stop)
            if stop is not None and stop.caught:
                status, message, extra = "interrupted", f"{stop.caught} after the last epoch, while finishing", {}
        early = next((cb.stopped for cb in learn.cbs if isinstance(cb, EarlyStop) and cb.stopped), None)
        if early and status == "finished":
            message = early["message"]
        summary = tracker.finish(status, message, **extra)
    except BaseException as e:  # (a second Ctrl-C, whose handler is Python's again, is an interruption too)
        summary = tracker.write_summary("interrupted" if isinstance(e, KeyboardInterrupt) else "failed",
                                        message=f"{type(e).__name__}: {e}")
        for cb in live:
            cb.finish(summary, tracker.folder)
        raise
    for cb in live:
        cb.finish(summary, tracker.folder)
    return summary


def temperatures(learn: Learner, ema: EMACallback | None, stop: SignalStop | None = None) -> dict[str, float]:
    """Per weights set (raw, EMA), the temperature that calibrates its sum confidence on the valid
    split; predictions divide the network's logits by it (evaluate, predict, export). Stops early
    (fewer sets) once a stop signal was caught."""
    modules = {"raw": unwrap_model(learn.model), **({"ema": ema.model_ema.module} if ema else {})}
    device = learn.dls.device or torch.device("cpu")
    out = {}
    for name, module in modules.items():
        if stop is not None and stop.caught:
            break
        # reorder=False: fastai would argsort our loader's (source, epoch, j) keys; the valid loader is unshuffled
        lrn = scorer(learn.dls, module, learn.loss_func, precision_callbacks(learn.precision, device))
        preds, targs = lrn.get_preds(dl=learn.dls.valid, reorder=False)
        out[name] = round(fit_temperature(preds, targs[0] if isinstance(targs, (tuple, list)) else targs), 4)
    return out


class StopAfter(Callback):
    """Ends a fit after `n` training batches."""

    def __init__(self, n: int):
        self.n = n

    def after_batch(self):
        if self.training and self.train_iter >= self.n:
            raise CancelFitException()


class TrainOnly(Callback):
    """Skips validation: a warm-up is optimizer steps only (fastai's LRFinder skips it the same way)."""

    def before_validate(self):
        raise CancelValidException()


def warm_up(learn: Learner, steps: int, lr: float) -> None:
    """`steps` optimizer steps at a constant `lr`, never validating: an epoch of a small data set is a
    few steps, and validating the whole valid split after each cost more than the steps themselves."""
    epochs = math.ceil(steps / max(len(learn.dls.train), 1))
    learn.fit(epochs, lr=lr, cbs=[TrainOnly(), StopAfter(steps)])


def lr_find(cfg: RunConfig, out: str | Path, quiet: bool = False, num_it: int = 100, device=None,
            runs_dir: str | Path = DEFAULT_RUNS_DIR, warmup: int = 0) -> dict:
    """fastai's lr_find on the run config's data and model: suggestions (valley, slide, minimum, steep,
    edge), the warnings a reader of the curve needs, a PNG marking the suggestions, and the curve as CSV.

    `warmup`: optimizer steps at a tenth of the config's lr before the sweep. This task sits on a
    loss plateau for its first few hundred steps at any learning rate, so a finder started from
    random weights draws a flat line until it explodes; from warmed-up weights it shows where the
    loss falls fastest. fastai's finder restores the weights it started from afterwards."""
    out = check_output(out)  # the plot and its curve beside it, checked before any work
    check_output(out.with_suffix(".csv"))
    from fastai.callback.schedule import minimum, slide, steep, valley
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    learn = prepare(cfg, device, runs_dir).learner(quiet)
    if warmup:
        warm_up(learn, warmup, cfg.train.lr / 10)
    with tempfile.TemporaryDirectory() as tmp:  # fastai's finder saves and restores the weights under learn.path
        learn.path = Path(tmp)
        rules = [guarded(f) for f in (valley, slide, minimum, steep, edge)]
        res = learn.lr_find(num_it=num_it, suggest_funcs=rules, show_plot=True)
    lrs, losses = learn.recorder.lrs, [float(v) for v in learn.recorder.losses]
    short = [f"{k}: the curve is too short for this rule (raise --num-it)" for k, v in res._asdict().items()
             if math.isnan(v)]
    with atomic_path(out) as tmp:
        plt.gcf().savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close("all")
    curve = "lr,smoothed_loss\n" + "".join(f"{lr:.6e},{loss:.6f}\n" for lr, loss in zip(lrs, losses))
    atomic_write(out.with_suffix(".csv"), curve)
    return {**{k: float(v) for k, v in res._asdict().items()}, "warnings": short + curve_warnings(lrs, losses)}


def guarded(rule):
    """A fastai suggestion rule that yields NaN (no suggestion, no marker) where the curve is too short
    for it, instead of failing the whole finder: fastai's `slide` indexes 16 points back, and fastai
    cuts the first tenth and the last 5 points of the curve before any rule sees it (or more, when the
    loss diverged early)."""
    @functools.wraps(rule)
    def rule_or_nan(lrs, losses, num_it):
        try:
            return rule(lrs, losses, num_it)
        except (IndexError, ValueError, RuntimeError):
            return float("nan"), (float("nan"), float("nan"))
    return rule_or_nan


EDGE_RISE, EDGE_FRACTION = 0.05, 0.5


def _edge_index(losses: torch.Tensor) -> int | None:
    """Where the smoothed loss first climbs EDGE_RISE above the lowest loss before it (None: never)."""
    rising = torch.nonzero(losses > torch.cummin(losses, 0).values * (1 + EDGE_RISE)).flatten()
    return int(rising[0]) if len(rising) else None


def edge(lrs, losses, num_it):
    """A suggestion rule for curves that sit on a plateau (fastai's four read the slope, and this task's
    curve has none until it warms up): the learning rate where the smoothed loss first climbs
    EDGE_RISE above the lowest loss before it -- the edge of stable training -- times EDGE_FRACTION,
    Smith's one-cycle advice of a peak lr just below that edge. fastai `suggest_funcs` signature; the
    point returned (which fastai's plot marks) is the curve at the suggested lr itself."""
    lrs, losses = torch.as_tensor(lrs, dtype=torch.float64), torch.as_tensor(losses, dtype=torch.float64)
    i = _edge_index(losses)
    suggestion = float(lrs[len(lrs) - 1 if i is None else i]) * EDGE_FRACTION
    j = int(torch.argmin((lrs.log() - math.log(suggestion)).abs()))
    return suggestion, (float(lrs[j]), float(losses[j]))


def curve_warnings(lrs, losses) -> list[str]:
    """One line for each way the curve misleads: it never rose (every suggestion is at the end of the
    sweep: sweep further), or it never fell before rising (a plateau: nothing to read; warm up first)."""
    losses = torch.as_tensor(losses, dtype=torch.float64)
    if len(losses) < 3:
        return ["the curve has fewer than 3 points; raise --num-it"]
    i = _edge_index(losses)
    if i is None:
        return [f"the loss never rose within the sweep (up to lr {float(lrs[-1]):.2e}): edge is at the end of the "
                "sweep, not at the edge of stable training"]
    if float(losses[:i + 1].min()) > float(losses[0]) * (1 - EDGE_RISE):
        return [f"the loss did not fall before it rose (flat within {EDGE_RISE:.0%} up to lr {float(lrs[i]):.2e}): "
                "the curve is a plateau and its suggestions are unreliable; try --warmup 200"]
    return []
