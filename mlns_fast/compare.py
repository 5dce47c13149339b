"""Comparing runs: rows from run folders, filter / sort / top, and table, markdown, CSV or JSON output.

Never crashes on a partial or corrupt run folder: such a run becomes a row with status
`corrupt` (or whatever its summary says) and empty figures.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from .errors import ConfigError, MlnsError
from .runs import RunDir, list_runs

COLUMNS = ["name", "arch", "head", "data", "ema", "epochs", "params", "minutes",
           "best_acc", "final_acc", "best_acc_ema", "final_acc_ema", "status", "run"]
NUMERIC = {"ema", "epochs", "params", "minutes", "best_acc", "final_acc", "best_acc_ema", "final_acc_ema"}
FORMATS = ("table", "md", "csv", "json")


def run_row(run: RunDir) -> dict:
    """One comparison row; a run whose files cannot be read is flagged, not fatal."""
    row = {c: None for c in COLUMNS}
    row["run"] = run.name
    try:
        s = run.summary()
        row.update({c: s.get(c) for c in COLUMNS if c in s})
        row["run"] = run.name
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
        present = [r for r in rows if r.get(sort) is not None]
        present.sort(key=lambda r: r[sort], reverse=desc)
        rows = present + [r for r in rows if r.get(sort) is None]
    return rows[:top] if top else rows


def changed_columns(rows: list[dict]) -> list[str]:
    """Columns whose value differs between rows (`name` and `run` always kept)."""
    return [c for c in COLUMNS if c in ("name", "run") or len({json.dumps(r.get(c)) for r in rows}) > 1]


def _cell(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def render(rows: list[dict], fmt: str = "table", columns: list[str] | None = None) -> str:
    """Rows as text: a rich table, GitHub markdown, CSV or JSON (one list)."""
    cols = columns or COLUMNS
    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    if fmt == "json":
        return json.dumps([{c: r.get(c) for c in cols} for r in rows], indent=2)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
        return buf.getvalue()
    if fmt == "md":
        lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(_cell(r.get(c)) for c in cols) + " |" for r in rows]
        return "\n".join(lines)
    from rich.console import Console
    from rich.table import Table
    table = Table(title=f"{len(rows)} run(s)")
    for c in cols:
        table.add_column(c, justify="right" if c in NUMERIC else "left")
    for r in rows:
        table.add_row(*(_cell(r.get(c)) for c in cols))
    import sys
    width = None if sys.stdout.isatty() else 250  # piped output: no wrapping or cut cells
    console = Console(width=width, record=True, file=io.StringIO())
    console.print(table)
    return console.export_text()


def plot(rows: list[dict], runs_dir: str | Path, out: str | Path) -> Path:
    """Accuracy curves of the selected runs on one figure."""
    from .plots import plot_runs
    curves = {r["name"]: RunDir(Path(runs_dir) / r["run"]).metrics() for r in rows}
    return plot_runs(curves, out)
