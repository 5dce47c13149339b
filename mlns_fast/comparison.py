"""Comparing runs: rows from run folders, filter / sort / top, and table, markdown, CSV or JSON output.

Never crashes on a partial or corrupt run folder: such a run becomes a row with status
`corrupt` (or whatever its summary says) and empty figures.
"""
from __future__ import annotations

import io
import json
import logging
from pathlib import Path

from .errors import ConfigError, MlnsError
from .files import csv_text
from .runs import NUMERIC_COLUMNS as NUMERIC, SUMMARY_COLUMNS as COLUMNS, RunDir, list_runs

log = logging.getLogger(__name__)
FORMATS = ("table", "md", "csv", "json")
# The terminal table's columns: these always, the settings only where runs differ (`--wide`: all).
MATTER = ("name", "final_acc", "final_acc_ema", "minutes", "status", "run")
SETTINGS = ("arch", "grid", "head", "data", "ema", "epochs", "params", "weights", "study", "trial")


def run_row(run: RunDir) -> dict:
    """One comparison row; a run whose files cannot be read is flagged, not fatal."""
    row = {c: None for c in COLUMNS}
    row["run"] = run.name
    try:
        s = run.summary()
        row.update({c: s.get(c) for c in COLUMNS if c in s})
        row["run"] = run.name
        row["status"] = run.status(s)  # `running` with no live process becomes `stale`
    except MlnsError:
        row["status"] = "corrupt" if (run.path / "summary.json").exists() else "no-summary"
        try:
            cfg = run.config()
            row.update(name=cfg.name or run.name, arch=cfg.model.arch, head=cfg.model.head, data=cfg.data.data,
                       ema=cfg.train.ema, epochs=cfg.train.epochs)
        except MlnsError:
            pass
    row["name"] = row["name"] or run.name
    return row


def parse_filters(filters: list[str]) -> list[tuple[str, str]]:
    out = []
    for f in filters:
        key, sep, value = f.partition("=")
        if not sep or key not in COLUMNS:
            raise ConfigError(f"--filter {f!r}: expected COLUMN=VALUE with COLUMN one of {', '.join(COLUMNS)}")
        out.append((key, value))
    return out


def _matches(row: dict, filters) -> bool:
    return all(str(row.get(k)) == v or _num_eq(row.get(k), v) for k, v in filters)


def _num_eq(a, b: str) -> bool:
    try:
        return a is not None and float(a) == float(b)
    except (TypeError, ValueError):
        return False


def select_rows(runs_dir: str | Path, sort: str | None = None, top: int | None = None,
                filters: list[str] = (), descending: bool | None = None) -> list[dict]:
    """Rows of every run in `runs_dir`, filtered (`col=value`, all must hold), sorted, cut to `top`."""
    if sort is not None and sort not in COLUMNS:
        raise ConfigError(f"--sort {sort!r}: unknown column (one of {', '.join(COLUMNS)})")
    if top is not None and top <= 0:
        raise ConfigError(f"--top must be > 0, got {top}")
    rows = [r for r in map(run_row, list_runs(runs_dir)) if _matches(r, parse_filters(list(filters)))]
    if sort:
        desc = sort in NUMERIC if descending is None else descending
        key = _number if sort in NUMERIC else (lambda v: None if v is None else str(v))
        present = [r for r in rows if key(r.get(sort)) is not None]
        present.sort(key=lambda r: key(r[sort]), reverse=desc)
        rows = present + [r for r in rows if key(r.get(sort)) is None]  # unknown or unreadable values last
    return rows[:top] if top else rows


def _number(v) -> float | None:
    """A sortable number, or None for a missing or non-numeric value (a hand-edited summary)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if v == v else None  # NaN sorts nowhere


def changed_columns(rows: list[dict]) -> list[str]:
    """Columns whose value differs between rows (`name` and `run` always kept)."""
    return [c for c in COLUMNS if c in ("name", "run") or len({json.dumps(r.get(c)) for r in rows}) > 1]


def default_columns(rows: list[dict]) -> list[str]:
    """What a terminal shows: the columns that matter, those that differ, and `run` only where it adds
    something (a named run); empty columns dropped."""
    differ = set(changed_columns(rows)) & set(SETTINGS)
    named = any(r.get("name") != r.get("run") for r in rows)
    keep = [c for c in COLUMNS if (c in MATTER or c in differ) and (c != "run" or named)]
    return [c for c in keep if c == "name" or any(r.get(c) is not None for r in rows)]


def _cell(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def format_rows(rows: list[dict], fmt: str = "table", columns: list[str] | None = None, width: int | None = None) -> str:
    """Rows as text: a rich table (fitted to `width`, default: the terminal's), GitHub markdown, CSV or JSON."""
    cols = columns or COLUMNS
    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    if fmt == "json":
        return json.dumps([{c: r.get(c) for c in cols} for r in rows], indent=2)
    if fmt == "csv":
        return csv_text(rows, cols)
    if fmt == "md":
        lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(_cell(r.get(c)) for c in cols) + " |" for r in rows]
        return "\n".join(lines)
    from rich.console import Console
    from rich.table import Table
    from rich import box
    table = Table(title=f"{len(rows)} run(s)", box=box.SIMPLE_HEAD)
    for c in cols:
        table.add_column(c, justify="right" if c in NUMERIC else "left", overflow="fold")
    for r in rows:  # a run without a name would show its folder twice
        table.add_row(*("-" if c == "name" and r.get("name") == r.get("run") and "run" in cols else _cell(r.get(c))
                        for c in cols))
    import shutil
    console = Console(width=width or shutil.get_terminal_size((120, 24)).columns, record=True, file=io.StringIO())
    console.print(table)
    return console.export_text()


def plot(rows: list[dict], runs_dir: str | Path, out: str | Path) -> Path:
    """Accuracy curves of the selected runs on one figure."""
    from .plots import plot_runs
    curves = {}
    for r in rows:
        try:
            curves[r["name"]] = RunDir(Path(runs_dir) / r["run"]).metrics()
        except MlnsError as e:  # a hand-edited metrics.csv: that run has no curve, the others are drawn
            log.info("no curve for %s: %s", r["run"], e)
    return plot_runs(curves, out)
