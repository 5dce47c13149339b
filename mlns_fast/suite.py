"""Experiment suites: a TOML file of runs (shared `[defaults]` + `[[run]]` overrides), run in order.

A run whose resolved config matches a finished run in the runs dir (same `config_digest`) is
skipped, so a suite can be re-run after an interruption and only does what is missing.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from .comparison import format_rows, run_row
from .config import RunConfig, config_from_dict, read_toml
from .errors import ConfigError, MlnsError
from .runs import list_runs


NOTE_KEYS = ("seed_result", "note")  # [[run]] keys that describe a run for the report, not configure it
SUITE_KEYS = NOTE_KEYS + ("seeds",)  # `seeds = [0, 1, 2]`: one run per seed, named NAME-s0, NAME-s1, ...


def suite_notes(path: str | Path) -> dict[str, dict]:
    """run name -> its report notes (`seed_result`: the seed write-up's figure, `note`); a run expanded
    over seeds gives its notes to each of its seed runs."""
    d = read_toml(path)
    out = {}
    for r in d.get("run", []):
        notes = {k: r[k] for k in NOTE_KEYS if k in r}
        seeds = r.get("seeds", d.get("defaults", {}).get("seeds")) if isinstance(r, dict) else None
        for name in [r.get("name", "")] + [f"{r.get('name', '')}-s{s}" for s in seeds or []]:
            out[name] = notes
    return out


def _seeds(value, where: str) -> list[int] | None:
    """A `seeds` list: distinct whole numbers in the seed's range, or None when not given."""
    if value is None:
        return None
    if not isinstance(value, list) or not value or len(set(map(repr, value))) != len(value) or \
            any(isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 2**32 for v in value):
        raise ConfigError(f"{where}: seeds must be a non-empty list of distinct integers in [0, 2^32), got {value!r}")
    return value


def _expand(cfg: RunConfig, seeds: list[int] | None, where: str) -> list[RunConfig]:
    """One config per seed (named NAME-sSEED), or the config itself without `seeds`."""
    if seeds is None:
        return [cfg]
    if not cfg.name:
        raise ConfigError(f"{where}: every [[run]] needs a unique name")
    return [replace(cfg, name=f"{cfg.name}-s{s}", train=replace(cfg.train, seed=s)) for s in seeds]


def load_suite(path: str | Path) -> list[RunConfig]:
    """The resolved configs of a suite file, each named, in file order (a run with `seeds` expanded
    into one run per seed, in the order given)."""
    d = read_toml(path)
    unknown = set(d) - {"defaults", "run", "title"}
    if unknown:
        raise ConfigError(f"{path}: unknown key {sorted(unknown)[0]!r} (suite keys: title, defaults, run)")
    defaults = dict(d.get("defaults", {})) if isinstance(d.get("defaults", {}), dict) else d.get("defaults")
    default_seeds = _seeds(defaults.pop("seeds", None), f"{path} [defaults]") if isinstance(defaults, dict) else None
    base = config_from_dict(defaults, f"{path} [defaults]")
    runs = d.get("run", [])
    if not isinstance(runs, list) or not runs:
        raise ConfigError(f"{path}: no [[run]] tables")
    cfgs = []
    for i, r in enumerate(runs):
        where = f"{path} run {i + 1}"
        if not isinstance(r, dict):
            raise ConfigError(f"{where}: must be a table")
        seeds = _seeds(r["seeds"], where) if "seeds" in r else default_seeds
        if seeds is not None and "seed" in (r.get("train") if isinstance(r.get("train"), dict) else {}):
            raise ConfigError(f"{where}: give seeds or [run.train] seed, not both")
        cfg = config_from_dict({k: v for k, v in r.items() if k not in SUITE_KEYS}, where, base)
        cfgs += _expand(cfg, seeds, where)
    names = [c.name for c in cfgs]
    if "" in names or len(set(names)) != len(names):
        raise ConfigError(f"{path}: every [[run]] needs a unique name")
    return cfgs


def suite_runs(path, runs_dir) -> list[tuple[RunConfig, str | None]]:
    """Each config of a suite with the folder of its finished run (None if not run yet)."""
    done = finished_digests(runs_dir)
    return [(cfg, done.get(trained_digest(cfg, runs_dir))) for cfg in load_suite(path)]


def trained_digest(cfg: RunConfig, runs_dir) -> str:
    """The digest `train` records for this config: with `--init RUN` resolved to the weights file it
    named (a run not there yet resolves to nothing, so its row is not done)."""
    from .training import resolve_init
    try:
        return resolve_init(cfg, runs_dir).digest()
    except MlnsError:
        return cfg.digest()


def finished_digests(runs_dir: str | Path) -> dict[str, str]:
    """config_digest -> run folder name, for every finished run."""
    out = {}
    for run in list_runs(runs_dir):
        try:
            s = run.summary()
        except MlnsError:
            continue
        if s.get("status") == "finished" and s.get("config_digest"):
            out[s["config_digest"]] = run.name
    return out


def run_suite(path, runs_dir, dry_run: bool = False, quiet: bool = True, echo=print,
              progress: str | None = None) -> list[dict]:
    """Train every run of the suite not finished yet, then return (and echo) the comparison rows."""
    from .runs import RunDir
    from .training import train
    cfgs = load_suite(path)
    done = finished_digests(runs_dir)
    names = {}
    for i, cfg in enumerate(cfgs, 1):
        digest = trained_digest(cfg, runs_dir)  # here, not up front: an `--init` row may name a run trained above
        if digest in done:
            echo(f"[{i}/{len(cfgs)}] {cfg.name}: done already ({done[digest]})")
            names[cfg.name] = done[digest]
            continue
        echo(f"[{i}/{len(cfgs)}] {cfg.name}: {'would train' if dry_run else 'training'} "
             f"{cfg.model.arch}/{cfg.model.head}/{cfg.data.data}, {cfg.train.epochs} epochs")
        if not dry_run:
            s = train(cfg, runs_dir, quiet=quiet, progress=progress)
            names[cfg.name] = s["run"]
            echo(f"    {s['status']}: acc {s.get('final_acc')}, EMA {s.get('final_acc_ema')}, {s['minutes']} min")
    rows = [{**run_row(RunDir(Path(runs_dir) / r)), "name": name} for name, r in names.items()]
    if rows:
        echo(format_rows(rows, "table"))
    return rows
