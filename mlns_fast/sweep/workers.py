"""Worker processes: each takes trials until the study holds `--trials` of them.

One worker works in the calling process; more are spawned (not forked), each with its share of
the CPU threads and the CLI's logging (`logs.configure_logging`, its notes tagged with the worker).
"""
from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

from ..errors import MlnsError, RunError
from ..logs import configure_logging
from .recovery import fail_dead_trials
from .spec import Sweep
from .storage import load_study, open_storage, study_folder
from .trial import SweepInterrupted, TrialDiverged, TrialRunner

log = logging.getLogger(__name__)

EXIT_INTERRUPTED = 130


def max_workers() -> int:
    """The most worker processes a sweep may run here: the CPU cores this process may use (each
    worker trains on at least one thread; more would only time-share the cores, each holding a model)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def counted(study) -> int:
    """Trials that count towards --trials: done, pruned, running, or diverged (a result too).
    Other failures (a killed worker, an interruption) are run again."""
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING,
                                                      TrialState.FAIL))
    return sum(t.state != TrialState.FAIL or t.user_attrs.get("status") == "diverged" for t in trials)


class ClaimLock:
    """An exclusive lock over "count the trials, then start one", for the workers on this machine;
    released as soon as the trial exists (the objective's first act)."""

    def __init__(self, path: Path):
        self.path, self.file = path, None

    def __enter__(self):
        import fcntl
        self.file = open(self.path, "a")
        fcntl.flock(self.file, fcntl.LOCK_EX)
        return self

    def release(self) -> None:
        if self.file is not None:
            self.file.close()  # closing drops the flock
            self.file = None

    def __exit__(self, *exc):
        self.release()


def work(sweep: Sweep, runs_dir: str | Path, storage: str, target: int, deadline: float | None = None,
         worker: int = 0) -> int:
    """Take trials until the study holds `target` of them (or the deadline passes); trials run here."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # the trial logs one line per trial instead
    study = load_study(sweep, open_storage(storage), worker)
    lock = ClaimLock(study_folder(runs_dir, sweep.study.name) / ".claim.lock")
    runner, ran = TrialRunner(sweep, runs_dir, on_start=lock.release), 0
    while deadline is None or time.time() < deadline:
        with lock:
            fail_dead_trials(study, runs_dir)
            if counted(study) >= target:
                break
            study.optimize(runner, n_trials=1, catch=(TrialDiverged,), gc_after_trial=False)
            ran += 1
    return ran


def _worker_main(sweep, runs_dir, storage, target, deadline, worker, threads) -> None:
    """Entry of a spawned worker process: the CLI's logging, its share of the threads, `work`."""
    import torch
    configure_logging(prefix=f"[worker {worker}] ")
    torch.set_num_threads(threads)
    try:
        work(sweep, runs_dir, storage, target, deadline, worker)
    except (SweepInterrupted, KeyboardInterrupt):
        sys.exit(EXIT_INTERRUPTED)
    except MlnsError as e:
        log.error("worker %d: %s", worker, e)
        sys.exit(2)


def run_workers(sweep: Sweep, runs_dir, storage: str, target: int, workers: int, deadline) -> bool:
    """Run `workers` worker processes (or work in this process for one); True if interrupted."""
    if workers == 1:
        try:
            work(sweep, runs_dir, storage, target, deadline)
        except (SweepInterrupted, KeyboardInterrupt):
            return True
        return False
    import multiprocessing

    import torch
    threads = max(1, torch.get_num_threads() // workers)
    ctx = multiprocessing.get_context("spawn")  # no fork: torch's threads and open storages do not survive it
    procs = [ctx.Process(target=_worker_main, name=f"sweep-worker-{i}",
                         args=(sweep, runs_dir, storage, target, deadline, i, threads))
             for i in range(workers)]
    for p in procs:
        p.start()
    codes = _join(procs)
    failed = [(i, c) for i, c in enumerate(codes) if c not in (0, EXIT_INTERRUPTED)]
    if failed:
        raise RunError(f"sweep worker {failed[0][0]} stopped with exit code {failed[0][1]} (its error is above); "
                       "rerun the same command to resume the study")
    return EXIT_INTERRUPTED in codes


def _join(procs) -> list[int]:
    """Wait for every worker; Ctrl-C reaches them too (same process group): wait for them to stop."""
    while True:
        try:
            for p in procs:
                p.join()
            return [p.exitcode for p in procs]
        except KeyboardInterrupt:
            continue
