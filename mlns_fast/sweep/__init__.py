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

The parts: `spec` (the sweep file), `storage` (journal file or database, the study in it),
`recovery` (trials of dead workers), `trial` (one trial), `workers` (worker processes),
`results` (trials.csv, best.toml, plots, the printed report), `command` (`run_sweep`, dry run).
"""
from .command import SweepPlan, plan, run_sweep
from .results import SweepResult, write_results
from .spec import Param, StudySpec, Sweep, load_sweep
from .storage import default_storage, open_storage, study_folder
from .trial import PruneTrial, TrialRunner
from .workers import work

__all__ = ["Param", "PruneTrial", "StudySpec", "Sweep", "SweepPlan", "SweepResult", "TrialRunner",
           "default_storage", "load_sweep", "open_storage", "plan", "run_sweep", "study_folder", "work",
           "write_results"]
