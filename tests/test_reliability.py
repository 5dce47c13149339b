"""Reliability round 2: hostile or careless inputs end in one line and exit 2 with nothing written,
and a run can be resumed from any moment (issue 13). Each case failed before its fix."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from mlns_fast.cli import main
from mlns_fast.errors import RunError
from mlns_fast.procs import this_process
from mlns_fast.runs import RunDir, list_runs, resolve_run
from mlns_fast.training import train

from .conftest import SigintAfter, assert_user_error, dead_pid, flag_args, run_cli, tiny_flags


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_data):
    runs = tmp_path_factory.mktemp("runs")
    assert main(["train", "--quiet", "--name", "toy", "--runs-dir", str(runs), *flag_args(tiny_flags(tiny_data))]) == 0
    return runs


@pytest.mark.parametrize("name", ["x/../../escaped", "../../escape", "/tmp/abs", "a/b", ".hidden", "a b", "é"])
def test_run_names_cannot_escape_or_crash(capsys, tmp_path, tiny_data, name):
    runs = tmp_path / "deep" / "runs"
    (runs / "x").mkdir(parents=True)
    code, _, err = run_cli(capsys, "train", "--quiet", "--runs-dir", runs, "--name", name,
                           *flag_args(tiny_flags(tiny_data)))
    assert_user_error(code, err, "--name")
    assert sorted(p.name for p in (tmp_path / "deep").rglob("*")) == ["runs", "x"]  # nothing written anywhere


@pytest.mark.parametrize("args, msg", [
    (["--lr", "inf"], "--lr must be a finite number"),
    (["--wd", "nan"], "--wd must be a finite number"),
    (["--ema", "nan"], "--ema must be a finite number"),
    (["--epochs", "99999999"], "--epochs must be in [1, 10000]"),
    (["--mix", "nan"], "--mix must be a finite number"),
    (["--valid-pct", "nan"], "--valid-pct must be a finite number"),
    (["--drop", "nan"], "--drop must be a finite number"),
])
def test_invalid_values_never_create_a_run(capsys, tmp_path, args, msg):
    runs = tmp_path / "runs"
    code, _, err = run_cli(capsys, "train", "--quiet", "--runs-dir", runs, *args)
    assert_user_error(code, err, msg)
    assert not runs.exists()


def test_runs_dir_that_cannot_be_created(capsys, tmp_path, tiny_data):
    (tmp_path / "file").write_text("x")
    code, _, err = run_cli(capsys, "train", "--quiet", "--runs-dir", tmp_path / "file" / "runs",
                           *flag_args(tiny_flags(tiny_data)))
    assert_user_error(code, err, "cannot create runs dir")


def test_export_out_existing_folder(capsys, tmp_path, trained):
    code, _, err = run_cli(capsys, "export", "toy", "--runs-dir", trained, "--out", tmp_path)
    assert_user_error(code, err, "is a folder")
    assert list(tmp_path.iterdir()) == [] or not list(tmp_path.glob("*.tmp"))


def test_onnx_cache_must_belong_to_the_weights(capsys, tmp_path, trained, tiny_data):
    from mlns_fast.export import WEIGHTS_KEY
    run = resolve_run("toy", trained)
    x = np.load(str(tiny_data["valid"].split(":")[0]))[:6]
    np.save(tmp_path / "x.npy", x)
    code, torch_out, _ = run_cli(capsys, "predict", "toy", tmp_path / "x.npy", "--runs-dir", trained, "--json",
                                 "--weights-from", "ema")
    onnx_path = run.path / "model_ema.tta.onnx"  # the default reading's graph
    for junk in (b"not an onnx file", None):
        if junk is None:  # a valid graph, but exported from other weights: a raw-weights export renamed
            run_cli(capsys, "export", "toy", "--runs-dir", trained, "--raw", "--out", tmp_path / "raw.onnx")
            (tmp_path / "raw.onnx").replace(onnx_path)
        else:
            onnx_path.write_bytes(junk)
        code, out, err = run_cli(capsys, "predict", "toy", tmp_path / "x.npy", "--runs-dir", trained, "--json",
                                 "--backend", "onnx", "--weights-from", "ema")
        assert code == 0, err
        assert [json.loads(r)["sum"] for r in out.splitlines()] == [json.loads(r)["sum"] for r in torch_out.splitlines()]
        import onnx
        props = {p.key: p.value for p in onnx.load(str(onnx_path)).metadata_props}
        from mlns_fast.export import weights_digest
        assert props[WEIGHTS_KEY] == weights_digest(run.weights_path(True))


def test_evaluate_on_a_run_it_cannot_write(capsys, tmp_path, trained):
    import shutil
    run = resolve_run("toy", trained)
    shutil.rmtree(run.path / "eval", ignore_errors=True)
    (run.path / "eval").write_text("a file where the eval folder goes")  # (as root, chmod would not stop us)
    try:
        code, _, err = run_cli(capsys, "evaluate", "toy", "--runs-dir", trained)
        assert_user_error(code, err, "cannot write evaluation files")
    finally:
        (run.path / "eval").unlink()


@pytest.mark.parametrize("summary, args", [
    ('{"status": 3, "final_acc": "high"}', ["--sort", "status"]),
    ('{"status": "finished", "final_acc": "high"}', ["--sort", "final_acc"]),
    ("null", ["--sort", "final_acc"]),
    (None, ["--sort", "minutes"]),  # summary.json is a folder
])
def test_compare_survives_hand_edited_summaries(capsys, tmp_path, trained, summary, args):
    import shutil
    runs = tmp_path / "runs"
    shutil.copytree(trained, runs)
    bad = runs / "20000101-000000-bad"
    bad.mkdir()
    (bad / "config.toml").write_text('name = "bad"\n')
    if summary is None:
        (bad / "summary.json").mkdir()
    else:
        (bad / "summary.json").write_text(summary)
    code, out, err = run_cli(capsys, "compare", "--runs-dir", runs, "--format", "json", *args)
    assert code == 0, err
    assert len(json.loads(out)) == 2


def test_missing_config_is_named(capsys, tmp_path):
    run = tmp_path / "20000101-000000-x"
    run.mkdir()
    (run / "summary.json").write_text('{"status": "finished"}')
    code, _, err = run_cli(capsys, "evaluate", run)
    assert_user_error(code, err, "has no config.toml")


@pytest.mark.parametrize("mutate, msg", [
    (lambda c: c.pop("model"), "missing 'model'"),
    (lambda c: c.__setitem__("epoch", "1"), "'epoch' is str"),
    (lambda c: c.__setitem__("opt", {"state": [], "hypers": []}), "from fastai's Adam"),  # the layout before fused AdamW
])
def test_malformed_checkpoint_is_a_user_error(capsys, tmp_path, tiny_cfg, mutate, msg):
    s = train(tiny_cfg(epochs=3), tmp_path, quiet=True, extra_cbs=[SigintAfter(0)])
    run = RunDir(tmp_path / s["run"])
    ckpt = torch.load(run.checkpoint_path, weights_only=True)
    mutate(ckpt)
    torch.save(ckpt, run.checkpoint_path)
    code, _, err = run_cli(capsys, "train", "--resume", run.path)
    assert_user_error(code, err, msg)


def test_second_of_two_same_named_runs_is_reachable(tmp_path, tiny_cfg):
    a = RunDir.create(tmp_path, tiny_cfg(name="same"))
    b = RunDir.create(tmp_path, tiny_cfg(name="same"))  # same second -> `...-same-2`
    assert resolve_run("same", tmp_path) == b and resolve_run(a.name, tmp_path) == a




def _metrics(run_path):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in RunDir(run_path).metrics()]


def test_ctrl_c_in_the_first_epoch_then_resume(tiny_cfg, tmp_path):
    cfg = tiny_cfg(epochs=2)
    full = train(cfg, tmp_path / "full", quiet=True)
    cut = train(cfg, tmp_path / "cut", quiet=True, extra_cbs=[SigintAfter(-1)])
    run = tmp_path / "cut" / cut["run"]
    assert cut["status"] == "interrupted" and not (run / "checkpoint.pt").exists()
    resumed = train(None, tmp_path / "cut", quiet=True, resume=str(run))
    assert resumed["status"] == "finished" and resumed["run"] == cut["run"]
    assert _metrics(run) == _metrics(tmp_path / "full" / full["run"])
    assert not (run / "run.lock").exists()


def test_killed_run_shows_stale_and_resumes(capsys, tmp_path, tiny_cfg):
    run = RunDir.create(tmp_path, tiny_cfg(name="killed", epochs=1))
    run.write_summary({"status": "running", "name": "killed", "run": run.name})
    run.lock_path.write_text(json.dumps({"pid": dead_pid(), "host": os.uname().nodename}))
    code, out, _ = run_cli(capsys, "compare", "--runs-dir", tmp_path, "--format", "json")
    assert json.loads(out)[0]["status"] == "stale"
    s = train(None, tmp_path, quiet=True, resume="killed")
    assert s["status"] == "finished" and run.status() == "finished" and len(list_runs(tmp_path)) == 1


def test_live_run_cannot_be_resumed_twice(tmp_path, tiny_cfg):
    run = RunDir.create(tmp_path, tiny_cfg(name="live", epochs=1))
    run.write_summary({"status": "running"})
    run.lock()  # this very process holds it
    run.lock_path.write_text(json.dumps({"pid": os.getppid(), "host": os.uname().nodename}))
    with pytest.raises(RunError, match="is being trained by process"):
        train(None, tmp_path, quiet=True, resume="live")


def test_a_lock_whose_pid_was_reused_is_stale(tmp_path, tiny_cfg):
    """The lock names a running PID (this process's) but another start time: the trainer died and
    the kernel gave its PID to someone else. The run is stale and resumes, not "being trained"."""
    run = RunDir.create(tmp_path, tiny_cfg(name="reused", epochs=1))
    run.write_summary({"status": "running", "name": "reused", "run": run.name})
    run.lock()
    assert json.loads(run.lock_path.read_text())["token"] == this_process()["token"]
    assert run.holder() == os.getpid()
    run.lock_path.write_text(json.dumps({**this_process(), "token": "1"}))  # started at boot + 10 ms: not us
    assert run.holder() is None and run.status() == "stale"
    assert train(None, tmp_path, quiet=True, resume="reused")["status"] == "finished"


def test_sigterm_to_the_process_group_interrupts_cleanly(tmp_path, tiny_data):
    """`timeout` / Slurm / systemd signal the whole group: the DataLoader worker must not die first."""
    runs = tmp_path / "runs"
    flags = tiny_flags(tiny_data, epochs=400, workers=1)
    cmd = [sys.executable, "-m", "mlns_fast", "train", "--quiet", "--name", "term", "--runs-dir", str(runs),
           *flag_args(flags)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list(runs.glob("*/checkpoint.pt")):
        time.sleep(0.2)
    assert list(runs.glob("*/checkpoint.pt")), "no epoch finished in time"
    os.killpg(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "resume with: mlns-fast train --resume" in err
    run = list_runs(runs)[0]
    assert run.status() == "interrupted" and not run.lock_path.exists()


def test_the_same_source_cannot_train_and_validate(capsys, tmp_path, tiny_data):
    flags = tiny_flags(tiny_data, valid=(tiny_data["train"],))
    code, _, err = run_cli(capsys, "train", "--quiet", "--runs-dir", tmp_path / "runs", *flag_args(flags))
    assert_user_error(code, err, "given as both --real and --valid")


@pytest.mark.parametrize("args", [["lr-find", "--quiet", "--num-it", "20"], ["data", "preview"],
                                  ["compare", "--plot"]])
def test_figure_out_that_is_a_folder(capsys, tmp_path, monkeypatch, args):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "figs").mkdir()
    if args[0] == "compare":
        args = args + ["figs"]
    else:
        args = args + ["--out", "figs"]
    code, _, err = run_cli(capsys, *args)
    assert_user_error(code, err, "is a folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["figs"] and not any((tmp_path / "figs").iterdir())


def test_lr_find_writes_nothing_but_its_plot_and_curve(capsys, tmp_path, tiny_data, monkeypatch):
    monkeypatch.chdir(tmp_path)
    flags = tiny_flags(tiny_data, data="synthetic", synthetic_per_epoch=160)
    code, _, err = run_cli(capsys, "lr-find", "--quiet", "--num-it", "30", "--out", "lr.png", *flag_args(flags))
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lr.csv", "lr.png"]  # no fastai `models/` folder left
