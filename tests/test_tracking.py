"""Live tracking against the real engines: an `mlflow server` process (SQLite store, local artifact root)
read back through MlflowClient, TensorBoard event files read back with TensorBoard's own reader, and a
server that goes away mid-run."""
from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from fastai.callback.core import Callback

from mlns_fast.callbacks import RunTracker
from mlns_fast.runs import RunDir
from mlns_fast.training import train

from .conftest import SigintAfter, flag_args, run_cli, tiny_flags


pytestmark = pytest.mark.usefixtures("one_thread")


SERVER_START_S = 120  # bounded wait for the server's /health (it answers in ~8 s on 2 idle cores)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """A real `mlflow server` on a free localhost port, in its own process group (uvicorn spawns workers)."""

    def __init__(self, root):
        self.port, self.root = free_port(), root
        self.uri = f"http://127.0.0.1:{self.port}"
        self.log = open(root / "server.log", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
             "--default-artifact-root", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(self.port),
             "--workers", "1"], stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True, cwd=root)
        self._wait()

    def _wait(self):
        deadline = time.monotonic() + SERVER_START_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        self.stop()
        pytest.fail(f"mlflow server did not answer /health: {(self.root / 'server.log').read_text()[-2000:]}")

    def stop(self, sig=signal.SIGTERM):
        """Signal the server's process group (the server and the workers it started), then reap it."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(15)
        self.log.close()


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow"))
    yield server
    server.stop()


def tracking_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and r.name.startswith("mlns_fast.tracking")]


def test_a_tracked_run_reads_back_from_the_mlflow_server(tiny_cfg, tmp_path, mlflow_server, caplog):
    from mlflow import MlflowClient
    from mlns_fast.evaluation import evaluate
    from mlns_fast.data.demo import demo_split
    cfg = tiny_cfg(name="tracked", epochs=2, track=("mlflow",), tracking_uri=mlflow_server.uri, experiment="exp-a",
                   tag=("team=vision", "purpose=test"), note="first tracked run")
    s = train(cfg, tmp_path, quiet=True)
    assert s["status"] == "finished" and s["tags"] == {"team": "vision", "purpose": "test"}
    assert s["note"] == "first tracked run" and s["mlflow"]["tracking_uri"] == mlflow_server.uri
    folder = RunDir(tmp_path / s["run"])
    rows = folder.metrics()
    client = MlflowClient(mlflow_server.uri)
    run = client.get_run(s["mlflow"]["run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == s["run"]
    assert client.get_experiment(run.info.experiment_id).name == "exp-a"
    # params: the flattened resolved config
    p = run.data.params
    assert p["train.lr"] == str(cfg.train.lr) and p["data.bs"] == "16" and p["model.arch"] == cfg.model.arch
    assert p["data.real"] == cfg.data.real[0] and "track.note" not in p
    # tags: source, what it trains on, the user's labels, the note as MLflow's description
    t = run.data.tags
    assert t["team"] == "vision" and t["purpose"] == "test" and t["mlflow.note.content"] == "first tracked run"
    assert t["arch"] == cfg.model.arch and t["data"] == "mixed" and t["data_source"] == cfg.data.real[0]
    assert t["run_dir"] == str(folder.path.resolve()) and t["status"] == "finished"
    assert t.get("mlflow.source.git.commit") == s["git_commit"]
    # per-epoch histories equal metrics.csv, raw and EMA
    for key in ("acc", "acc_ema", "valid_loss", "valid_loss_ema", "train_loss"):
        hist = sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)
        assert [m.step for m in hist] == [0, 1], key
        assert [m.value for m in hist] == pytest.approx([r[key] for r in rows]), key
    # per-step: one point per training batch, numbered by the global step; lr follows the one-cycle schedule
    steps = sorted(client.get_metric_history(run.info.run_id, "step/train_loss"), key=lambda m: m.step)
    lrs = [m.value for m in sorted(client.get_metric_history(run.info.run_id, "step/lr"), key=lambda m: m.step)]
    n_train = steps[-1].step  # 2 epochs of training batches
    assert [m.step for m in steps] == list(range(1, n_train + 1)) and all(m.value > 0 for m in steps)
    assert len(lrs) == n_train and max(lrs) > lrs[0] and lrs[-1] < max(lrs) / 10
    assert run.data.metrics["final_acc"] == pytest.approx(s["final_acc"])
    # artifacts: the run folder's files, byte for byte
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.toml", "summary.json", "metrics.csv", "curves.png"} <= names
    assert "model.safetensors" not in names  # weights only with --track-weights
    got = client.download_artifacts(run.info.run_id, "summary.json", str(tmp_path))
    assert json.loads(open(got).read()) == json.loads((folder.path / "summary.json").read_text())
    # evaluate adds its figures and files to the same MLflow run
    res = evaluate(folder, demo_split("valid").subset(slice(0, 32)))
    prefix = f"eval/{os.path.basename(os.path.dirname(res['files'][0]))}"
    run = client.get_run(run.info.run_id)
    assert run.data.metrics[f"{prefix}/sum_accuracy"] == pytest.approx(res["sum_accuracy"])
    assert run.data.metrics[f"{prefix}/n"] == 32
    assert "result.json" in {os.path.basename(a.path) for a in client.list_artifacts(run.info.run_id, prefix)}
    assert not tracking_warnings(caplog)


def test_robustness_logs_into_the_tracked_run(tiny_cfg, tmp_path, mlflow_server):
    from mlflow import MlflowClient
    from mlns_fast.robustness import robustness
    s = train(tiny_cfg(epochs=1, track=("mlflow",), tracking_uri=mlflow_server.uri, track_weights=True),
              tmp_path, quiet=True)
    res = robustness(RunDir(tmp_path / s["run"]), names=["demo-test"])
    client = MlflowClient(mlflow_server.uri)
    m = client.get_run(s["mlflow"]["run_id"]).data.metrics
    w = res["weights"]
    assert m[f"robustness/{w}/demo-test/sum_accuracy"] == pytest.approx(res["sets"][0]["sum_accuracy"])
    assert m[f"robustness/{w}/mean/sum_accuracy"] == pytest.approx(res["sets"][0]["sum_accuracy"])
    names = {a.path for a in client.list_artifacts(s["mlflow"]["run_id"])}
    assert {"model.safetensors", "model_ema.safetensors"} <= names  # --track-weights


class StopServerAfter(Callback):
    """Kills the MLflow server (as a crash would) at the end of epoch `n`, after the tracker sent that epoch."""
    order = RunTracker.order + 2

    def __init__(self, server, n: int):
        self.server, self.n = server, n

    def after_epoch(self):
        if self.epoch == self.n:
            self.server.stop(signal.SIGKILL)


def test_a_server_gone_mid_run_costs_one_warning_not_the_run(tiny_cfg, tmp_path, caplog):
    (tmp_path / "server").mkdir()
    server = MlflowServer(tmp_path / "server")
    try:
        s = train(tiny_cfg(epochs=3, track=("mlflow",), tracking_uri=server.uri), tmp_path / "runs", quiet=True,
                  extra_cbs=[StopServerAfter(server, 0)])
    finally:
        server.stop()
    warnings = tracking_warnings(caplog)
    assert s["status"] == "finished" and s["epochs_done"] == 3, s
    assert len(warnings) == 1 and server.uri in warnings[0], warnings
    folder = RunDir(tmp_path / "runs" / s["run"])
    assert len(folder.metrics()) == 3 and folder.weights_path(False).is_file()
    assert s["mlflow"]["run_id"]  # started while the server was up: recorded for later


def test_an_unreachable_server_at_the_start_is_one_warning(tiny_data, tmp_path, caplog, capsys):
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    code, _, err = run_cli(capsys, "train", *flag_args(tiny_flags(tiny_data, epochs=1)), "--track", "mlflow",
                           "--tracking-uri", dead, "--runs-dir", tmp_path, "-q")
    assert code == 0, err
    assert len(tracking_warnings(caplog)) == 1
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and "Retrying" in r.getMessage()]
    s = json.loads(next(tmp_path.glob("*/summary.json")).read_text())
    assert s["status"] == "finished" and "mlflow" not in s




def test_default_local_store_and_a_resumed_run_continue_one_mlflow_run(tiny_cfg, tmp_path, monkeypatch):
    from mlflow import MlflowClient
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)  # nothing may land in the working directory
    runs = tmp_path / "runs"
    cut = train(tiny_cfg(epochs=2, track=("mlflow", "tensorboard")), runs, quiet=True, extra_cbs=[SigintAfter(0)])
    assert cut["status"] == "interrupted"
    uri = cut["mlflow"]["tracking_uri"]
    assert uri == f"sqlite:///{(runs / 'mlflow.db').resolve()}"
    client = MlflowClient(uri)
    assert client.get_run(cut["mlflow"]["run_id"]).info.status == "KILLED"
    done = train(None, runs, quiet=True, resume=str(runs / cut["run"]))
    assert done["status"] == "finished" and done["mlflow"]["run_id"] == cut["mlflow"]["run_id"]
    run_id = done["mlflow"]["run_id"]
    assert client.get_run(run_id).info.status == "FINISHED"
    acc = sorted(client.get_metric_history(run_id, "acc"), key=lambda m: m.step)
    assert [m.step for m in acc] == [0, 1]
    steps = sorted(m.step for m in client.get_metric_history(run_id, "step/train_loss"))
    assert steps == list(range(1, len(steps) + 1)) and len(steps) % 2 == 0  # the global step goes on after the
    # resume: no step logged twice, none missing
    art = client.get_experiment(client.get_run(run_id).info.experiment_id).artifact_location
    assert art == (runs / "mlartifacts").resolve().as_uri()
    assert (runs / "mlartifacts").is_dir() and sorted(p.name for p in tmp_path.iterdir()) == ["runs"]
    assert len(client.search_runs([client.get_run(run_id).info.experiment_id])) == 1


def test_tensorboard_event_file_reads_back_with_tensorboards_reader(tiny_cfg, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    s = train(tiny_cfg(epochs=2, track=("tensorboard",)), tmp_path, quiet=True)
    folder = RunDir(tmp_path / s["run"])
    acc = EventAccumulator(str(folder.path / "tensorboard"))
    acc.Reload()
    rows = folder.metrics()
    for key in ("acc", "acc_ema", "valid_loss", "valid_loss_ema"):
        assert [e.value for e in acc.Scalars(key)] == pytest.approx([r[key] for r in rows], rel=1e-6), key
    n = acc.Scalars("acc")[0].step  # logged at the global step that ended each epoch: n batches an epoch
    assert n > 1 and [e.step for e in acc.Scalars("acc")] == [n, 2 * n]
    assert [e.step for e in acc.Scalars("train_loss")] == list(range(1, 2 * n + 1))  # per training batch only
    lrs = [e.value for e in acc.Scalars("lr_0")]
    assert len(lrs) == 2 * n and max(lrs) > lrs[0] and lrs[-1] < max(lrs) / 10
    assert "config" in "".join(acc.Tags()["tensors"])


def test_sweep_trials_are_child_runs_of_the_study_run(tiny_data, tmp_path, monkeypatch):
    from mlflow import MlflowClient
    from mlns_fast.sweep import run_sweep
    from .test_sweep import sweep_dict, write
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    runs = tmp_path / "runs"
    d = sweep_dict(tiny_data, "tr", epochs=1, pruner="none")
    d["defaults"]["track"] = {"track": ["mlflow"], "experiment": "sweeps"}
    path = write(d, tmp_path / "tr.toml")
    res = run_sweep(path, runs, trials=2)
    client = MlflowClient(f"sqlite:///{(runs / 'mlflow.db').resolve()}")
    exp = client.get_experiment_by_name("sweeps").experiment_id
    parents = client.search_runs([exp], "tags.role = 'study'")
    assert len(parents) == 1 and parents[0].data.tags["study"] == "tr"
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.data.params["study.metric"] == "valid_loss"
    assert "space.train.lr" in parent.data.params and parent.data.metrics["trials"] == 2
    assert parent.data.metrics["best_value"] == pytest.approx(res.best["value"])
    assert parent.data.tags["best_run"] == res.best["run"]
    children = client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert sorted(c.data.tags["trial"] for c in children) == ["0", "1"]
    assert {c.info.run_name for c in children} == {r["run"] for r in res.rows}
    assert all(c.data.tags["study"] == "tr" and c.info.status == "FINISHED" for c in children)
    res = run_sweep(path, runs, trials=3)  # a resumed study goes on under the same parent run
    assert len(client.search_runs([exp], "tags.role = 'study'")) == 1
    assert len(client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")) == 3
