"""MLflow glue that needs no fastai: the guarded client calls, the store, params and tags, the run's
recorded ids, and `log_results` for `evaluate` / `robustness`."""
from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from pathlib import Path

from ..config import SECTIONS, UNDIGESTED, RunConfig
from ..errors import RunError

log = logging.getLogger(__name__)

# A server that is down should cost seconds, not MLflow's default of 7 retries with exponential
# backoff (minutes per call). Applied around our calls only, and only where the user set nothing.
HTTP_LIMITS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
               "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
FLUSH_STEPS = 100  # per-step metrics are sent in one batch every this many steps (and at each epoch's end)
END_STATUS = {"finished": "FINISHED", "interrupted": "KILLED", "pruned": "KILLED"}  # else FAILED
SUMMARY_METRICS = ("best_acc", "final_acc", "best_acc_ema", "final_acc_ema", "minutes")
RUN_FILES = ("config.toml", "summary.json", "metrics.csv", "curves.png")


@contextlib.contextmanager
def bounded_http():
    """MLflow's HTTP retry limits set to HTTP_LIMITS for the duration (user settings win), and urllib3's
    per-retry warnings held back (the Guard's one line replaces them); both restored afterwards."""
    added = {k: v for k, v in HTTP_LIMITS.items() if k not in os.environ}
    retries = logging.getLogger("urllib3.connectionpool")
    level = retries.level
    os.environ.update(added)
    retries.setLevel(logging.ERROR)
    try:
        yield
    finally:
        retries.setLevel(level)
        for k in added:
            os.environ.pop(k, None)


class Guard:
    """Calls into one tracking engine. The first failure logs one warning and switches the engine off,
    so a dead server costs one bounded wait and one line, never the training run."""

    def __init__(self, what: str):
        self.what, self.on = what, True

    def __call__(self, fn, *args, **kwargs):
        if not self.on:
            return None
        try:
            with bounded_http():
                return fn(*args, **kwargs)
        except Exception as e:  # any engine failure: network, refusal, store errors
            self.on = False
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
            log.warning("%s failed (%s: %s); tracking stops, training goes on (the run folder has everything)",
                        self.what, type(e).__name__, first)
            return None


def resolve_uri(uri: str, runs_dir) -> str:
    """The MLflow store: --tracking-uri, else MLflow's own $MLFLOW_TRACKING_URI, else a SQLite store in
    the runs folder (MLflow's recommended local store; its default would be ./mlflow.db in the cwd)."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(Path(runs_dir) / 'mlflow.db').resolve()}"


def _is_remote(uri: str) -> bool:
    return uri.split(":", 1)[0] in ("http", "https", "databricks")


def flat_params(cfg: RunConfig) -> dict[str, str]:
    """The resolved config as MLflow params: `section.field` -> value text (the `[track]` section and the
    name are labels, not parameters)."""
    d = cfg.to_dict()
    return {f"{s}.{k}": _text(v) for s in SECTIONS if s not in UNDIGESTED for k, v in d[s].items()}


def _text(v) -> str:
    return (",".join(map(str, v)) if isinstance(v, list) else str(v))[:6000]  # MLflow's param value limit


def run_tags(cfg: RunConfig, folder, info: dict) -> dict[str, str]:
    """Tags of a run: where it came from, what it trains on, its study / trial, the user's labels."""
    tags = {"mlflow.source.name": "mlns-fast train", "mlflow.source.type": "LOCAL", "arch": cfg.model.arch,
            "head": cfg.model.head, "data": cfg.data.data, "data_source": ",".join(cfg.data.real) or "demo",
            "valid_source": ",".join(cfg.data.valid) or ("demo" if not cfg.data.real else "valid_pct"),
            "run_dir": str(Path(folder.path).resolve())}
    if info.get("git_commit"):
        tags["mlflow.source.git.commit"] = info["git_commit"]
    for key in ("study", "trial"):
        if info.get(key) is not None:
            tags[key] = str(info[key])
    if cfg.track.note:
        tags["mlflow.note.content"] = cfg.track.note  # shown as the run's description in the MLflow UI
    return {**tags, **cfg.track.tags()}


STUDY_ROLE = "study"  # the `role` tag of a sweep study's parent run


def find_study_run(client, exp_id: str, study: str) -> str | None:
    """The id of a sweep study's parent run in the experiment, if there is one."""
    name = study.replace("'", "")  # study names are run-name safe already; no quote can end the filter
    found = client.search_runs([exp_id], f"tags.study = '{name}' and tags.role = '{STUDY_ROLE}'", max_results=1)
    return found[0].info.run_id if found else None


def open_run(client, cfg: RunConfig, folder, runs_dir, info: dict, uri: str) -> str:
    """The MLflow run id: the resumed run's own where its summary names one in this store, else a new run."""
    from mlflow.entities import Param
    from mlflow.utils.validation import MAX_PARAMS_TAGS_PER_BATCH
    old = _recorded(folder)
    if old and old.get("tracking_uri") == uri:
        run_id = old["run_id"]
        client.update_run(run_id, status="RUNNING")
    else:
        exp_id = experiment_id(client, cfg.track.experiment, uri, runs_dir)
        tags = run_tags(cfg, folder, info)
        parent = find_study_run(client, exp_id, str(info["study"])) if info.get("study") else None
        if parent:  # a sweep trial: a child of its study's run
            tags["mlflow.parentRunId"] = parent
        run_id = client.create_run(exp_id, run_name=folder.name, tags=tags).info.run_id
    params = [Param(k, v) for k, v in flat_params(cfg).items()]
    for i in range(0, len(params), MAX_PARAMS_TAGS_PER_BATCH):
        client.log_batch(run_id, params=params[i:i + MAX_PARAMS_TAGS_PER_BATCH])
    return run_id


def experiment_id(client, name: str, uri: str, runs_dir) -> str:
    """The experiment's id, created if new. In a local store its artifacts go to RUNS_DIR/mlartifacts
    (MLflow would use ./mlruns in the cwd); a server decides for itself."""
    from mlflow.exceptions import MlflowException
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    where = None if _is_remote(uri) else (Path(runs_dir) / "mlartifacts").resolve().as_uri()
    try:
        return client.create_experiment(name, artifact_location=where)
    except MlflowException:  # created meanwhile by another process (a sweep worker)
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def _recorded(folder) -> dict | None:
    """summary.json's `mlflow` entry, if well-formed (a run folder is user input once it exists)."""
    try:
        rec = folder.summary().get("mlflow")
    except (RunError, AttributeError):
        return None
    ok = isinstance(rec, dict) and all(isinstance(rec.get(k), str) and rec.get(k) for k in ("tracking_uri", "run_id"))
    return rec if ok else None


def now_ms() -> int:
    return int(time.time() * 1000)


def metric(key: str, value, ts: int, step: int):
    """An MLflow Metric, or None for a missing / non-finite value."""
    from mlflow.entities import Metric
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return Metric(key, v, ts, int(step)) if math.isfinite(v) else None


def log_results(folder, prefix: str, figures: dict, files=()) -> None:
    """Add an evaluation's figures (as `PREFIX/NAME` metrics) and files (under PREFIX/) to the MLflow
    run that trained `folder`; nothing when it was not tracked, one warning when the store fails."""
    rec = _recorded(folder)
    if rec is None:
        return
    from mlflow import MlflowClient
    guard = Guard(f"MLflow tracking at {rec['tracking_uri']}")
    client, ts = MlflowClient(rec["tracking_uri"]), now_ms()
    metrics = [m for m in (metric(f"{prefix}/{k}", v, ts, 0) for k, v in figures.items()) if m is not None]
    guard(client.log_batch, rec["run_id"], metrics=metrics)
    for f in files:
        guard(client.log_artifact, rec["run_id"], str(f), artifact_path=prefix)


def open_study_run(cfg: RunConfig, runs_dir, study: str, params: dict) -> dict | None:
    """A sweep study's parent MLflow run (its trials become its children): found again when the study
    resumes, else created, with the sweep's settings as params. Its ids, or None after one warning."""
    from mlflow import MlflowClient
    from mlflow.entities import Param
    uri = resolve_uri(cfg.track.tracking_uri, runs_dir)
    client, guard = MlflowClient(uri), Guard(f"MLflow tracking at {uri}")

    def _open() -> str:
        exp_id = experiment_id(client, cfg.track.experiment, uri, runs_dir)
        run_id = find_study_run(client, exp_id, study)
        if run_id:
            client.update_run(run_id, status="RUNNING")
        else:
            run_id = client.create_run(exp_id, run_name=f"study-{study}", tags={"study": study, "role": STUDY_ROLE,
                                       "mlflow.source.name": "mlns-fast sweep"}).info.run_id
        client.log_batch(run_id, params=[Param(k, _text(v)) for k, v in list(params.items())[:100]])
        return run_id

    run_id = guard(_open)
    return {"tracking_uri": uri, "run_id": run_id} if run_id else None


def close_study_run(rec: dict | None, figures: dict, tags: dict, status: str = "FINISHED") -> None:
    """The study's outcome onto its parent run (best value, trials, the best run), and its end status."""
    if not rec:
        return
    from mlflow import MlflowClient
    from mlflow.entities import RunTag
    client, guard, ts = MlflowClient(rec["tracking_uri"]), Guard(f"MLflow tracking at {rec['tracking_uri']}"), now_ms()
    guard(client.log_batch, rec["run_id"], metrics=[m for m in (metric(k, v, ts, 0) for k, v in figures.items()) if m],
          tags=[RunTag(k, str(v)) for k, v in tags.items() if v is not None])
    guard(client.set_terminated, rec["run_id"], status)
