"""The trackers' fastai callbacks: MLflow through MlflowClient, TensorBoard through fastai's own callback."""
from __future__ import annotations

from pathlib import Path

from fastai.callback.tensorboard import TensorBoardCallback

from ..callbacks import CompletedEpochs, Reports, RunTracker
from ..config import RunConfig
from ..runs import METRIC_COLUMNS
from .client import END_STATUS, FLUSH_STEPS, RUN_FILES, SUMMARY_METRICS, Guard, metric, now_ms, open_run, resolve_uri


class MLflowTracker(CompletedEpochs, Reports):
    """Logs a training run to MLflow through `MlflowClient` (the package docstring says what); reports
    the MLflow run (`mlflow`: store, run id, experiment) to summary.json.

    Ordered after RunTracker, so an epoch reaches MLflow after its row and checkpoint are on disk.
    `run_valid = False`: the per-step metrics are the training batches'."""
    order = RunTracker.order + 1
    run_valid = False

    def __init__(self, client, run_id: str, guard: Guard, record: dict, weights: bool = False):
        self.client, self.run_id, self.guard, self.record, self.weights = client, run_id, guard, record, weights
        self.pending = []

    @classmethod
    def start(cls, cfg: RunConfig, folder, runs_dir, info: dict) -> "MLflowTracker | None":
        """Create the MLflow run (or reopen the one a resumed run logged to), log its params and tags
        (`info`: the run's summary facts, for the tags); None, after one warning, when the store cannot
        be reached."""
        from mlflow import MlflowClient
        uri = resolve_uri(cfg.track.tracking_uri, runs_dir)
        guard = Guard(f"MLflow tracking at {uri}")
        client = MlflowClient(uri)
        run_id = guard(open_run, client, cfg, folder, runs_dir, info, uri)
        if run_id is None:
            return None
        record = {"tracking_uri": uri, "run_id": run_id, "experiment": cfg.track.experiment}
        return cls(client, run_id, guard, record, cfg.track.track_weights)

    def summary(self) -> dict:
        return {"mlflow": self.record}

    def after_batch(self):
        if not self.guard.on:
            return
        ts, step = now_ms(), self.learn.train_iter
        # the loss stays a device tensor until the flush: reading it here would sync the device every batch
        self.pending += [("step/train_loss", self.learn.smooth_loss.detach(), ts, step),
                         ("step/lr", self.opt.hypers[-1]["lr"], ts, step)]
        if len(self.pending) >= 2 * FLUSH_STEPS:
            self.flush()

    def after_epoch(self):
        vals = self.completed_metrics()
        if vals is not None:
            vals.update(lr=self.opt.hypers[-1]["lr"])
            ts = now_ms()
            self.pending += [(c, vals.get(c), ts, self.epoch) for c in METRIC_COLUMNS if c != "epoch"]
        self.flush()

    def flush(self):
        from mlflow.utils.validation import MAX_METRICS_PER_BATCH
        batch = [m for m in (metric(*p) for p in self.pending) if m is not None]
        self.pending = []
        for i in range(0, len(batch), MAX_METRICS_PER_BATCH):
            self.guard(self.client.log_batch, self.run_id, metrics=batch[i:i + MAX_METRICS_PER_BATCH])

    def finish(self, summary: dict, folder) -> None:
        """After the run folder's final files: summary figures, the files as artifacts, the end status."""
        self.flush()
        ts = now_ms()
        final = [metric(k, summary.get(k), ts, 0) for k in SUMMARY_METRICS]
        self.guard(self.client.log_batch, self.run_id, metrics=[m for m in final if m is not None])
        status = summary.get("status", "failed")
        self.guard(self.client.set_tag, self.run_id, "status", summary.get("stop_reason", status))
        names = list(RUN_FILES) + (["model.safetensors", "model_ema.safetensors"] if self.weights else [])
        for name in names:
            if (Path(folder.path) / name).is_file():
                self.guard(self.client.log_artifact, self.run_id, str(Path(folder.path) / name))
        self.guard(self.client.set_terminated, self.run_id, END_STATUS.get(status, "FAILED"))


class TensorBoardTracker(TensorBoardCallback):
    """fastai's TensorBoardCallback writing into RUN/tensorboard, plus the resolved config as text.

    No graph tracing and no prediction images (both need fastai's own data pipeline); `run_valid =
    False` because its `after_batch` would also log the train loss at every validation batch."""
    run_valid = False

    def __init__(self, log_dir: Path, config_toml: str):
        super().__init__(log_dir=str(log_dir), trace_model=False, log_preds=False)
        self.config_toml = config_toml

    def before_fit(self):
        super().before_fit()
        if self.run:
            self.writer.add_text("config", "```toml\n" + self.config_toml + "```", self.train_iter)

    def after_batch(self):
        # fastai's own logs every optimizer hyper; torch's AdamW groups (behind OptimWrapper) hold None ones
        self.writer.add_scalar("train_loss", self.smooth_loss, self.train_iter)
        for i, h in enumerate(self.opt.hypers):
            for k, v in h.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    self.writer.add_scalar(f"{k}_{i}", v, self.train_iter)

    def finish(self, summary: dict, folder) -> None:
        """Nothing left to write: fastai closed the event file after fit."""


