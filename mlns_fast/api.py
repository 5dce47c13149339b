"""The Python API for notebooks: the functions behind the CLI, with the CLI's names and defaults.

    import mlns_fast as mf
    summary = mf.train(epochs=1, name="nb")          # flags as keywords; a TOML file as `config=`
    run = mf.load_run("nb")                          # a run folder by path, folder name, run name or "latest"
    mf.evaluate(run)["sum_accuracy"]                 # the demo test split, or `data="DIR"` / a Samples
    mf.predict(run, ["a.png", "stack.npy"])          # one dict per image
    mf.compare()                                     # one dict per run in experiments/runs

Each is a thin wrapper over a library function (named in its docstring) that resolves what a CLI
user would type -- run references, data specs, flag names -- the way the CLI does.
"""
from __future__ import annotations

from pathlib import Path

from .runs import DEFAULT_RUNS_DIR, DEFAULT_TTA, RunDir, resolve_run


def _run(run: str | Path | RunDir, runs_dir) -> RunDir:
    return run if isinstance(run, RunDir) else resolve_run(str(run), runs_dir)


def train(config: str | Path | None = None, runs_dir: str | Path = DEFAULT_RUNS_DIR, quiet: bool = True,
          resume: str | None = None, **flags) -> dict:
    """Train one run, as `mlns-fast train`: `flags` are the CLI's option names with underscores
    (`epochs=3`, `arch="resnet18"`, `real=["data0.npy:lab0.npy"]`); returns the run's summary.json as a
    dict (its folder: `runs_dir / summary["run"]`). `mlns_fast.training.train` takes a resolved RunConfig."""
    from .config import resolve_config
    from .training import train as _train
    flags = {k: tuple(v) if isinstance(v, list) else v for k, v in flags.items()}
    cfg = None if resume else resolve_config(str(config) if config else None, **flags)
    return _train(cfg, runs_dir, quiet=quiet, resume=resume)


def lr_find(out: str | Path, config: str | Path | None = None, num_it: int = 100, warmup: int = 0,
            **flags) -> dict:
    """fastai's learning-rate finder on a run config, as `mlns-fast lr-find`: the suggestions, the
    curve's warnings, and a PNG at `out` (the curve as CSV beside it). See `mlns_fast.training.lr_find`."""
    from .config import resolve_config
    from .training import lr_find as _lr_find
    cfg = resolve_config(str(config) if config else None, **flags)
    return _lr_find(cfg, out, quiet=True, num_it=num_it, warmup=warmup)


def load_run(run: str | Path = "latest", runs_dir: str | Path = DEFAULT_RUNS_DIR) -> RunDir:
    """A run folder by path, folder name, run name (newest wins) or `latest`: `.config()`,
    `.summary()`, `.metrics()` read its files. See `mlns_fast.runs.resolve_run`."""
    return _run(run, runs_dir)


def evaluate(run: str | Path | RunDir = "latest", data=None, weights: str = "best", tta: bool = DEFAULT_TTA,
             runs_dir: str | Path = DEFAULT_RUNS_DIR) -> dict:
    """Sum (and digit) accuracy and calibration of a run's weights on `data`: None (the demo test
    split), a data spec as for `--real` (`IMAGES.npy:LABELS.npy`, `FILE.npz`, `DIR`) or a Samples;
    writes the confusion and mistakes PNGs into the run folder. See `mlns_fast.evaluation.evaluate`."""
    from .data.sources import load_source
    from .evaluation import evaluate as _evaluate
    r = _run(run, runs_dir)
    samples = load_source(str(data), r.config().size) if isinstance(data, (str, Path)) else data
    return _evaluate(r, samples, weights, tta)


def predict(run: str | Path | RunDir, inputs, weights: str = "best", tta: bool = DEFAULT_TTA, backend: str = "torch",
            runs_dir: str | Path = DEFAULT_RUNS_DIR) -> list[dict]:
    """A run's reading of image files and .npy stacks: per image its name, sum, confidence and digits.
    See `mlns_fast.evaluation.predict`."""
    from .evaluation import predict as _predict
    paths = [str(inputs)] if isinstance(inputs, (str, Path)) else [str(p) for p in inputs]
    return _predict(_run(run, runs_dir), paths, weights, tta, backend)


def compare(runs_dir: str | Path = DEFAULT_RUNS_DIR, sort: str | None = None, top: int | None = None,
            filters: list[str] = ()) -> list[dict]:
    """One row (a dict) per run: its settings, accuracies and status, as `mlns-fast compare --format json`.
    See `mlns_fast.comparison.select_rows`."""
    from .comparison import select_rows
    return select_rows(runs_dir, sort=sort, top=top, filters=list(filters))
