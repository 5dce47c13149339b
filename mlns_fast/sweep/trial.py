"""One trial: an ordinary run folder trained by `train.train`, its metric reported to the study
after every epoch, and stopped as `pruned` when the pruner rejects it."""
from __future__ import annotations

import logging
import math
from pathlib import Path

import optuna

from ..callbacks import CompletedEpochs, RunTracker, stop_fit
from ..config import RunConfig
from ..procs import this_process
from .spec import METRICS, Sweep, format_params, short

log = logging.getLogger(__name__)


class TrialDiverged(Exception):
    """A trial's loss became NaN/inf: the trial fails, the study goes on."""


class SweepInterrupted(Exception):
    """Ctrl-C / SIGTERM stopped a trial: the trial fails, the worker stops."""


# a run that stopped early -> what its trial raises (pruned: Optuna's PRUNED state; the others: FAIL)
STOPS = {"pruned": optuna.TrialPruned, "diverged": TrialDiverged, "interrupted": SweepInterrupted}


class PruneTrial(CompletedEpochs):
    """After every logged epoch: report the study metric to the trial; stop the run as `pruned` when the
    pruner says so. Ordered after the run tracker, so the epoch's metrics row and checkpoint are
    written before the decision. The last epoch is reported, never pruned (nothing left to save)."""
    order = RunTracker.order + 1

    def __init__(self, trial, column: str):
        self.trial, self.column, self.last = trial, column, None

    def after_epoch(self):
        value = (self.completed_metrics() or {}).get(self.column)
        if value is None or math.isnan(float(value)):
            return
        self.last = float(value)
        self.trial.report(self.last, self.epoch)
        if self.epoch + 1 < self.n_epoch and self.trial.should_prune():
            why = f"trial {self.trial.number} pruned at epoch {self.epoch} ({self.column} {self.last:.4g})"
            stop_fit(self.learn, "pruned", why)


def metric_column(metric: str, cfg: RunConfig) -> str:
    """The metrics column a trial reports: `*_ema` falls back to the raw column when EMA is off."""
    return metric if cfg.train.ema > 0 or not metric.endswith("_ema") else METRICS[metric][1]


class TrialRunner:
    """The objective: train one trial as an ordinary run and return its final metric."""

    def __init__(self, sweep: Sweep, runs_dir: str | Path, on_start=lambda: None):
        self.sweep, self.runs_dir, self.on_start = sweep, runs_dir, on_start

    def __call__(self, trial) -> float:
        from ..training import train  # the training stack loads with the first trial, not with the package
        self.on_start()
        trial.set_user_attr("worker", this_process())  # read back by `recovery.is_dead`
        params = {p.key: p.suggest(trial) for p in self.sweep.space}
        cfg = self.sweep.trial_config(params, trial.number)
        log.info("trial %d: %s", trial.number, format_params(params))
        prune = PruneTrial(trial, metric_column(self.sweep.study.metric, cfg))
        s = train(cfg, self.runs_dir, quiet=True, extra_cbs=[prune],
                  summary_extra={"study": self.sweep.study.name, "trial": trial.number})
        trial.set_user_attr("run", s["run"])
        trial.set_user_attr("status", s["status"])
        log.info("trial %d: %s, %s %s after %d epoch(s) -> %s", trial.number, s["status"], prune.column,
                 short(prune.last), s["epochs_done"], s["run"])
        if s["status"] in STOPS:
            raise STOPS[s["status"]](s.get("message", ""))
        return prune.last if prune.last is not None else float("nan")
