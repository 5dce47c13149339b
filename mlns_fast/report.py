"""experiments/RESULTS.md from suite files and their finished runs: tables, budgets, commands, figures."""
from __future__ import annotations

from pathlib import Path

from .comparison import format_rows, run_row
from .config import read_toml
from .files import atomic_write
from .runs import REPORT_COLUMNS, RunDir
from .suite import suite_notes, suite_runs


def suite_section(path: str | Path, runs_dir: str | Path, figures: Path | None = None) -> str:
    """Markdown for one suite: its table (with the seed's figure where the suite names one) and how to rerun it."""
    title = read_toml(path).get("title", Path(path).stem)
    notes = suite_notes(path)
    rows, missing = [], []
    for cfg, folder in suite_runs(path, runs_dir):
        if folder is None:
            missing.append(cfg.name)
            continue
        row = run_row(RunDir(Path(runs_dir) / folder))
        row["name"] = cfg.name
        row["seed_result"] = notes.get(cfg.name, {}).get("seed_result", "")
        row["note"] = notes.get(cfg.name, {}).get("note", "")
        rows.append(row)
    cols = REPORT_COLUMNS + (["seed_result"] if any(r["seed_result"] for r in rows) else []) + \
        (["note"] if any(r["note"] for r in rows) else [])
    out = [f"### {title}", "", f"`mlns-fast suite {path}` (valid = demo valid split; accuracies are sum accuracy)", ""]
    out.append(format_rows(rows, "md", cols) if rows else "_no finished runs yet_")
    if missing:
        out += ["", f"Not run yet: {', '.join(missing)}."]
    if figures is not None and rows:
        from .comparison import plot
        png = plot(rows, runs_dir, figures / f"{Path(path).stem}_curves.png")
        out += ["", f"![{title}]({png.relative_to(figures.parent)})"]
        if len({r["arch"] for r in rows}) >= 3:  # a model-size comparison
            from .plots import plot_size
            png = plot_size(rows, figures / f"{Path(path).stem}_size.png")
            out += ["", f"![accuracy vs model size]({png.relative_to(figures.parent)})"]
    return "\n".join(out) + "\n"


def write_report(suites: list[str | Path], runs_dir: str | Path, out: str | Path, intro: str = "") -> Path:
    """Write the results report: an intro, then one section per suite."""
    from .outputs import check_output
    out = check_output(out, example="RESULTS.md")  # both checked before any work
    figures = check_output(out.parent / "figures", folder=True)
    parts = ["# Results", "", intro.strip(), ""] if intro else ["# Results", ""]
    parts += [suite_section(s, runs_dir, figures) for s in suites]
    atomic_write(out, "\n".join(parts))
    return out
