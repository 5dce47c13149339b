"""`mlns-fast sweep`: check the options, read the sweep file, open the storage, run the workers,
write the results; or, as a dry run, show the space and the first suggestions."""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import optuna

from ..errors import ConfigError, RunError
from ..runs import DEFAULT_RUNS_DIR
from .recovery import fail_dead_trials, fail_orphan_folders
from .results import write_results
from .spec import Sweep, format_params, load_sweep
from .storage import create_study, default_storage, make_sampler, open_storage, shown, study_folder
from .workers import max_workers, run_workers

log = logging.getLogger(__name__)


def run_sweep(path: str | Path, runs_dir: str | Path = DEFAULT_RUNS_DIR, trials: int = 20, workers: int = 1,
              storage: str | None = None, timeout: float | None = None, dry_run: bool = False):
    """`mlns-fast sweep`: run (or resume) a study until it holds `trials` trials; a SweepResult.
    With `dry_run`, a SweepPlan of the space and the first suggestions instead."""
    _check_options(trials, workers, timeout)
    sweep = load_sweep(path)
    storage = storage or default_storage(runs_dir, sweep.study.name)
    if dry_run:
        return plan(sweep, storage, min(trials, 5))
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    if workers > 1 and storage.startswith("sqlite"):
        log.warning("SQLite locks the whole database on every write; with %d workers prefer the default "
                    "journal file or a PostgreSQL / MySQL server", workers)
    # storage and study first: one that cannot be opened, or a study of other settings, leaves no folder
    study = create_study(sweep, open_storage(storage))  # before any worker: workers only load it
    _make_study_folder(runs_dir, sweep.study.name)
    fail_dead_trials(study, runs_dir)
    fail_orphan_folders(study, runs_dir)
    deadline = time.time() + timeout if timeout else None
    parent = _study_run(sweep, runs_dir)  # the trials' parent MLflow run, with `track = ["mlflow"]` in [defaults]
    interrupted = run_workers(sweep, runs_dir, storage, trials, workers, deadline)
    result = write_results(study, sweep, runs_dir, storage, interrupted)
    if parent:
        from ..tracking import close_study_run
        best = result.best or {}
        close_study_run(parent, {"best_value": best.get("value"), "trials": len(result.rows)},
                        {"best_run": best.get("run"), "best_trial": best.get("trial")},
                        "KILLED" if interrupted else "FINISHED")
    return result


def _study_run(sweep: Sweep, runs_dir) -> dict | None:
    """Open (or, for a resumed study, reopen) the study's MLflow run: the study's settings as params."""
    if "mlflow" not in sweep.base.track.track:
        return None
    from ..tracking import open_study_run
    s = sweep.study
    params = {**{f"study.{k}": getattr(s, k) for k in ("metric", "direction", "sampler", "pruner", "seed")},
              **{f"space.{p.key}": p.describe() for p in sweep.space}}
    return open_study_run(sweep.base, runs_dir, s.name, params)


def _make_study_folder(runs_dir, name: str) -> None:
    folder = study_folder(runs_dir, name)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunError(f"{folder}: cannot create the study folder ({e.strerror or type(e).__name__})") from None


def _check_options(trials: int, workers: int, timeout: float | None) -> None:
    if trials < 1:
        raise ConfigError(f"--trials must be >= 1, got {trials}")
    if not 1 <= workers <= max_workers():
        raise ConfigError(f"--workers must be in [1, {max_workers()}] (the CPU cores here: every worker trains on "
                          f"at least one), got {workers}")
    # written as `not (inside)`: NaN compares false with everything and must not pass
    if timeout is not None and not (0 < timeout < math.inf):
        raise ConfigError(f"--timeout must be a finite number of seconds > 0, got {timeout}")


# --- dry run -------------------------------------------------------------------------------------

@dataclass
class SweepPlan:
    """What a sweep would do: its space, its settings, its first suggestions (nothing stored)."""
    sweep: Sweep
    storage: str
    suggestions: list[dict]

    def lines(self) -> list[str]:
        s, b = self.sweep.study, self.sweep.base
        prune = {"none": "no pruning", "threshold": f"threshold {s.threshold}",
                 "median": f"median after {s.startup_trials} complete trials"}[s.pruner]
        head = (f"study {s.name} ({self.storage}): {s.direction} final {s.metric}, {b.train.epochs} epochs per "
                f"trial, {s.sampler} sampler (seed {s.seed}), pruning: {prune}, from epoch {s.warmup_epochs}")
        out = [head, "space:", *(f"  {p.describe()}" for p in self.sweep.space),
               f"first {len(self.suggestions)} suggestions (worker 0 of a new study):"]
        for i, params in enumerate(self.suggestions):
            tag = " (enqueued from " + s.enqueue + ")" if i == 0 and self.sweep.first else ""
            out.append(f"  trial {i}: " + format_params(params) + tag)
        return out


def plan(sweep: Sweep, storage: str, n: int) -> SweepPlan:
    """The first `n` suggestions of a new study, each checked to make a valid run config."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(direction=sweep.study.direction, sampler=make_sampler(sweep.study))
    if sweep.first:
        study.enqueue_trial(sweep.first)
    suggestions = []
    for i in range(n):
        trial = study.ask()
        params = {p.key: p.suggest(trial) for p in sweep.space}
        sweep.trial_config(params, i)
        suggestions.append(params)
    return SweepPlan(sweep, shown(storage), suggestions)
