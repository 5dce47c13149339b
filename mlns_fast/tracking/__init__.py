"""Live tracking beside the run folder: MLflow (`--track mlflow`) and TensorBoard (`--track tensorboard`).

The run folder stays the source of truth; a tracker is a live view of it. Each engine is a fastai
Callback written as glue around the engine's own client: `MlflowClient` for MLflow, fastai's
`TensorBoardCallback` (torch's SummaryWriter) for TensorBoard.

    MLflow       params: the flattened resolved config (`train.lr`, `model.arch`, ...)
                 tags: git commit, arch, head, data mode and sources, run folder, study / trial,
                       `--tag` labels, `--note` (MLflow's run description)
                 per step: step/train_loss (fastai's smoothed loss), step/lr
                 per epoch (step = epoch): the metrics.csv columns (train_loss, valid_loss, acc,
                       valid_loss_ema, acc_ema, lr, seconds)
                 at the end: best/final accuracies, config.toml, summary.json, metrics.csv,
                       curves.png (and the weights with --track-weights); `evaluate` and
                       `robustness` add their figures and files to the same run later
                 sweeps: the study is a parent run (its settings as params, the best value and
                       run at the end), each trial a child run in the same experiment
    TensorBoard  RUN/tensorboard/: fastai's per-step train_loss and optimizer hypers, per-epoch
                 valid loss and accuracy raw and EMA; the resolved config as text

A tracker that fails (server down, refusing, gone mid-run) logs one warning and goes quiet; training
goes on. The MLflow run's id and store are recorded in summary.json (`mlflow`), so a resumed run, and
`evaluate` / `robustness`, log into the same MLflow run.
"""
from __future__ import annotations

from pathlib import Path

from .client import close_study_run, log_results, open_study_run, resolve_uri

__all__ = ["close_study_run", "create_trackers", "log_results", "open_study_run", "resolve_uri"]


def create_trackers(cfg, folder, runs_dir, info: dict) -> list:
    """The callbacks of the engines `cfg.track.track` names (`info`: the run's summary facts, for tags)."""
    from ..config import write_toml
    from .callbacks import MLflowTracker, TensorBoardTracker  # fastai and TensorBoard: only when tracking
    out = []
    if "tensorboard" in cfg.track.track:
        out.append(TensorBoardTracker(Path(folder.path) / "tensorboard", write_toml(cfg)))
    if "mlflow" in cfg.track.track:
        tracker = MLflowTracker.start(cfg, folder, runs_dir, info)
        out += [tracker] if tracker else []
    return out
