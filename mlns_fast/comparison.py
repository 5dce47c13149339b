"""Comparing runs: rows from run folders, filter / sort / top, grouping over seeds, and table,
markdown, CSV or JSON output.

A row holds a run's summary figures, every field of its config.toml (flattened: `lr`, `bs`, `seed`,
`real`; file-only layout fields as `render.<field>`), the data it trained and validated on
(`train_data` / `train_hash`, `valid_data` / `valid_hash`, recorded in summary.json), and its
evaluation results (`test_acc` from eval/*/result.json, `rob_<set>` and `rob_mean` from
robustness/*/result.json). Metric names follow one rule (see `runs.py`): a per-epoch quantity is
named as in metrics.csv (`acc`, `acc_ema`), its last / best value `final_<q>` / `best_<q>`.

`--group-by` averages runs that differ only in seed; `--baseline` sets every group against one named group run for
run (the same seed on the same kind of machine) and averages the differences.

Never crashes on a partial or corrupt run folder: such a run becomes a row with status
`corrupt` (or whatever its summary says) and empty figures.
"""
from __future__ import annotations

import difflib
import functools
import io
import json
import logging
import math
import re
from dataclasses import fields
from pathlib import Path
from typing import get_type_hints

from .config import FLAG_SECTIONS, SECTIONS
from .errors import ConfigError, MlnsError
from .files import csv_text
from .runs import DEFAULT_TTA, NUMERIC_COLUMNS, SUMMARY_COLUMNS, RunDir, list_runs, reading_label

log = logging.getLogger(__name__)
FORMATS = ("table", "md", "csv", "json")
# The terminal table's columns: these always, the settings only where runs differ (`--wide`: all).
MATTER = ("name", "final_acc", "final_acc_ema", "test_acc", "rob_mean", "minutes", "status", "run")
# `device` and `precision` (as resolved) among them: minutes compare only on one kind of machine.
SETTINGS = ("arch", "grid", "head", "data", "ema", "epochs", "params", "device", "precision", "weights", "study",
            "trial", "runs_dir")
SOURCE_COLUMNS = ["train_data", "train_hash", "valid_data", "valid_hash"]
EVAL_COLUMNS = ["test_acc", "test_data", "test_tta"]
# Older or friendlier names of the same quantity, accepted wherever a column is named.
ALIASES = {"acc": "final_acc", "acc_ema": "final_acc_ema", "valid_acc": "final_acc", "valid_acc_ema": "final_acc_ema",
           "test_accuracy": "test_acc", "sum_accuracy": "test_acc"}
# Figures averaged by --group-by (any rob_<set> column too).
GROUP_METRICS = ("final_acc", "final_acc_ema", "best_acc", "best_acc_ema", "test_acc", "rob_mean", "minutes")


@functools.cache
def config_columns() -> dict[str, tuple[str, str]]:
    """Column name -> (config section, field): the CLI flag's name for flag fields (`lr`, `bs`,
    `real`), `section.field` where a summary figure already holds that name with another meaning
    and for the file-only layout fields (`render.gap`)."""
    same = {"arch", "head", "data", "ema", "epochs"}  # summary.json copies these from the config
    out = {}
    for section, cls in SECTIONS.items():
        for f in fields(cls):
            flat = FLAG_SECTIONS.get(f.name) == section and (f.name not in SUMMARY_COLUMNS or f.name in same)
            out[f.name if flat else f"{section}.{f.name}"] = (section, f.name)
    return out


@functools.cache
def robustness_columns() -> list[str]:
    from .robustness import NAMES
    return ["rob_mean"] + [f"rob_{n}" for n in NAMES]


def all_columns() -> list[str]:
    """Every column a row can hold, in display order."""
    summary = [c for c in SUMMARY_COLUMNS if c not in ("status", "run")]
    extra = [c for c in config_columns() if c not in summary]
    return (summary + SOURCE_COLUMNS + EVAL_COLUMNS + robustness_columns() + ["rob_tta"] + extra
            + ["status", "run", "runs_dir"])


@functools.cache
def numeric_columns() -> set[str]:
    hints = {s: get_type_hints(cls) for s, cls in SECTIONS.items()}
    cfg = {c for c, (s, f) in config_columns().items() if hints[s][f] in (int, float)}
    return set(NUMERIC_COLUMNS) | cfg | {"test_acc"} | set(robustness_columns())


def run_row(run: RunDir) -> dict:
    """One comparison row; a run whose files cannot be read is flagged, not fatal."""
    row = dict.fromkeys(all_columns())
    row.update(run=run.name, runs_dir=str(run.path.parent))
    try:
        s = run.summary()
        row.update({c: s.get(c) for c in SUMMARY_COLUMNS if c in s})
        row.update(_sources(s.get("data_sources")))
        row["run"] = run.name
        row["status"] = run.status(s)  # `running` with no live process becomes `stale`
    except MlnsError:
        row["status"] = "corrupt" if (run.path / "summary.json").exists() else "no-summary"
    try:
        cfg = run.config()
        row.update({c: _plain(getattr(getattr(cfg, s), f)) for c, (s, f) in config_columns().items()})
        row["name"] = row["name"] or cfg.name or None
    except MlnsError:
        pass
    row.update(eval_figures(run.path, row.get("weights")))
    row["name"] = row["name"] or run.name
    return row


def _plain(v):
    return list(v) if isinstance(v, tuple) else v


def _sources(recorded) -> dict:
    """summary.json `data_sources` ({"train": {"source", "sha1"}, "valid": ...}) as columns."""
    out = {}
    for part in ("train", "valid"):
        src = recorded.get(part) if isinstance(recorded, dict) else None
        if isinstance(src, dict):
            out[f"{part}_data"], out[f"{part}_hash"] = src.get("source"), src.get("sha1")
    return out


def _read_json(path: Path) -> dict | None:
    """A result file the program wrote, read back as user input: None unless a JSON object."""
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return d if isinstance(d, dict) else None


def _number(v) -> float | None:
    """A sortable number, or None for a missing or non-numeric value (a hand-edited file)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None  # NaN and inf sort nowhere


def eval_figures(path: Path, best: str | None) -> dict:
    """`test_acc` / `test_data` / `test_tta`: the newest evaluate result read the default way (shift TTA
    unless `DEFAULT_TTA` says otherwise; the other way where a run has none), the run's best weights
    preferred; `rob_<set>`, `rob_mean` and `rob_tta`: the robustness result of the best weights, read the
    same way where there is one. `rob_mean` is the mean over the battery's shifted sets, only when all
    were scored. `test_tta` / `rob_tta` say which reading a figure is, as runs scored before the default
    changed may have only the other."""
    out = {}
    results = [(p, _read_json(p)) for p in sorted((path / "eval").glob("*/result.json"), key=_mtime)]
    results = [r for _, r in results if r and _number(r.get("sum_accuracy")) is not None]
    same = [r for r in results if (r.get("tta") is True) == DEFAULT_TTA] or results
    if same:
        pick = ([r for r in same if r.get("weights") == best] or same)[-1]
        out.update(test_acc=_number(pick["sum_accuracy"]), test_data=str(pick.get("data")),
                   test_tta=pick.get("tta") is True)
    folders = [p for p in (path / "robustness").glob("*/result.json")]
    rank = {reading_label(best, DEFAULT_TTA): 0, reading_label(best, not DEFAULT_TTA): 1}
    folders.sort(key=lambda p: (rank.get(p.parent.name, 2), p.parent.name))
    for p in folders:
        res = _read_json(p)
        sets = res.get("sets") if res else None
        if not isinstance(sets, list):
            continue
        scores = {r["set"]: _number(r.get("sum_accuracy")) for r in sets if isinstance(r, dict) and "set" in r}
        out.update({f"rob_{k}": v for k, v in scores.items() if f"rob_{k}" in robustness_columns()})
        out["rob_tta"] = p.parent.name.endswith("-tta")
        shifted = [n for n in (c[4:] for c in robustness_columns()[1:]) if n != "demo-test"]
        if all(scores.get(n) is not None for n in shifted):
            out["rob_mean"] = sum(scores[n] for n in shifted) / len(shifted)
        break
    return out


def _mtime(p: Path) -> float:
    try:
        return p.stat().st_mtime
    except OSError:
        return 0.0


def column(name: str, rows: list[dict] = (), flag: str = "--columns") -> str:
    """A column by its name or an alias; a one-line error with close matches otherwise."""
    name = ALIASES.get(name, name)
    known = all_columns()
    if name in known or any(name in r for r in rows):
        return name
    close = difflib.get_close_matches(name, known, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else " (`compare --format json` lists every column)"
    raise ConfigError(f"{flag}: unknown column {name!r}{hint}")


def parse_columns(spec: str | None, rows: list[dict] = (), flag: str = "--columns") -> list[str] | None:
    """`a,b,c` -> checked column names (None for no spec)."""
    if spec is None:
        return None
    names = [column(c.strip(), rows, flag) for c in spec.split(",") if c.strip()]
    if not names:
        raise ConfigError(f"{flag}: give one or more column names, comma-separated")
    return names


def parse_filters(filters: list[str], flag: str = "--filter") -> list[tuple[str, str]]:
    """`COLUMN=VALUE` strings -> checked (column, value) pairs (`--filter`, `--baseline`)."""
    out = []
    for f in filters:
        key, sep, value = f.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{flag} {f!r}: expected COLUMN=VALUE (e.g. arch=resnet18, seed=0)")
        out.append((column(key.strip(), flag=flag), value.strip()))
    return out


def _matches(row: dict, filters) -> bool:
    return all(str(row.get(k)) == v or _cell(row.get(k)) == v or _num_eq(row.get(k), v) for k, v in filters)


def _num_eq(a, b: str) -> bool:
    try:
        return a is not None and float(a) == float(b)
    except (TypeError, ValueError):
        return False


def select_rows(runs_dirs, sort: str | None = None, top: int | None = None,
                filters: list[str] = (), descending: bool | None = None) -> list[dict]:
    """Rows of every run in `runs_dirs` (one folder or several, listed in order), filtered
    (`col=value`, all must hold), sorted, cut to `top`."""
    sort = column(sort, flag="--sort") if sort is not None else None
    if top is not None and top <= 0:
        raise ConfigError(f"--top must be > 0, got {top}")
    dirs = [runs_dirs] if isinstance(runs_dirs, (str, Path)) else list(runs_dirs)
    wanted = parse_filters(list(filters))
    rows = [r for d in dirs for r in map(run_row, list_runs(d)) if _matches(r, wanted)]
    if sort:
        numeric = sort in numeric_columns()
        desc = numeric if descending is None else descending
        key = _number if numeric else (lambda v: None if v is None else _cell(v))
        present = [r for r in rows if key(r.get(sort)) is not None]
        present.sort(key=lambda r: key(r[sort]), reverse=desc)
        rows = present + [r for r in rows if key(r.get(sort)) is None]  # unknown or unreadable values last
    return rows[:top] if top else rows


def changed_columns(rows: list[dict], among=None) -> list[str]:
    """Columns whose value differs between rows (`name` and `run` always kept)."""
    cols = among if among is not None else all_columns()
    return [c for c in cols if c in ("name", "run") or len({json.dumps(r.get(c), default=str) for r in rows}) > 1]


def setting_columns() -> list[str]:
    """The columns that describe how a run was made (its config and its data), not how it scored."""
    return list(config_columns()) + ["train_hash", "valid_hash"]


def default_columns(rows: list[dict]) -> list[str]:
    """What a terminal shows: the columns that matter, the settings that differ, and `run` only where
    it adds something (a named run); empty columns dropped."""
    differ = set(changed_columns(rows, list(SETTINGS) + setting_columns()))
    # a reading kind is shown where scored runs were read both ways (a mixed column is not like for like)
    differ |= {c for c in ("test_tta", "rob_tta") if len({r.get(c) for r in rows} - {None}) > 1}
    named = any(r.get("name") != r.get("run") for r in rows)
    keep = [c for c in all_columns() if (c in MATTER or c in differ) and (c != "run" or named)]
    return [c for c in keep if c == "name" or any(r.get(c) not in (None, []) for r in rows)]


def wide_columns() -> list[str]:
    """`--wide` and markdown: every column but the file-only layout fields (`--columns` reaches those)."""
    return [c for c in all_columns() if not c.startswith("render.")]


# --- grouping over seeds ------------------------------------------------------------------------
def group_keys(rows: list[dict], by: list[str] | None = None) -> list[str]:
    """The columns a group shares: `by`, or every setting that differs between the rows except `seed`."""
    if by:
        return by
    return [c for c in changed_columns(rows, setting_columns()) if c not in ("name", "run", "seed")]


def group_rows(rows: list[dict], by: list[str] | None = None) -> tuple[list[dict], list[str], list[str]]:
    """Finished runs grouped by `group_keys`: per group its key values, `n`, the `seeds`, and for every
    figure `<figure>_mean` and `<figure>_std` (sample standard deviation; None for one run).
    Returns (groups, key columns, figure names)."""
    done = [r for r in rows if r.get("status") == "finished"]
    keys = group_keys(done, by)
    groups, figures = _split(done, keys)
    out = []
    for members in groups.values():
        g = {k: members[0].get(k) for k in keys}
        g.update(n=len(members), seeds=sorted({m.get("seed") for m in members}, key=str))
        for m in figures:
            g[f"{m}_mean"], g[f"{m}_std"] = mean_std([_number(r.get(m)) for r in members])
        out.append(g)
    return out, keys, figures


def _split(done: list[dict], keys: list[str]) -> tuple[dict[str, list[dict]], list[str]]:
    """Finished rows by their `keys` values (a JSON list of them as the key), and the figures any row has."""
    groups: dict[str, list[dict]] = {}
    for r in done:
        groups.setdefault(json.dumps([r.get(k) for k in keys], default=str), []).append(r)
    figures = [m for m in list(GROUP_METRICS) + robustness_columns()[1:]
               if any(_number(r.get(m)) is not None for r in done)]
    return groups, figures


def group_figures(spec: str | None) -> list[str] | None:
    """`--columns` of a grouped table: the figures it averages (or differences), checked."""
    if spec is None:
        return None
    known = list(GROUP_METRICS) + robustness_columns()
    cols = parse_columns(spec)
    wrong = [c for c in cols if c not in known]
    if wrong:
        raise ConfigError(f"--columns with --group-by / --baseline takes figures ({', '.join(GROUP_METRICS)}, "
                          f"rob_<set>); got {wrong[0]!r}")
    return cols


def mean_std(values: list) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (n - 1) of the known values; std None below two values."""
    xs = [v for v in values if v is not None]
    if not xs:
        return None, None
    mean = sum(xs) / len(xs)
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else None
    return mean, std


def format_groups(groups: list[dict], keys: list[str], figures: list[str], fmt: str = "table",
                  width: int | None = None, shown: list[str] | None = None) -> str:
    """Groups as text: `mean ± std` cells in a table or markdown (of `shown`, default: `GROUP_METRICS`);
    `_mean` / `_std` columns of every figure in CSV and JSON."""
    if fmt in ("csv", "json"):
        cols = keys + ["n", "seeds"] + [f"{m}_{s}" for m in figures for s in ("mean", "std")]
        return format_rows(groups, fmt, cols)
    shown = shown or [m for m in figures if m in GROUP_METRICS]  # each battery set: --columns, CSV, JSON
    cells = [{**{k: g[k] for k in keys}, "n": g["n"], "seeds": ",".join(map(str, g["seeds"])),
              **{m: _pm(g[f"{m}_mean"], g[f"{m}_std"]) for m in shown}} for g in groups]
    return format_rows(cells, fmt, keys + ["n", "seeds"] + shown, width=width, title=f"{len(groups)} group(s)")


def _pm(mean, std, signed: bool = False) -> str:
    if mean is None:
        return "-"
    m = f"{mean:+.4f}" if signed else f"{mean:.4f}"
    return f"{m} ± {std:.4f}" if std is not None else m


# --- paired seeds -------------------------------------------------------------------------------
# Two groups' means differ by the seed-to-seed spread as well as by the change. The difference run for run,
# each run against the baseline's run of the same seed on the same kind of machine and precision, leaves most
# of that spread out (a seed fixes the weights' start and the batches; a CPU run repeats bit for bit). Neither
# fastai nor the libraries here pair runs, hence these few lines.
PAIR_ON = ("seed", "device", "precision")  # the seed first


def parse_baseline(spec: str) -> list[tuple[str, str]]:
    """`COLUMN=VALUE[,COLUMN=VALUE]` -> checked (column, value) pairs; a comma not before `COLUMN=` stays in
    the value (`device=cpu (AMD EPYC, AVX2)`)."""
    return parse_filters(re.split(r",(?=\s*[\w.-]+=)", spec), "--baseline")


def paired_rows(rows: list[dict], baseline: list[tuple[str, str]], by: list[str] | None = None
                ) -> tuple[list[dict], list[str], list[str], dict]:
    """Every group but the baseline's (the one group whose key values `baseline` names), each against the
    baseline run for run: runs pair when they share `PAIR_ON` (runs repeated on one seed and machine count as
    their mean). Per group: its key values, `pairs`, the paired `seeds`, and for every figure the differences'
    `<figure>_diff_mean`, `_diff_std` (sample; None below two pairs), `_diff_min` and `_diff_max`.
    Returns (groups, key columns, figure names, the baseline's key values)."""
    done = [r for r in rows if r.get("status") == "finished"]
    keys = by or [k for k in group_keys(done) if k not in PAIR_ON]  # pairs form within one machine
    for col, _ in baseline:
        if col not in keys:
            raise ConfigError(f"--baseline {col}: not a column the runs are grouped by ({', '.join(keys) or 'none'})")
    groups, figures = _split(done, keys)
    named = [g for g, members in groups.items() if _matches(members[0], baseline)]
    spec = ",".join(f"{c}={v}" for c, v in baseline)
    if len(named) != 1:
        values = "; ".join(",".join(f"{k}={_cell(v)}" for k, v in zip(keys, json.loads(g))) for g in groups)
        raise ConfigError(f"--baseline {spec} matches {len(named)} groups, not one (groups: {values or 'none'})")

    def by_pair(members):  # (seed, device, precision) -> figure -> the mean of its runs' values
        cells: dict[tuple, list[dict]] = {}
        for r in members:
            cells.setdefault((r.get("seed"),) + tuple(_cell(r.get(k)) for k in PAIR_ON[1:]), []).append(r)
        return {k: {m: mean_std([_number(r.get(m)) for r in rs])[0] for m in figures} for k, rs in cells.items()}

    base = by_pair(groups[named[0]])
    out = []
    for g, members in groups.items():
        if g == named[0]:
            continue
        mine = by_pair(members)
        shared = [k for k in mine if k in base]
        row = {k: members[0].get(k) for k in keys}
        row.update(pairs=len(shared), seeds=sorted({k[0] for k in shared}, key=str))
        for m in figures:
            diffs = [mine[k][m] - base[k][m] for k in shared if mine[k][m] is not None and base[k][m] is not None]
            row[f"{m}_diff_mean"], row[f"{m}_diff_std"] = mean_std(diffs)
            row[f"{m}_diff_min"], row[f"{m}_diff_max"] = (min(diffs), max(diffs)) if diffs else (None, None)
        out.append(row)
    return out, keys, figures, dict(zip(keys, json.loads(named[0])))


def format_paired(groups: list[dict], keys: list[str], figures: list[str], baseline: dict, fmt: str = "table",
                  width: int | None = None, shown: list[str] | None = None) -> str:
    """Paired differences as text: `mean ± std` of the differences (signed) in a table or markdown, every
    `_diff_mean` / `_diff_std` / `_diff_min` / `_diff_max` column in CSV and JSON."""
    if fmt in ("csv", "json"):
        cols = keys + ["pairs", "seeds"] + [f"{m}_diff_{s}" for m in figures for s in ("mean", "std", "min", "max")]
        return format_rows(groups, fmt, cols)
    shown = shown or [m for m in figures if m in GROUP_METRICS]  # each battery set: --columns, CSV, JSON
    cells = [{**{k: g[k] for k in keys}, "pairs": g["pairs"], "seeds": ",".join(map(str, g["seeds"])),
              **{m: _pm(g.get(f"{m}_diff_mean"), g.get(f"{m}_diff_std"), signed=True) for m in shown}} for g in groups]
    against = ",".join(f"{k}={_cell(v)}" for k, v in baseline.items())
    return format_rows(cells, fmt, keys + ["pairs", "seeds"] + shown, width=width,
                       title=f"minus {against}, run for run (same seed, device, precision): mean ± std of the differences")


# --- output -------------------------------------------------------------------------------------
def _cell(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list):
        return ",".join(map(str, v)) or "-"
    return str(v)


def format_rows(rows: list[dict], fmt: str = "table", columns: list[str] | None = None, width: int | None = None,
           title: str | None = None) -> str:
    """Rows as text: a rich table (fitted to `width`, default: the terminal's), GitHub markdown, CSV or JSON.
    Default columns: the table's `default_columns`, markdown's `wide_columns`, every column in CSV / JSON."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    cols = columns or {"table": default_columns, "md": lambda _: wide_columns()}.get(fmt, lambda _: all_columns())(rows)
    if fmt == "json":
        return json.dumps([{c: r.get(c) for c in cols} for r in rows], indent=2, default=str)
    if fmt == "csv":
        return csv_text([{c: _cell(r.get(c)) if isinstance(r.get(c), list) else r.get(c) for c in cols} for r in rows],
                        cols)
    if fmt == "md":
        lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(_cell(r.get(c)) for c in cols) + " |" for r in rows]
        return "\n".join(lines)
    from rich.console import Console
    from rich.table import Table
    from rich import box
    table = Table(title=title or f"{len(rows)} run(s)", box=box.SIMPLE_HEAD)
    for c in cols:
        table.add_column(c, justify="right" if c in numeric_columns() else "left", overflow="fold")
    for r in rows:  # a run without a name would show its folder twice
        table.add_row(*("-" if c == "name" and r.get("name") == r.get("run") and "run" in cols else _cell(r.get(c))
                        for c in cols))
    import shutil
    console = Console(width=width or shutil.get_terminal_size((120, 24)).columns, record=True, file=io.StringIO())
    console.print(table)
    return "\n".join(line.rstrip() for line in console.export_text().splitlines()) + "\n"


def plot(rows: list[dict], runs_dir: str | Path | None, out: str | Path) -> Path:
    """Accuracy curves of the selected runs on one figure."""
    from .plots import plot_runs
    curves = {}
    for r in rows:
        try:
            curves[r["name"]] = RunDir(Path(r.get("runs_dir") or runs_dir) / r["run"]).metrics()
        except MlnsError as e:  # a hand-edited metrics.csv: that run has no curve, the others are drawn
            log.info("no curve for %s: %s", r["run"], e)
    return plot_runs(curves, out)
