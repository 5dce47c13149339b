"""Hyperparameter sweeps: an Optuna study whose every trial is an ordinary run folder.

A sweep file holds `[defaults]` (the sections of a config file), `[space]` (per `section.field`:
`{low, high[, log][, step]}` or `{choices = [...]}`) and `[study]` (name, metric, direction, seed,
sampler, pruner). `run_sweep` creates the study (or loads it: a study resumes where it stopped),
runs `--workers` processes that each take trials until the study holds `--trials` of them, and
writes what a person looks at into `<runs_dir>/sweeps/<study>/`:

    journal.log                 the default storage (Optuna's journal file; safe for several processes)
    best.toml                   the best trial's config, ready for `mlns-fast train --config`
    trials.csv                  one row per trial: state, value, run folder, parameters
    optimization_history.png    Optuna's matplotlib plots
    param_importances.png
    parallel_coordinate.png

Each trial trains through `train.train` into `<runs_dir>/<stamp>-<study>-t<NNN>/`, its summary
recording `study` and `trial`; `PruneTrial` reports the metric after every epoch and stops a
trial the pruner rejects as `pruned`.
"""
from __future__ import annotations

import contextlib
import csv
import io
import logging
import math
import os
import pickle
import socket
import time
import warnings
from dataclasses import dataclass, field, fields, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, get_type_hints

import optuna
from fastai.callback.core import CancelFitException
from optuna.trial import TrialState

from .callbacks import CompletedEpochs, RunTracker
from .config import NAME_RE, SECTIONS, RunConfig, config_from_dict, read_toml, write_toml
from .errors import ConfigError, MlnsError, RunError
from .files import atomic_write
from .runs import DEFAULT_RUNS_DIR, RunDir

log = logging.getLogger(__name__)

SPEC_KEYS = {"low", "high", "log", "step", "choices"}
FIXED_FIELDS = {"train.epochs": "epochs are fixed per study, so that every trial's values are comparable"}
# metric -> its natural direction and the column it falls back to in a trial without EMA (whose
# "EMA weights" are the raw ones, as `evaluate` also treats them)
METRICS = {"acc_ema": ("maximize", "acc"), "acc": ("maximize", "acc"),
           "valid_loss_ema": ("minimize", "valid_loss"), "valid_loss": ("minimize", "valid_loss")}
DIRECTIONS = ("maximize", "minimize")
SAMPLERS = ("tpe", "random")
PRUNERS = ("median", "threshold", "none")
STUDY_KEYS = {"name", "metric", "direction", "seed", "sampler", "pruner", "startup_trials", "warmup_epochs",
              "threshold", "enqueue"}
HEARTBEAT_S = 30          # database storages: a trial whose worker stops beating for 2x this is failed
ORPHAN_S = 60             # a running trial that never recorded its worker (killed right after `ask`)
PLOTS = {"optimization_history.png": "plot_optimization_history",
         "param_importances.png": "plot_param_importances",
         "parallel_coordinate.png": "plot_parallel_coordinate"}


class TrialDiverged(Exception):
    """A trial's loss became NaN/inf: the trial fails, the study goes on."""


class SweepInterrupted(Exception):
    """Ctrl-C / SIGTERM stopped a trial: the trial fails, the worker stops."""


# --- the sweep file ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Param:
    """One searched field: a float or int range (optionally log-scaled or stepped), or a list of choices."""
    key: str                     # "section.field", also the Optuna parameter name
    kind: str                    # float | int | choice
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple = ()

    def suggest(self, trial) -> Any:
        """This parameter's value for an Optuna trial."""
        if self.kind == "choice":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.key, self.low, self.high, step=self.step or 1, log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)

    def member(self, value) -> Any:
        """`value` as this space holds it (the matching choice), or None when it lies outside."""
        if self.kind == "choice":
            return next((c for c in self.choices if c is value or c == value and bool not in (type(c), type(value))),
                        None)
        inside = self.low <= value <= self.high
        if inside and self.step:
            inside = math.isclose((value - self.low) / self.step, round((value - self.low) / self.step))
        return value if inside else None

    def describe(self) -> str:
        if self.kind == "choice":
            return f"{self.key}: one of {list(self.choices)}"
        extra = (", log" if self.log else "") + (f", step {self.step}" if self.step else "")
        return f"{self.key}: {self.kind} in [{self.low}, {self.high}]{extra}"


@dataclass(frozen=True)
class StudySpec:
    """The `[study]` section."""
    name: str
    metric: str = "acc_ema"        # per-epoch column reported for pruning; the objective is its final value
    direction: str = "maximize"
    seed: int = 0                  # sampler seed (each worker derives its own from it)
    sampler: str = "tpe"
    pruner: str = "median"
    startup_trials: int = 5        # median pruner: complete trials before it prunes anything
    warmup_epochs: int = 1         # no pruning before this epoch index (>= the one-cycle warm-up)
    threshold: float | None = None  # threshold pruner: prune when the metric is worse than this
    enqueue: str = "defaults"      # first trial: "defaults", a config TOML, or "" for none


@dataclass(frozen=True)
class Sweep:
    """A parsed, validated sweep file."""
    path: str
    base: RunConfig
    space: tuple[Param, ...]
    study: StudySpec
    first: dict = field(default_factory=dict)   # parameters of the enqueued first trial

    def trial_name(self, number: int) -> str:
        return f"{self.study.name}-t{number:03d}"

    def trial_config(self, params: dict, number: int) -> RunConfig:
        """The run config of a trial: [defaults] with the trial's parameters, named after the trial."""
        d: dict = {"name": self.trial_name(number)}
        for key, value in params.items():
            section, name = key.split(".", 1)
            d.setdefault(section, {})[name] = value
        return config_from_dict(d, f"{self.path} trial {number}", self.base)

    def fingerprint(self) -> dict:
        """What must not change while a study grows: epochs, metric, direction, space."""
        return {"epochs": self.base.train.epochs, "metric": self.study.metric, "direction": self.study.direction,
                "space": [p.describe() for p in self.space]}


def load_sweep(path: str | Path) -> Sweep:
    """Read and validate a sweep file; every problem is a one-line ConfigError naming the file and key."""
    path = str(path)
    d = read_toml(path)
    unknown = set(d) - {"defaults", "space", "study", "title"}
    if unknown:
        raise ConfigError(f"{path}: unknown key {min(unknown)!r} (sweep keys: title, defaults, space, study)")
    for key in ("defaults", "space", "study"):
        if not isinstance(d.get(key, {}), dict):
            raise ConfigError(f"{path}: [{key}] must be a table")
    base = config_from_dict(d.get("defaults", {}), f"{path} [defaults]")
    space = parse_space(d.get("space", {}), base, path)
    study = parse_study(d.get("study", {}), base, path)
    return Sweep(path, base, space, study, first_params(study.enqueue, space, base))


def parse_space(raw: dict, base: RunConfig, path: str) -> tuple[Param, ...]:
    """`[space]` -> Params. Keys are quoted `"section.field"` or nested `[space.section]` tables."""
    flat = {}
    for key, spec in raw.items():
        if key in SECTIONS and isinstance(spec, dict) and spec and not set(spec) & SPEC_KEYS:
            flat.update({f"{key}.{k}": v for k, v in spec.items()})
        else:
            flat[key] = spec
    if not flat:
        raise ConfigError(f"{path}: [space] is empty: give at least one field, e.g. \"train.lr\" = "
                          "{low = 3e-4, high = 3e-2, log = true}")
    return tuple(parse_param(key, spec, base, f"{path} [space] {key}") for key, spec in flat.items())


def parse_param(key: str, spec, base: RunConfig, where: str) -> Param:
    """One `[space]` entry, checked against the config field it names."""
    typ = _field_type(key, where)
    if not isinstance(spec, dict) or not spec or set(spec) - SPEC_KEYS:
        raise ConfigError(f"{where}: expected {{low = .., high = ..[, log = true][, step = ..]}} or "
                          f"{{choices = [..]}}, got {spec!r}")
    param = _choice_param(key, spec, where) if "choices" in spec else _range_param(key, spec, typ, where)
    for value in param.choices or (param.low, param.high):
        _check_value(key, value, base, where)
    return param


def _field_type(key: str, where: str) -> type:
    section, _, name = key.partition(".")
    if section not in SECTIONS or name not in {f.name for f in fields(SECTIONS[section])}:
        known = ", ".join(SECTIONS)
        raise ConfigError(f"{where}: unknown field {key!r} (write section.field with a section of {known}, "
                          "e.g. train.lr)")
    if key in FIXED_FIELDS:
        raise ConfigError(f"{where}: {key} cannot be searched: {FIXED_FIELDS[key]} (set it in [defaults])")
    typ = get_type_hints(SECTIONS[section])[name]
    if typ is tuple:
        raise ConfigError(f"{where}: {key} holds a list and cannot be searched")
    return typ


def _choice_param(key: str, spec: dict, where: str) -> Param:
    choices = spec["choices"]
    if set(spec) != {"choices"}:
        raise ConfigError(f"{where}: choices cannot be combined with {min(set(spec) - {'choices'})}")
    if not isinstance(choices, list) or not choices:
        raise ConfigError(f"{where}: choices must be a non-empty list, got {choices!r}")
    if any(isinstance(c, (list, dict)) for c in choices):
        raise ConfigError(f"{where}: choices must be numbers, strings or booleans")
    if len({repr(c) for c in choices}) != len(choices):
        raise ConfigError(f"{where}: choices repeat a value: {choices}")
    return Param(key, "choice", choices=tuple(choices))


def _range_param(key: str, spec: dict, typ: type, where: str) -> Param:
    if typ not in (int, float):
        raise ConfigError(f"{where}: {key} is a {typ.__name__} field: give choices = [...], not a range")
    if "low" not in spec or "high" not in spec:
        raise ConfigError(f"{where}: a range needs both low and high")
    low, high, log_, step = spec["low"], spec["high"], spec.get("log", False), spec.get("step")
    number = int if typ is int else (int, float)
    for name, v in (("low", low), ("high", high), ("step", step)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, number)):
            raise ConfigError(f"{where}: {name} must be {'an integer' if typ is int else 'a number'}, got {v!r}")
    if not isinstance(log_, bool):
        raise ConfigError(f"{where}: log must be true or false, got {log_!r}")
    if not low < high:
        raise ConfigError(f"{where}: low must be < high, got low = {low}, high = {high}")
    if log_ and (low <= 0 or step is not None):
        raise ConfigError(f"{where}: a log range needs low > 0 and no step")
    if step is not None and step <= 0:
        raise ConfigError(f"{where}: step must be > 0, got {step}")
    return Param(key, typ.__name__, low=low, high=high, log=log_, step=step)


def _check_value(key: str, value, base: RunConfig, where: str) -> None:
    """A value of the space must make a valid config (type and range of the field)."""
    section, name = key.split(".", 1)
    try:
        config_from_dict({section: {name: value}}, where, base)
    except ConfigError as e:
        msg = str(e)
        raise ConfigError(msg if msg.startswith(where) else f"{where}: {value!r}: {msg}") from None


def parse_study(raw: dict, base: RunConfig, path: str) -> StudySpec:
    """`[study]` -> StudySpec, with the defaults filled in and every value checked."""
    where = f"{path} [study]"
    unknown = set(raw) - STUDY_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown key {min(unknown)!r} (known: {', '.join(sorted(STUDY_KEYS))})")
    metric = _get(raw, "metric", str, "acc_ema", where)
    _one_of("metric", metric, METRICS, where)
    warm = one_cycle_warmup(base.train.epochs)
    spec = StudySpec(
        name=_get(raw, "name", str, Path(path).stem, where), metric=metric,
        direction=_get(raw, "direction", str, METRICS[metric][0], where), seed=_get(raw, "seed", int, 0, where),
        sampler=_get(raw, "sampler", str, "tpe", where), pruner=_get(raw, "pruner", str, "median", where),
        startup_trials=_get(raw, "startup_trials", int, 5, where),
        warmup_epochs=_get(raw, "warmup_epochs", int, warm, where),
        threshold=_get(raw, "threshold", (int, float), None, where), enqueue=_enqueue(raw, where))
    _check_study(spec, warm, base.train.epochs, where)
    return spec


def _get(raw: dict, key: str, typ, default, where: str):
    value = raw.get(key, default)
    if value is not default and (isinstance(value, bool) or not isinstance(value, typ)):
        name = getattr(typ, "__name__", "number")
        raise ConfigError(f"{where}: {key} must be {name}, got {value!r}")
    return value


def _one_of(key: str, value, allowed, where: str) -> None:
    if value not in allowed:
        raise ConfigError(f"{where}: {key} must be one of {', '.join(allowed)}; got {value!r}")


def _enqueue(raw: dict, where: str) -> str:
    value = raw.get("enqueue", "defaults")
    if value is False:
        return ""
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: enqueue must be \"defaults\", a config file or false; got {value!r}")
    return value


def _check_study(s: StudySpec, warm: int, epochs: int, where: str) -> None:
    if not NAME_RE.fullmatch(f"{s.name}-t000"):  # trial names are run names: config's one rule
        raise ConfigError(f"{where}: name {s.name!r} may only use letters, digits, '.', '_' and '-'")
    _one_of("direction", s.direction, DIRECTIONS, where)
    _one_of("sampler", s.sampler, SAMPLERS, where)
    _one_of("pruner", s.pruner, PRUNERS, where)
    if s.seed < 0 or s.startup_trials < 0:
        raise ConfigError(f"{where}: seed and startup_trials must be >= 0")
    if not warm <= s.warmup_epochs <= epochs:
        raise ConfigError(f"{where}: warmup_epochs must be in [{warm}, {epochs}] (at least the one-cycle "
                          f"warm-up of {epochs} epochs), got {s.warmup_epochs}")
    if (s.pruner == "threshold") != (s.threshold is not None):
        raise ConfigError(f"{where}: threshold goes with pruner = \"threshold\" (and it needs one)")


def one_cycle_warmup(epochs: int) -> int:
    """Epochs of the one-cycle schedule's rising learning rate (fastai's `pct_start`, rounded up)."""
    import inspect

    import fastai.callback.schedule  # noqa: F401  (patches fit_one_cycle into Learner)
    from fastai.learner import Learner
    pct = inspect.signature(Learner.fit_one_cycle).parameters["pct_start"].default
    return math.ceil(pct * epochs)


def first_params(enqueue: str, space: tuple[Param, ...], base: RunConfig) -> dict:
    """The parameters of the first trial, taken from [defaults] or a config file; values outside the
    space are left to the sampler."""
    if not enqueue:
        return {}
    cfg = base if enqueue == "defaults" else config_from_dict(read_toml(enqueue), enqueue)
    params = {}
    for p in space:
        section, name = p.key.split(".", 1)
        value = getattr(getattr(cfg, section), name)
        if p.member(value) is None:
            log.info("first trial: %s = %r (from %s) lies outside the space; the sampler picks it", p.key, value,
                     enqueue)
            continue
        params[p.key] = p.member(value)
    return params


# --- storage and study ---------------------------------------------------------------------------

def study_folder(runs_dir: str | Path, name: str) -> Path:
    """Where a study's journal, best config, table and plots live (ignored by `compare`)."""
    return Path(runs_dir) / "sweeps" / name


def default_storage(runs_dir: str | Path, name: str) -> str:
    return str(study_folder(runs_dir, name) / "journal.log")


def is_database(storage: str) -> bool:
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
    """A journal file (a path) or a database (an SQLAlchemy URL: postgresql://, mysql://, sqlite:///)."""
    from optuna.storages.journal import JournalFileBackend, JournalStorage
    if not is_database(storage):
        Path(storage).parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(storage))
    engine = {"connect_args": {"timeout": 60}} if storage.startswith("sqlite") else None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeat_interval
            return optuna.storages.RDBStorage(storage, engine_kwargs=engine, heartbeat_interval=HEARTBEAT_S)
    except Exception as e:  # noqa: BLE001 - a missing driver, a refused connection, a malformed URL: all one line for the user
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"--storage {shown(storage)}: cannot open ({type(e).__name__}: {reason})") from None


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
    import numpy as np
    return int(np.random.SeedSequence([seed, worker, existing]).generate_state(1)[0])


def make_sampler(s: StudySpec, worker: int = 0, existing: int = 0):
    seed = worker_seed(s.seed, worker, existing)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # constant_liar
        factories = {"tpe": lambda: optuna.samplers.TPESampler(seed=seed, constant_liar=True),
                     "random": lambda: optuna.samplers.RandomSampler(seed=seed)}
        return factories[s.sampler]()


def make_pruner(s: StudySpec):
    bound = {"lower" if s.direction == "maximize" else "upper": s.threshold}
    factories = {"median": lambda: optuna.pruners.MedianPruner(s.startup_trials, s.warmup_epochs),
                 "threshold": lambda: optuna.pruners.ThresholdPruner(**bound, n_warmup_steps=s.warmup_epochs),
                 "none": optuna.pruners.NopPruner}
    return factories[s.pruner]()


# --- workers that died ---------------------------------------------------------------------------

def process_token(pid: int) -> str | None:
    """A live process's kernel start time (guards against pid reuse); None if it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    except OSError:  # no procfs: fall back to "does the pid exist"
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return "?"
    state_and_rest = stat.rsplit(")", 1)[1].split()
    return None if state_and_rest[0] in ("Z", "X") else state_and_rest[19]


def this_machine() -> str:
    """Host name and kernel boot id: two machines (or two boots) never share it, even under one host name."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = ""
    return f"{socket.gethostname()}/{boot}"


def this_worker() -> dict:
    return {"host": this_machine(), "pid": os.getpid(), "token": process_token(os.getpid())}


def is_dead(trial) -> bool:
    """A running trial whose worker process on this machine no longer exists (or never said who it was)."""
    w = trial.user_attrs.get("worker")
    if w is None:
        return trial.datetime_start is not None and datetime.now() - trial.datetime_start > timedelta(seconds=ORPHAN_S)
    if w.get("host") != this_machine():
        return False  # another machine's worker: database storages fail it through Optuna's heartbeat
    token = process_token(w["pid"])
    return token is None or ("?" not in (token, w.get("token")) and token != w.get("token"))


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


# --- one trial -----------------------------------------------------------------------------------

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
            self.learn.stop_reason = ("pruned", why)
            raise CancelFitException()


def metric_column(metric: str, cfg: RunConfig) -> str:
    """The metrics column a trial reports: `*_ema` falls back to the raw column when EMA is off."""
    return metric if cfg.train.ema > 0 or not metric.endswith("_ema") else METRICS[metric][1]


# a run that stopped early -> what its trial raises (pruned: Optuna's PRUNED state; the others: FAIL)
STOPS = {"pruned": optuna.TrialPruned, "diverged": TrialDiverged, "interrupted": SweepInterrupted}


class TrialRunner:
    """The objective: train one trial as an ordinary run and return its final metric."""

    def __init__(self, sweep: Sweep, runs_dir: str | Path, on_start=lambda: None):
        self.sweep, self.runs_dir, self.on_start = sweep, runs_dir, on_start

    def __call__(self, trial) -> float:
        from .training import train
        self.on_start()
        trial.set_user_attr("worker", this_worker())
        params = {p.key: p.suggest(trial) for p in self.sweep.space}
        cfg = self.sweep.trial_config(params, trial.number)
        log.info("trial %d: %s", trial.number, ", ".join(f"{k}={_short(v)}" for k, v in params.items()))
        prune = PruneTrial(trial, metric_column(self.sweep.study.metric, cfg))
        s = train(cfg, self.runs_dir, quiet=True, extra_cbs=[prune],
                  summary_extra={"study": self.sweep.study.name, "trial": trial.number})
        trial.set_user_attr("run", s["run"])
        trial.set_user_attr("status", s["status"])
        log.info("trial %d: %s, %s %s after %d epoch(s) -> %s", trial.number, s["status"], prune.column,
                 _short(prune.last), s["epochs_done"], s["run"])
        if s["status"] in STOPS:
            raise STOPS[s["status"]](s.get("message", ""))
        return prune.last if prune.last is not None else float("nan")


def _short(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


# --- workers -------------------------------------------------------------------------------------

def work(sweep: Sweep, runs_dir: str | Path, storage: str, target: int, deadline: float | None = None,
         worker: int = 0) -> int:
    """Take trials until the study holds `target` of them (or the deadline passes); trials run here."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # this module logs one line per trial instead
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


def _worker_main(sweep, runs_dir, storage, target, deadline, worker, threads, logging_state) -> None:
    """Entry of a spawned worker process: its share of the threads, the parent's logging, `work`."""
    import sys

    import torch
    _apply_logging(logging_state, worker)
    torch.set_num_threads(threads)
    try:
        work(sweep, runs_dir, storage, target, deadline, worker)
    except (SweepInterrupted, KeyboardInterrupt):
        sys.exit(130)
    except MlnsError as e:
        log.error("worker %d: %s", worker, e)
        sys.exit(2)


def _logging_state() -> dict:
    root = logging.getLogger()
    fmt = next((getattr(h.formatter, "_fmt", None) for h in root.handlers if h.formatter), None)
    levels = {name: lg.level for name, lg in logging.root.manager.loggerDict.items()
              if isinstance(lg, logging.Logger) and lg.level}
    return {"level": root.level, "format": fmt or "%(message)s", "levels": levels,
            "warnings": [f for f in warnings.filters if _picklable(f)]}


def _picklable(obj) -> bool:
    try:
        pickle.dumps(obj)
        return True
    except Exception:  # noqa: BLE001 - any reason a filter cannot travel to a spawned worker
        return False


def _apply_logging(state: dict, worker: int) -> None:
    logging.basicConfig(level=state["level"], format=state["format"].replace("%(message)s",
                                                                               f"[worker {worker}] %(message)s"))
    for name, level in state["levels"].items():
        logging.getLogger(name).setLevel(level)
    warnings.filters[:] = state["warnings"]


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
                         args=(sweep, runs_dir, storage, target, deadline, i, threads, _logging_state()))
             for i in range(workers)]
    for p in procs:
        p.start()
    codes = _join(procs)
    failed = [(i, c) for i, c in enumerate(codes) if c not in (0, 130)]
    if failed:
        raise RunError(f"sweep worker {failed[0][0]} stopped with exit code {failed[0][1]} (its error is above); "
                       "rerun the same command to resume the study")
    return 130 in codes


def _join(procs) -> list[int]:
    """Wait for every worker; Ctrl-C reaches them too (same process group): wait for them to stop."""
    while True:
        try:
            for p in procs:
                p.join()
            return [p.exitcode for p in procs]
        except KeyboardInterrupt:
            continue


# --- results -------------------------------------------------------------------------------------

@dataclass
class SweepResult:
    """What a sweep left: its trials, the best one, the files written."""
    study: str
    storage: str
    metric: str
    rows: list[dict]
    best: dict | None
    files: list[Path]
    interrupted: bool = False

    def lines(self) -> list[str]:
        """A report for a person: counts, the trials table, the best trial, the files, the dashboard."""
        from .comparison import format_rows
        states = [r["state"] for r in self.rows]
        counts = ", ".join(f"{states.count(s)} {s}" for s in dict.fromkeys(states))
        out = [f"study {self.study} ({self.storage}): {len(self.rows)} trial(s): {counts or 'none yet'}"]
        if self.rows:
            out.append(format_rows(self.rows, "table", list(self.rows[0])).rstrip("\n"))
        if self.best:
            b = self.best
            out += [f"best: trial {b['trial']}, {self.metric} {b['value']:.4f} ({b['run']}): "
                    + ", ".join(f"{k}={_short(v)}" for k, v in b["params"].items()),
                    f"train it again: {b['again']}"]
        out += [f"wrote {f}" for f in self.files]
        out.append(f"live view: optuna-dashboard {self.storage}")
        if self.interrupted:
            out.append("interrupted: run the same command again to resume the study")
        return out


def trial_rows(study) -> list[dict]:
    """One row per trial: number, state, value, epochs reported, seconds, parameters, run folder."""
    rows, names = [], _param_names(study)
    for t in study.get_trials(deepcopy=False):
        seconds = (t.datetime_complete - t.datetime_start).total_seconds() \
            if t.datetime_complete and t.datetime_start else None
        rows.append({"trial": t.number, "state": t.state.name.lower(), "value": t.value,
                     "epochs": len(t.intermediate_values), "seconds": round(seconds, 1) if seconds else None,
                     **{k: t.params.get(k) for k in names}, "run": t.user_attrs.get("run")})
    return rows


def _param_names(study) -> list[str]:
    return list(dict.fromkeys(k for t in study.get_trials(deepcopy=False) for k in t.params))


def write_results(study, sweep: Sweep, runs_dir, storage: str, interrupted: bool = False) -> SweepResult:
    """trials.csv, best.toml and the plots in the study folder; the result to show."""
    folder = study_folder(runs_dir, sweep.study.name)
    folder.mkdir(parents=True, exist_ok=True)
    rows = trial_rows(study)
    files = [_write_csv(rows, folder / "trials.csv")]
    best = best_trial(study, sweep, runs_dir, folder / "best.toml")
    if best:
        files.append(best["config"])
    files += write_plots(study, folder, sweep.study.metric)
    return SweepResult(sweep.study.name, shown(storage), sweep.study.metric, rows, best, files, interrupted)


def _write_csv(rows: list[dict], path: Path) -> Path:
    buf = io.StringIO()
    cols = list(rows[0]) if rows else ["trial", "state", "value"]
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write(path, buf.getvalue())
    return path


def best_trial(study, sweep: Sweep, runs_dir, out: Path) -> dict | None:
    """The best complete trial, its config written to `out` (its run folder's, when on this machine)."""
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return None
    t = study.best_trial
    run = t.user_attrs.get("run")
    local = RunDir(Path(runs_dir) / run) if run and (Path(runs_dir) / run / "config.toml").is_file() else None
    cfg = replace(local.config() if local else sweep.trial_config(t.params, t.number), name=f"{sweep.study.name}-best")
    threads = _summary(local).get("threads")
    # CPU float sums depend on the thread count: the same count reproduces the trial exactly
    again = (f"OMP_NUM_THREADS={threads} " if threads else "") + f"mlns-fast train --config {out}"
    head = (f"# Best trial of study {sweep.study.name!r} ({sweep.path}): trial {t.number}, "
            f"{sweep.study.metric} = {t.value:.6g}\n# run folder: {run}; train it again: {again}\n")
    atomic_write(out, head + write_toml(cfg))
    return {"trial": t.number, "value": t.value, "run": run, "params": t.params, "config": out, "again": again}


def _summary(run: RunDir | None) -> dict:
    try:
        return run.summary() if run else {}
    except MlnsError:
        return {}


def write_plots(study, folder: Path, metric: str) -> list[Path]:
    """Optuna's matplotlib plots as PNGs; one that cannot be drawn yet (too few trials) is skipped."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as ovm
    out = []
    for name, fn in PLOTS.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "experimental" notices of the matplotlib backend
            try:
                ax = getattr(ovm, fn)(study, target_name=f"final {metric}")
            except Exception as e:  # noqa: BLE001 - a plot is a convenience; never lose a study's results to it
                log.info("%s skipped: %s", name, str(e).splitlines()[0] if str(e) else type(e).__name__)
                plt.close("all")
                continue
        fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
        fig.savefig(folder / name, dpi=110, bbox_inches="tight")
        plt.close(fig)
        out.append(folder / name)
    return out


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
            out.append(f"  trial {i}: " + ", ".join(f"{k}={_short(v)}" for k, v in params.items()) + tag)
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


# --- the command -----------------------------------------------------------------------------------

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
    study_folder(runs_dir, sweep.study.name).mkdir(parents=True, exist_ok=True)
    if workers > 1 and storage.startswith("sqlite"):
        log.warning("SQLite locks the whole database on every write; with %d workers prefer the default "
                    "journal file or a PostgreSQL / MySQL server", workers)
    study = create_study(sweep, open_storage(storage))  # before any worker: workers only load it
    fail_dead_trials(study, runs_dir)
    fail_orphan_folders(study, runs_dir)
    deadline = time.time() + timeout if timeout else None
    interrupted = run_workers(sweep, runs_dir, storage, trials, workers, deadline)
    return write_results(study, sweep, runs_dir, storage, interrupted)


def _check_options(trials: int, workers: int, timeout: float | None) -> None:
    if trials < 1:
        raise ConfigError(f"--trials must be >= 1, got {trials}")
    if workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    if timeout is not None and timeout <= 0:
        raise ConfigError(f"--timeout must be > 0 seconds, got {timeout}")
