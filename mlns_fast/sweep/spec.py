"""The sweep file: `[defaults]`, `[space]` and `[study]`, read and validated into a `Sweep`.

`[defaults]` holds the sections of a config file; `[space]` per `section.field` a range
(`{low, high[, log][, step]}`) or `{choices = [...]}`, each checked against the config field it
names; `[study]` is a `StudySpec`, validated by config.py's one field validation.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints

from ..config import (NAME_RE, SECTIONS, Checked, RunConfig, _f, check_fields, config_from_dict, read_toml,
                      section_from_dict)
from ..errors import ConfigError

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


def short(v) -> str:
    """A parameter value as a person reads it (floats to 4 significant digits)."""
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def format_params(params: dict) -> str:
    """`train.lr=0.003, data.mix=0.5`: a trial's parameters in one line."""
    return ", ".join(f"{k}={short(v)}" for k, v in params.items())


# --- [space] -------------------------------------------------------------------------------------

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

    def distribution(self):
        """Optuna's distribution of this parameter (its constructor is Optuna's check of the range)."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
        if self.kind == "choice":
            return CategoricalDistribution(self.choices)
        if self.kind == "int":
            return IntDistribution(self.low, self.high, log=self.log, step=self.step or 1)
        return FloatDistribution(self.low, self.high, log=self.log, step=self.step)

    def member(self, value) -> Any:
        """`value` as this space holds it (the matching choice), or None when it lies outside."""
        if self.kind == "choice":
            # a bool matches only itself (True == 1 otherwise)
            return next((c for c in self.choices if c is value or (c == value and bool not in (type(c), type(value)))),
                        None)
        inside = self.low <= value <= self.high
        if inside and self.step:
            inside = math.isclose((value - self.low) / self.step, round((value - self.low) / self.step))
        return value if inside else None

    def describe(self) -> str:
        """One line for a person, also the space's part of the study fingerprint."""
        if self.kind == "choice":
            return f"{self.key}: one of {list(self.choices)}"
        extra = (", log" if self.log else "") + (f", step {self.step}" if self.step else "")
        return f"{self.key}: {self.kind} in [{self.low}, {self.high}]{extra}"


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
        if v is not None and not math.isfinite(v):
            raise ConfigError(f"{where}: {name} must be a finite number, got {v}")
    if not isinstance(log_, bool):
        raise ConfigError(f"{where}: log must be true or false, got {log_!r}")
    if not low < high:
        raise ConfigError(f"{where}: low must be < high, got low = {low}, high = {high}")
    if log_ and (low <= 0 or step is not None):
        raise ConfigError(f"{where}: a log range needs low > 0 and no step")
    if step is not None and step <= 0:
        raise ConfigError(f"{where}: step must be > 0, got {step}")
    param = Param(key, typ.__name__, low=low, high=high, log=log_, step=step)
    try:
        param.distribution()
    except ArithmeticError:  # Optuna counts the steps in decimal arithmetic of 28 digits
        raise ConfigError(f"{where}: step {step} is too fine for [{low}, {high}]; give a coarser step "
                          "or none") from None
    except ValueError as e:
        raise ConfigError(f"{where}: {e}") from None
    return param


def _check_value(key: str, value, base: RunConfig, where: str) -> None:
    """A value of the space must make a valid config (type and range of the field)."""
    section, name = key.split(".", 1)
    try:
        config_from_dict({section: {name: value}}, where, base)
    except ConfigError as e:
        msg = str(e)
        raise ConfigError(msg if msg.startswith(where) else f"{where}: {value!r}: {msg}") from None


# --- [study] -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class StudySpec(Checked):
    """The `[study]` section. A None field takes its default from the rest of the sweep file
    (`parse_study` fills it in: the file's name, the metric's direction, the one-cycle warm-up)."""
    name: str | None = _f(None, "the study's name, and trial run names NAME-tNNN (default: the file's name)")
    metric: str = _f("acc_ema", "per-epoch column reported for pruning; the objective is its final value",
                     choices=tuple(METRICS))
    direction: str | None = _f(None, "maximize | minimize (default: the metric's own)", choices=DIRECTIONS)
    seed: int = _f(0, "sampler seed (each worker derives its own from it)", 0, 2**32 - 1)
    sampler: str = _f("tpe", "tpe | random", choices=SAMPLERS)
    pruner: str = _f("median", "median | threshold (with threshold) | none", choices=PRUNERS)
    startup_trials: int = _f(5, "median pruner: complete trials before it prunes anything", 0, 1_000_000)
    warmup_epochs: int | None = _f(None, "no pruning before this epoch index (default and minimum: the "
                                         "one-cycle warm-up)", 0, 10_000)
    threshold: float | None = _f(None, "threshold pruner: prune when the metric is worse than this")
    enqueue: str = _f("defaults", "first trial: \"defaults\", a config TOML, or \"\" (false in the file) for none")

    def __post_init__(self):
        check_fields(self)
        if self.name is not None and not NAME_RE.fullmatch(f"{self.name}-t000"):  # trial names are run names
            raise ConfigError(f"name {self.name!r} may only use letters, digits, '.', '_' and '-'")
        if (self.pruner == "threshold") != (self.threshold is not None):
            raise ConfigError("threshold goes with pruner = \"threshold\" (and it needs one)")


def parse_study(raw: dict, base: RunConfig, path: str) -> StudySpec:
    """`[study]` -> StudySpec: every value checked, the defaults that depend on the file filled in."""
    where = f"{path} [study]"
    if raw.get("enqueue") is False:  # TOML has no null: `false` says "enqueue nothing"
        raw = {**raw, "enqueue": ""}
    given = section_from_dict(StudySpec, raw, where)
    epochs = base.train.epochs
    warm = one_cycle_warmup(epochs)
    derived = {"name": Path(path).stem, "direction": METRICS[given.metric][0], "warmup_epochs": warm}
    spec = section_from_dict(StudySpec, {k: v for k, v in derived.items() if getattr(given, k) is None}, where,
                             given)
    if not warm <= spec.warmup_epochs <= epochs:
        raise ConfigError(f"{where}: warmup_epochs must be in [{warm}, {epochs}] (at least the one-cycle "
                          f"warm-up of {epochs} epochs), got {spec.warmup_epochs}")
    return spec


def one_cycle_warmup(epochs: int) -> int:
    """Epochs of the one-cycle schedule's rising learning rate (fastai's `pct_start`, rounded up)."""
    import inspect

    import fastai.callback.schedule  # noqa: F401  (patches fit_one_cycle into Learner)
    from fastai.learner import Learner
    pct = inspect.signature(Learner.fit_one_cycle).parameters["pct_start"].default
    return math.ceil(pct * epochs)


# --- the whole file ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Sweep:
    """A parsed, validated sweep file."""
    path: str
    base: RunConfig
    space: tuple[Param, ...]
    study: StudySpec
    first: dict = field(default_factory=dict)   # parameters of the enqueued first trial

    def trial_name(self, number: int) -> str:
        """A trial's run name: `<study>-tNNN`."""
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
