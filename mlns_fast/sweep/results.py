"""What a sweep leaves for a person: trials.csv, best.toml and Optuna's plots in the study folder,
and the lines the command prints."""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

from optuna.trial import TrialState

from ..config import write_toml
from ..errors import MlnsError
from ..files import atomic_write, csv_text
from ..runs import RunDir
from .spec import Sweep, format_params
from .storage import shown, study_folder

log = logging.getLogger(__name__)

PLOTS = {"optimization_history.png": "plot_optimization_history",
         "param_importances.png": "plot_param_importances",
         "parallel_coordinate.png": "plot_parallel_coordinate"}


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
        from ..comparison import format_rows
        states = [r["state"] for r in self.rows]
        counts = ", ".join(f"{states.count(s)} {s}" for s in dict.fromkeys(states))
        out = [f"study {self.study} ({self.storage}): {len(self.rows)} trial(s): {counts or 'none yet'}"]
        if self.rows:
            out.append(format_rows(self.rows, "table", list(self.rows[0])).rstrip("\n"))
        if self.best:
            b = self.best
            out += [f"best: trial {b['trial']}, {self.metric} {b['value']:.4f} ({b['run']}): "
                    + format_params(b["params"]), f"train it again: {b['again']}"]
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
    atomic_write(path, csv_text(rows, list(rows[0]) if rows else ["trial", "state", "value"]))
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
