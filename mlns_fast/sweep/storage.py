"""Where a study lives: Optuna's journal file (the default) or a database, and the study in it.

Also each worker's view of the study: its own sampler (seeded apart from the others) and the pruner.
"""
from __future__ import annotations

import contextlib
import json
import warnings
from pathlib import Path
from typing import Any

import optuna

from ..errors import ConfigError
from .spec import StudySpec, Sweep

HEARTBEAT_S = 30          # database storages: a trial whose worker stops beating for 2x this is failed


def study_folder(runs_dir: str | Path, name: str) -> Path:
    """Where a study's journal, best config, table and plots live (ignored by `compare`)."""
    return Path(runs_dir) / "sweeps" / name


def default_storage(runs_dir: str | Path, name: str) -> str:
    """The journal file in the study folder, used when no --storage is given."""
    return str(study_folder(runs_dir, name) / "journal.log")


def is_database(storage: str) -> bool:
    """A database URL (`scheme://...`), not a journal file path."""
    return "://" in storage


def shown(storage: str) -> str:
    """The storage as it may be printed (a database URL without its password)."""
    if not is_database(storage):
        return storage
    from sqlalchemy.engine import make_url
    with contextlib.suppress(Exception):
        return make_url(storage).render_as_string(hide_password=True)
    return storage.split("://", 1)[0] + "://..."


def open_storage(storage: str):
    """A journal file (a path) or a database (an SQLAlchemy URL: postgresql://, mysql://, sqlite:///).
    One that cannot be opened is a one-line ConfigError, and the call leaves no folder behind."""
    return _open_database(storage) if is_database(storage) else _open_journal(Path(storage))


def _open_journal(path: Path):
    from optuna.storages.journal import JournalFileBackend, JournalStorage
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder, not a journal file (give a file name, e.g. {path / 'journal.log'})")
    made = [p for p in (path.parent, *path.parent.parents) if not p.exists()]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() and not _is_journal(path):
            raise ValueError("not an Optuna journal")
        return JournalStorage(JournalFileBackend(str(path)))  # reads the whole journal
    except (OSError, ValueError) as e:  # a parent that is a file, no permission, a file that is no journal
        for p in made:  # innermost first: the folders this call made (rmdir removes only empty ones)
            with contextlib.suppress(OSError):
                p.rmdir()
        reason = getattr(e, "strerror", None) or str(e)
        raise ConfigError(f"{path}: cannot be opened as the study's journal file ({reason})") from None


def _is_journal(path: Path) -> bool:
    """Empty, or its first line is a journal record. (Optuna reads a last line that is no JSON as one
    being written, and would append its records to any one-line text file.)"""
    with open(path, "rb") as f:
        first = f.readline(1 << 20)
    try:
        return not first or "op_code" in json.loads(first)
    except (ValueError, TypeError):
        return False


def _open_database(storage: str):
    engine = {"connect_args": {"timeout": 60}} if storage.startswith("sqlite") else None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeat_interval
            return optuna.storages.RDBStorage(storage, engine_kwargs=engine, heartbeat_interval=HEARTBEAT_S)
    except Exception as e:  # noqa: BLE001 - a missing driver, a refused connection, a malformed URL: all one line for the user
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        cause = f"; {e.__cause__}" if isinstance(e, ImportError) and e.__cause__ else ""  # which driver is missing
        raise ConfigError(f"--storage {shown(storage)}: cannot open ({type(e).__name__}: {reason}{cause})") from None


def create_study(sweep: Sweep, storage) -> Any:
    """Create the study (enqueuing its first trial) or load it, refusing one made with other settings."""
    study = optuna.create_study(study_name=sweep.study.name, storage=storage, direction=sweep.study.direction,
                                load_if_exists=True)
    old, new = study.user_attrs.get("sweep"), sweep.fingerprint()
    if old is None:
        study.set_user_attr("sweep", new)
        study.set_user_attr("sweep_file", sweep.path)
        if sweep.first and not study.trials:
            study.enqueue_trial(sweep.first, user_attrs={"enqueued": sweep.study.enqueue})
    elif old != new:
        key = next(k for k in new if old.get(k) != new[k])
        raise ConfigError(f"{sweep.path}: study {sweep.study.name!r} already exists with another {key} "
                          f"({old.get(key)} vs {new[key]}); give [study] a new name to start another")
    return study


def load_study(sweep: Sweep, storage, worker: int = 0) -> Any:
    """The study as one worker sees it: its own sampler (seed derived from the study seed, the worker
    and the trials so far, so workers and resumed studies do not repeat suggestions) and the pruner."""
    existing = len(optuna.load_study(study_name=sweep.study.name, storage=storage).trials)
    return optuna.load_study(study_name=sweep.study.name, storage=storage,
                             sampler=make_sampler(sweep.study, worker, existing), pruner=make_pruner(sweep.study))


def worker_seed(seed: int, worker: int, existing: int) -> int:
    """A sampler seed of its own for each (study seed, worker, trials so far)."""
    import numpy as np
    return int(np.random.SeedSequence([seed, worker, existing]).generate_state(1)[0])


def make_sampler(s: StudySpec, worker: int = 0, existing: int = 0):
    """The study's sampler, seeded for this worker (TPE with constant liar: parallel workers spread out)."""
    seed = worker_seed(s.seed, worker, existing)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # constant_liar
        factories = {"tpe": lambda: optuna.samplers.TPESampler(seed=seed, constant_liar=True),
                     "random": lambda: optuna.samplers.RandomSampler(seed=seed)}
        return factories[s.sampler]()


def make_pruner(s: StudySpec):
    """The study's pruner; no decision before `warmup_epochs`."""
    bound = {"lower" if s.direction == "maximize" else "upper": s.threshold}
    factories = {"median": lambda: optuna.pruners.MedianPruner(s.startup_trials, s.warmup_epochs),
                 "threshold": lambda: optuna.pruners.ThresholdPruner(**bound, n_warmup_steps=s.warmup_epochs),
                 "none": optuna.pruners.NopPruner}
    return factories[s.pruner]()
