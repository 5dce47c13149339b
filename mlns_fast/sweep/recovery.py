"""Trials whose worker died: failed in the study and in their run folder, so that they run again.

A journal file has no heartbeat: a `running` trial is dead when its worker process (recorded in
the trial by `procs.this_process`) no longer runs on this machine. Database storages also fail
the trials of other machines' workers through Optuna's heartbeat; their run folders here follow.
"""
from __future__ import annotations

import contextlib
import logging
from datetime import datetime, timedelta
from pathlib import Path

import optuna
from optuna.trial import TrialState

from ..errors import MlnsError
from ..procs import is_alive
from ..runs import RunDir

log = logging.getLogger(__name__)

ORPHAN_S = 60             # a running trial that never recorded its worker (killed right after `ask`)


def is_dead(trial) -> bool:
    """A running trial whose worker process no longer exists (or never said who it was)."""
    w = trial.user_attrs.get("worker")
    if w is None:
        return trial.datetime_start is not None and datetime.now() - trial.datetime_start > timedelta(seconds=ORPHAN_S)
    return not isinstance(w, dict) or not is_alive(w)


def fail_dead_trials(study, runs_dir: str | Path) -> list[int]:
    """Mark the running trials of killed workers failed (and their run folders); their numbers."""
    storage, dead = study._storage, []  # (as Optuna's own fail_stale_trials does)
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not is_dead(t):
            continue
        run = _fail_run_folder(Path(runs_dir), study.study_name, t.number)
        with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):  # another worker got there first
            storage.set_trial_user_attr(t._trial_id, "status", "failed")  # (attributes first: a finished
            if run:                                                        # trial takes no more of them)
                storage.set_trial_user_attr(t._trial_id, "run", run)
            storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
            dead.append(t.number)
            log.warning("trial %d: its worker died; marked failed", t.number)
    return dead


def fail_orphan_folders(study, runs_dir: str | Path) -> None:
    """Run folders here still `running` whose trial failed elsewhere (a database's heartbeat) say `failed`."""
    for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        if t.user_attrs.get("status") is None:
            _fail_run_folder(Path(runs_dir), study.study_name, t.number)


def _fail_run_folder(runs_dir: Path, study: str, number: int) -> str | None:
    """The run folder of a dead trial says `failed`, not `running`, ever after; its name."""
    name = f"{study}-t{number:03d}"
    for path in runs_dir.glob(f"*-{name}*"):
        run = RunDir(path)
        try:
            if run.config().name != name:
                continue
            summary = run.summary() if (path / "summary.json").exists() else {"name": name, "run": run.name}
        except MlnsError:
            continue
        if summary.get("status", "running") == "running":
            run.write_summary({**summary, "status": "failed", "message": "sweep worker died during the trial",
                               "study": study, "trial": number})
            return run.name
    return None
