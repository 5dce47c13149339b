"""Training: a fastai Learner with the one-cycle schedule, AdamW, EMA, mixed precision and run tracking.

`train(cfg)` is the whole job behind `mlns-fast train`; `lr_find(cfg)` behind `mlns-fast lr-find`.
User errors (data, arch, weights, options) are raised before a run folder exists.
"""
from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
import fastai.callback.schedule  # noqa: F401  (patches Learner.fit_one_cycle and lr_find in)
from fastai.callback.channelslast import ChannelsLast
from fastai.callback.core import Callback, CancelFitException
from fastai.callback.progress import ProgressCallback
from fastai.learner import AvgMetric, Learner
from fastai.optimizer import Adam
from fastai.torch_core import num_distrib, rank_distrib, set_seed
from timm.utils import unwrap_model

from .callbacks import (DivergenceGuard, EMACallback, EpochPlan, RunTracker, SelfTraining, ShardedTrainer, SignalStop,
                        scorer)
from .config import RunConfig
from .data.loaders import build_dataloaders
from .device import default_device, device_name, precision_callbacks, resolve_precision
from .errors import RunError
from .files import atomic_write
from .losses import acc, fit_temperature, make_loss
from .model import check_arch, count_params, create_model
from .runs import DEFAULT_RUNS_DIR, NullRun, RunDir, finished_weights, git_commit, library_versions, resolve_run

log = logging.getLogger(__name__)


def build_learner(cfg: RunConfig, dls, model, device, precision: str, quiet: bool = False,
                  extra_cbs=()) -> Learner:
    """The Learner of a run config: loss of its head, AdamW, sum-accuracy metric, precision callbacks."""
    t = cfg.train
    cbs = [EpochPlan(), DivergenceGuard(), *precision_callbacks(precision, device), *extra_cbs]
    if cfg.model.channels_last:
        cbs.append(ChannelsLast())
    learn = Learner(dls, model.to(device), loss_func=make_loss(cfg.model.head, t.digit_weight, t.sum_weight),
                    opt_func=Adam, lr=t.lr, wd=t.wd, metrics=[AvgMetric(acc)], cbs=cbs)
    if quiet:
        learn.remove_cbs(ProgressCallback)
        learn.logger = lambda *a, **k: None
    learn.precision = precision
    return learn


def train(cfg: RunConfig, runs_dir: str | Path = DEFAULT_RUNS_DIR, quiet: bool = False,
          resume: str | None = None, extra_cbs=(), device=None, summary_extra: dict | None = None) -> dict:
    """Train one run (or resume one) and return its summary; writes everything into its run folder.

    `summary_extra`: keys added to the run's summary.json (e.g. a sweep's study and trial number)."""
    device = torch.device(device) if device else default_device()
    run, ckpt = resume_point(resume, runs_dir) if resume else (None, None)
    if run is not None:
        cfg = run.config()
        if ckpt is not None:  # the checkpoint replaces the first weights
            cfg = replace(cfg, model=replace(cfg.model, weights="", init="", pretrained=False))
    elif cfg.model.init:
        cfg = replace(cfg, model=replace(cfg.model, init=init_weights(cfg.model.init, runs_dir)))
    rank, world = rank_distrib(), max(num_distrib(), 1)  # set by `accelerate launch` / torchrun
    set_seed(cfg.train.seed)
    precision = resolve_precision(cfg.train.precision, device)
    check_arch(cfg.model.arch)  # a mistyped name is refused before the data is loaded (or the demo set built)
    dls = build_dataloaders(cfg, device=device, rank=rank, world=world)
    model = create_model(cfg.model, (cfg.render.height, cfg.render.width))
    if cfg.train.compile:
        model.compile()  # in place: state-dict keys stay those of the plain model
    run = NullRun() if rank > 0 else run or RunDir.create(runs_dir, cfg)
    run.lock()
    t = cfg.train
    ema = EMACallback(t.ema, t.ema_warmup, lambda: precision_callbacks(precision, device)) if t.ema > 0 else None
    info = {"params": count_params(model), "grid": model.grid, "device": device_name(device), "precision": precision,
            "threads": torch.get_num_threads(), "versions": library_versions(), "git_commit": git_commit(),
            **(summary_extra or {})}
    tracker = RunTracker(run, cfg, info, ckpt, ema)
    cbs = [SignalStop(), tracker, *([ema] if ema else []), *extra_cbs]
    if t.self_train and cfg.data.data != "synthetic":
        cbs.append(SelfTraining(t.self_train, info))
    if world > 1:  # DDP through accelerate; fastai's own distrib_ctx would re-shard our loaders
        cuda = device.type == "cuda"  # SyncBatchNorm is CUDA-only; on CPU, DDP broadcasts BN buffers
        cbs.append(ShardedTrainer(sync_bn=cuda, cpu=not cuda))
    learn = build_learner(cfg, dls, model, device, precision, quiet or rank > 0, cbs)
    if ema:
        learn.metrics += ema.metrics()
    try:
        return fit(learn, tracker, cfg)
    finally:
        run.unlock()


def init_weights(ref: str, runs_dir) -> str:
    """`--init`: a weights file as given, or a run's best weights file (recorded in the new run's config)."""
    p = Path(ref)
    if p.is_file() and p.suffix in (".safetensors", ".pt", ".pth"):
        return str(p.resolve())
    return str(finished_weights(resolve_run(ref, runs_dir), "best").resolve())


def resume_point(ref: str, runs_dir) -> tuple[RunDir, dict | None]:
    """The run to resume and its checkpoint; None when it stopped before its first checkpoint (it
    then starts again from epoch 1 with its own config, in its own folder)."""
    run = resolve_run(ref, runs_dir)
    cfg, ckpt, status = run.config(), run.load_checkpoint(), run.status()
    if status == "finished" or (ckpt is not None and ckpt["epoch"] + 1 >= cfg.train.epochs):
        raise RunError(f"{run.path}: already trained all {cfg.train.epochs} epochs; nothing to resume")
    pid = run.holder()
    if pid is not None:
        raise RunError(f"{run.path}: is being trained by process {pid}; stop it first")
    if ckpt is None:
        log.info("%s: no checkpoint yet (it stopped during its first epoch); starting it again", run.path)
    return run, ckpt


def fit(learn: Learner, tracker: RunTracker, cfg: RunConfig) -> dict:
    """Run the one-cycle schedule (from the tracker's start epoch) and record how it ended."""
    t = cfg.train
    tracker.write_summary("running", started=time.strftime("%Y-%m-%d %H:%M:%S"))
    try:
        learn.fit_one_cycle(t.epochs, lr_max=t.lr, wd=t.wd, start_epoch=tracker.start_epoch)
    except BaseException as e:
        tracker.write_summary("failed", message=f"{type(e).__name__}: {e}")
        raise
    status, message = getattr(learn, "stop_reason", None) or ("finished", "")
    extra = {"temperature": temperatures(learn, tracker.ema)} if status == "finished" else {}
    return tracker.finish(status, message, **extra)


def temperatures(learn: Learner, ema: EMACallback | None) -> dict[str, float]:
    """Per weights set (raw, EMA), the temperature that calibrates its sum confidence on the valid
    split; predictions divide the network's logits by it (evaluate, predict, export)."""
    modules = {"raw": unwrap_model(learn.model), **({"ema": ema.model_ema.module} if ema else {})}
    device = learn.dls.device or torch.device("cpu")
    out = {}
    for name, module in modules.items():
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


def lr_find(cfg: RunConfig, out: str | Path, quiet: bool = False, num_it: int = 100, device=None,
            runs_dir: str | Path = DEFAULT_RUNS_DIR, warmup: int = 0) -> dict:
    """fastai's lr_find on the run config's data and model: suggestions (valley, slide, minimum, steep) and a PNG.

    `warmup`: optimizer steps at a tenth of the config's lr before the sweep. This task sits on a
    loss plateau for its first few hundred steps at any learning rate, so a finder started from
    random weights draws a flat line until it explodes; from warmed-up weights it shows where the
    loss falls fastest. fastai's finder restores the weights it started from afterwards."""
    if cfg.model.init:
        cfg = replace(cfg, model=replace(cfg.model, init=init_weights(cfg.model.init, runs_dir)))
    from fastai.callback.schedule import minimum, slide, steep, valley
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    device = torch.device(device) if device else default_device()
    set_seed(cfg.train.seed)
    precision = resolve_precision(cfg.train.precision, device)
    dls = build_dataloaders(cfg, device=device)
    model = create_model(cfg.model, (cfg.render.height, cfg.render.width))
    learn = build_learner(cfg, dls, model, device, precision, quiet)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if warmup:
        learn.fit(10_000, lr=cfg.train.lr / 10, cbs=[StopAfter(warmup)])
    with tempfile.TemporaryDirectory() as tmp:  # fastai's finder saves and restores the weights under learn.path
        learn.path = Path(tmp)
        res = learn.lr_find(num_it=num_it, suggest_funcs=(valley, slide, minimum, steep, edge), show_plot=True)
    plt.gcf().savefig(out, dpi=110, bbox_inches="tight")
    plt.close("all")
    curve = "lr,smoothed_loss\n" + "".join(f"{lr:.6e},{loss:.6f}\n" for lr, loss in
                                          zip(learn.recorder.lrs, map(float, learn.recorder.losses)))
    atomic_write(out.with_suffix(".csv"), curve)
    return {k: float(v) for k, v in res._asdict().items()}


EDGE_RISE, EDGE_FRACTION = 0.05, 0.5


def edge(lrs, losses, num_it):
    """A suggestion rule for curves that sit on a plateau (fastai's four read the slope, and this task's
    curve has none until it warms up): the learning rate where the smoothed loss first climbs
    EDGE_RISE above the lowest loss before it -- the edge of stable training -- times EDGE_FRACTION,
    Smith's one-cycle advice of a peak lr just below that edge. fastai `suggest_funcs` signature."""
    lrs, losses = torch.as_tensor(lrs), torch.as_tensor(losses)
    low = torch.cummin(losses, 0).values
    rising = torch.nonzero(losses > low * (1 + EDGE_RISE)).flatten()
    i = int(rising[0]) if len(rising) else len(lrs) - 1
    return float(lrs[i]) * EDGE_FRACTION, (float(lrs[i]), float(losses[i]))
