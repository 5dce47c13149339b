"""`mlns-fast sweep` at toy size: 2-worker journal study, pruning, resume after a killed worker,
one-line errors for bad sweep files, and a multi-process study on a real PostgreSQL server."""
from __future__ import annotations

import copy
import glob
import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
import tomli_w
import torch

from mlns_fast.config import load_run_config
from mlns_fast.runs import RunDir, list_runs
from mlns_fast.sweep import load_sweep, run_sweep, study_folder
from mlns_fast.sweep.workers import max_workers
from mlns_fast.training import train

from .conftest import assert_user_error, run_cli


@pytest.fixture(autouse=True)
def one_thread():
    """Toy trials on one thread each: on oversubscribed cores (tests running beside other work)
    two-thread OpenMP runs of these tiny models crawl (measured 95 s vs 5 s)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def sweep_dict(tiny_data, name: str, epochs: int = 2, **study) -> dict:
    """A sweep over lr and mix of tiny runs (3 batches of 16 per epoch), scored on valid loss
    (48 validation images make accuracy too coarse to rank toy runs)."""
    return {"defaults": {"data": {"real": [tiny_data["train"]], "valid": [tiny_data["valid"]], "bs": 16,
                                  "workers": 0, "synthetic_per_epoch": 48, "mix": 0.5},
                         "model": {"channels_last": False},
                         "train": {"epochs": epochs, "precision": "fp32"}},
            "space": {"train.lr": {"low": 1e-3, "high": 1e-2, "log": True},
                      "data.mix": {"low": 0.25, "high": 0.75}},
            "study": {"name": name, "metric": "valid_loss", **study}}


def write(d: dict, path: Path) -> Path:
    path.write_text(tomli_w.dumps(d))
    return path


def trial_runs(runs_dir) -> dict[int, RunDir]:
    return {r.summary()["trial"]: r for r in list_runs(runs_dir)}


# --- bad sweep files -------------------------------------------------------------------------------

def _set(path: str, value):
    """An edit of the sweep dict: set `a/b/c` to value (None deletes it)."""
    def edit(d):
        *parents, last = path.split("/")
        for p in parents:
            d = d.setdefault(p, {})
        if value is None:
            d.pop(last, None)
        else:
            d[last] = value
    return edit


BAD = [
    (_set("space/train.lrr", {"low": 1e-3, "high": 1e-2}), "unknown field 'train.lrr'"),
    (_set("space/optim.lr", {"low": 1e-3, "high": 1e-2}), "unknown field 'optim.lr'"),
    (_set("space/train.lr", {"low": 1e-2, "high": 1e-3}), "low must be < high"),
    (_set("space/train.lr", {"low": 0.0, "high": 1e-2, "log": True}), "log range needs low > 0"),
    (_set("space/train.lr", {"low": 1e-3, "high": 1e-2, "logg": True}), "expected {low"),
    (_set("space/train.lr", {"low": "a", "high": 1e-2}), "low must be a number"),
    (_set("space/train.lr", 0.01), "expected {low"),
    (_set("space/train.ema", {"low": 0.9, "high": 1.0}), "--ema must be in"),
    (_set("space/model.head", {"choices": ["sum", "tail"]}), "--head must be one of"),
    (_set("space/model.arch", {"low": 1, "high": 2}), "give choices"),
    (_set("space/model.arch", {"choices": []}), "non-empty list"),
    (_set("space/data.bs", {"low": 8, "high": 32.5}), "high must be an integer"),
    (_set("space/data.real", {"choices": ["a.npz"]}), "cannot be searched"),
    (_set("space/train.epochs", {"low": 1, "high": 3}), "fixed per study"),
    (_set("space", {}), "[space] is empty"),
    (_set("spaces", {}), "unknown key 'spaces'"),
    (_set("defaults/train/lrr", 1.0), "unknown key 'lrr'"),
    (_set("study/pruner_x", 1), "unknown key 'pruner_x'"),
    (_set("study/metric", "f1"), "metric must be one of"),
    (_set("study/pruner", "hyperband"), "pruner must be one of"),
    (_set("study/warmup_epochs", 0), "warmup_epochs must be in [1, 2]"),
    (_set("study/name", "my study"), "may only use letters"),
    (_set("study/pruner", "threshold"), "threshold goes with"),
    (_set("study", {"pruner": "threshold", "threshold": float("nan")}), "threshold must be a finite number"),
    (_set("study/seed", -1), "seed must be in"),
    (_set("space/train.lr", {"low": 1e-3, "high": 1e-2, "step": 1e-300}), "step 1e-300 is too fine"),
    (_set("space/train.lr", {"low": 1e-3, "high": 1e-2, "step": float("nan")}), "step must be a finite number"),
]


@pytest.mark.parametrize("edit,message", BAD, ids=[m for _, m in BAD])
def test_bad_sweep_files_are_one_line_errors(tiny_data, tmp_path, capsys, edit, message):
    d = copy.deepcopy(sweep_dict(tiny_data, "bad"))
    edit(d)
    path = write(d, tmp_path / "bad.toml")
    code, _, err = run_cli(capsys, "sweep", path, "--dry-run", "--runs-dir", tmp_path / "runs")
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err and (str(path) in err or message.startswith("--")), err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("option", [("--trials", "0"), ("--workers", "0"), ("--workers", str(max_workers() + 1)),
                                    ("--timeout", "-1"), ("--timeout", "0"), ("--timeout", "nan"),
                                    ("--timeout", "inf")])
def test_bad_options_are_one_line_errors(tiny_data, tmp_path, capsys, option):
    path = write(sweep_dict(tiny_data, "opts"), tmp_path / "s.toml")
    code, _, err = run_cli(capsys, "sweep", path, *option, "--runs-dir", tmp_path / "runs")
    assert_user_error(code, err, option[0])
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("storage", ["FOLDER", "NOT_A_JOURNAL", "postgresql://u@127.0.0.1:1/x",
                                     "postgresql+psycopg2://u@127.0.0.1:1/x", "foo://bar"])
def test_a_storage_that_cannot_be_opened_leaves_nothing_behind(tiny_data, tmp_path, capsys, storage):
    """An existing folder, a file that is no journal, an unreachable or unknown database: one line,
    and no `sweeps/<study>/` folder (nor a runs folder) left behind."""
    (tmp_path / "FOLDER").mkdir()
    (tmp_path / "NOT_A_JOURNAL").write_text("a note, not a journal\n")
    storage = str(tmp_path / storage) if "://" not in storage else storage
    path = write(sweep_dict(tiny_data, "nowhere"), tmp_path / "s.toml")
    code, _, err = run_cli(capsys, "sweep", path, "--storage", storage, "--runs-dir", tmp_path / "runs")
    assert_user_error(code, err, storage.split("://")[0])
    assert not (tmp_path / "runs").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["FOLDER", "NOT_A_JOURNAL", "s.toml"]
    assert (tmp_path / "NOT_A_JOURNAL").read_text() == "a note, not a journal\n" and not any((tmp_path / "FOLDER").iterdir())


def test_dry_run_prints_space_and_first_suggestions(tiny_data, tmp_path, capsys):
    path = write(sweep_dict(tiny_data, "dry"), tmp_path / "s.toml")
    code, out, _ = run_cli(capsys, "sweep", path, "--dry-run", "--trials", 3, "--runs-dir", tmp_path / "runs")
    assert code == 0 and "train.lr: float in [0.001, 0.01], log" in out and "data.mix: float in [0.25, 0.75]" in out
    assert "trial 0: train.lr=0.003, data.mix=0.5 (enqueued from defaults)" in out and "trial 2:" in out
    assert not (tmp_path / "runs").exists()  # nothing stored, nothing trained


# --- studies ---------------------------------------------------------------------------------------

def test_two_worker_study_on_a_journal_file(tiny_data, tmp_path, capfd):
    runs = tmp_path / "runs"
    path = write(sweep_dict(tiny_data, "duo", startup_trials=1), tmp_path / "duo.toml")
    code, out, err = run_cli(capfd, "sweep", path, "--trials", 4, "--workers", 2, "--runs-dir", runs)
    assert code == 0, err
    assert re.search(r"^note: \[worker [01]\] trial \d: train.lr=", err, re.M), err  # the CLI's logging, tagged
    folder = study_folder(runs, "duo")
    for f in ("journal.log", "trials.csv", "best.toml", "optimization_history.png", "param_importances.png",
              "parallel_coordinate.png"):
        assert (folder / f).is_file() and (folder / f).stat().st_size > 0, f
    assert "best: trial" in out and f"optuna-dashboard {folder / 'journal.log'}" in out
    by_trial = trial_runs(runs)  # `sweeps/` is not a run folder
    assert sorted(by_trial) == [0, 1, 2, 3]
    threads = max(1, torch.get_num_threads() // 2)
    for n, run in by_trial.items():
        s = run.summary()
        assert s["study"] == "duo" and s["status"] == "finished" and s["threads"] == threads
        assert run.name.endswith(f"-duo-t{n:03d}") and run.config().name == f"duo-t{n:03d}"
    assert by_trial[0].config().train.lr == 3e-3  # the first trial is [defaults], enqueued
    study = optuna.load_study(study_name="duo", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(folder / "journal.log"))))
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 4
    assert len((folder / "trials.csv").read_text().splitlines()) == 5
    # best.toml is the best run's config: training it with the same threads gives the same score
    best = study.best_trial
    cfg = load_run_config(folder / "best.toml")
    assert cfg.digest() == by_trial[best.number].config().digest() and cfg.name == "duo-best"
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        again = train(cfg, tmp_path / "again", quiet=True)
    finally:
        torch.set_num_threads(before)
    assert RunDir(tmp_path / "again" / again["run"]).metrics()[-1]["valid_loss"] == pytest.approx(best.value, abs=0)


def _wait_for(predicate, timeout: float, proc):
    end = time.time() + timeout
    while time.time() < end and proc.poll() is None:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_pruning_resume_and_killed_worker(tiny_data, tmp_path):
    """A killed worker's trial is failed on the next start; pruned trials say `pruned`; a rerun resumes."""
    runs = tmp_path / "runs"
    # threshold pruner: every valid loss is above 0, so every trial is pruned at its first prunable epoch
    d = sweep_dict(tiny_data, "pr", epochs=4, pruner="threshold", threshold=0.0, warmup_epochs=2)
    path = write(d, tmp_path / "pr.toml")
    proc = subprocess.Popen([sys.executable, "-m", "mlns_fast", "sweep", str(path), "--trials", "1",
                             "--runs-dir", str(runs)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        started = _wait_for(lambda: any(runs.glob("*-pr-t000/summary.json")), 120, proc)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert started, proc.stderr.read().decode()[-2000:]

    res = run_sweep(path, runs, trials=2)
    assert [(r["trial"], r["state"]) for r in res.rows] == [(0, "fail"), (1, "pruned"), (2, "pruned")]
    killed = trial_runs(runs)[0].summary()
    assert killed["status"] == "failed" and "worker died" in killed["message"] and killed["trial"] == 0
    for n in (1, 2):
        run = trial_runs(runs)[n]
        s = run.summary()
        assert s["status"] == "pruned" and f"trial {n} pruned at epoch 2" in s["message"], s
        assert s["study"] == "pr" and s["epochs_done"] == 3
        assert [r["epoch"] for r in run.metrics()] == [0, 1, 2] and run.load_checkpoint()["epoch"] == 2
    assert res.best is None and not (study_folder(runs, "pr") / "best.toml").exists()

    res = run_sweep(path, runs, trials=3)  # resume: one more trial, nothing enqueued again
    assert [(r["trial"], r["state"]) for r in res.rows][-2:] == [(2, "pruned"), (3, "pruned")]
    assert len(res.rows) == 4 and res.rows[0]["train.lr"] == 3e-3 and res.rows[3]["train.lr"] != 3e-3


def test_resumed_study_refuses_other_settings(tiny_data, tmp_path, capsys):
    runs = tmp_path / "runs"
    d = sweep_dict(tiny_data, "fixed", epochs=1, pruner="none")
    path = write(d, tmp_path / "s.toml")
    assert run_sweep(path, runs, trials=1).rows[0]["state"] == "complete"
    d["defaults"]["train"]["epochs"] = 2
    code, _, err = run_cli(capsys, "sweep", write(d, path), "--trials", 2, "--runs-dir", runs)
    assert code == 2 and "already exists with another epochs" in err and err.count("\n") == 1


# --- PostgreSQL ------------------------------------------------------------------------------------

def _pg_bin(name: str) -> str | None:
    versions = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(p.split("/")[4]))
    return shutil.which(name) or (versions[-1] if versions else None)


@pytest.fixture
def postgres_url():
    """A throwaway PostgreSQL server on a unix socket in a temp dir (no TCP at all); its URL.
    As root it runs as the `postgres` user (or `nobody`): the server refuses to run as root."""
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not installed; .ci/run installs them "
                    "with apt-get install postgresql")
    root = Path(tempfile.mkdtemp(prefix="mlns-pg-"))
    as_user = {}
    if os.geteuid() == 0:
        user = next(u for u in ("postgres", "nobody") if _has_user(u))
        pw = pwd.getpwnam(user)
        os.chown(root, pw.pw_uid, pw.pw_gid)
        as_user = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
    env = {**os.environ, "LC_ALL": "C", "HOME": str(root)}

    def run(*cmd, check=True):
        done = subprocess.run(cmd, check=False, cwd=root, env=env, capture_output=True, **as_user)
        if check and done.returncode:
            log = (root / "server.log").read_text() if (root / "server.log").exists() else ""
            pytest.fail(f"{' '.join(cmd)} failed: {done.stderr.decode()[-1500:]} {log[-1500:]}")

    data = root / "data"
    try:
        run(initdb, "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-locale", "--no-sync")
        run(pg_ctl, "-D", str(data), "-l", str(root / "server.log"), "-w", "-t", "60",
            "-o", f"-h '' -k {root} -p 5432 -F", "start")
        yield f"postgresql+psycopg2://postgres@/postgres?host={root}&port=5432"
    finally:
        if (data / "postmaster.pid").exists():
            run(pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop", check=False)
        shutil.rmtree(root, ignore_errors=True)


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def test_multi_process_study_on_postgresql(tiny_data, tmp_path, postgres_url):
    runs = tmp_path / "runs"
    path = write(sweep_dict(tiny_data, "pg", startup_trials=1), tmp_path / "pg.toml")
    res = run_sweep(path, runs, trials=4, workers=2, storage=postgres_url)
    study = optuna.load_study(study_name="pg", storage=postgres_url)
    assert len(study.trials) == 4 and all(t.state.name in ("COMPLETE", "PRUNED") for t in study.trials)
    assert {t.user_attrs["run"] for t in study.trials} == {r.name for r in list_runs(runs)}
    assert len({t.user_attrs["worker"]["pid"] for t in study.trials}) >= 1
    assert res.storage.startswith("postgresql+psycopg2://postgres@/postgres") and res.best is not None
    assert sorted(trial_runs(runs)) == [0, 1, 2, 3]


def test_example_sweep_file_is_valid():
    sweep = load_sweep(Path(__file__).parents[1] / "experiments" / "sweep.toml")
    assert {p.key for p in sweep.space} >= {"train.lr", "train.ema", "data.mix", "model.arch"}
    assert json.dumps(sweep.fingerprint())
