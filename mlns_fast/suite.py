"""Experiment suites: a TOML file of runs (shared `[defaults]` + `[[run]]` overrides), run in order.

A run whose resolved config matches a finished run in the runs dir (same `config_digest`) is
skipped, so a suite can be re-run after an interruption and only does what is missing.
"""
from __future__ import annotations

from pathlib import Path

from .comparison import format_rows, run_row
from .config import RunConfig, config_from_dict, read_toml
from .errors import ConfigError, MlnsError
from .runs import list_runs


NOTE_KEYS = ("seed_result", "note")  # [[run]] keys that describe a run for the report, not configure it


def suite_notes(path: str | Path) -> dict[str, dict]:
    """run name -> its report notes (`seed_result`: the seed write-up's figure, `note`)."""
    return {r.get("name", ""): {k: r[k] for k in NOTE_KEYS if k in r} for r in read_toml(path).get("run", [])}


def load_suite(path: str | Path) -> list[RunConfig]:
    """The resolved configs of a suite file, each named, in file order."""
    d = read_toml(path)
    unknown = set(d) - {"defaults", "run", "title"}
    if unknown:
        raise ConfigError(f"{path}: unknown key {sorted(unknown)[0]!r} (suite keys: title, defaults, run)")
    base = config_from_dict(d.get("defaults", {}), f"{path} [defaults]")
    runs = d.get("run", [])
    if not isinstance(runs, list) or not runs:
        raise ConfigError(f"{path}: no [[run]] tables")
    cfgs = [config_from_dict({k: v for k, v in r.items() if k not in NOTE_KEYS}, f"{path} run {i + 1}", base)
            for i, r in enumerate(runs)]
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


def run_suite(path, runs_dir, dry_run: bool = False, quiet: bool = True, echo=print) -> list[dict]:
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
            s = train(cfg, runs_dir, quiet=quiet)
            names[cfg.name] = s["run"]
            echo(f"    {s['status']}: acc {s.get('final_acc')}, EMA {s.get('final_acc_ema')}, {s['minutes']} min")
    rows = [{**run_row(RunDir(Path(runs_dir) / r)), "name": name} for name, r in names.items()]
    if rows:
        echo(format_rows(rows, "table"))
    return rows
