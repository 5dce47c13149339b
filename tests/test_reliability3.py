"""Reliability round 3 (issue 22): run folders are untrusted input, no moment of a run is
unrecoverable, every output path is checked before work, labels.csv loses no row silently, and
sizes are checked before anything is allocated or decoded. Each case failed before its fix."""
import gzip
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlns_fast import training as train_mod
from mlns_fast.cli import main
from mlns_fast.data import arrays
from mlns_fast.data.sources import load_folder, load_images, load_npy_pair, load_source
from mlns_fast.errors import DataError, RunError
from mlns_fast.reading import run_temperature
from mlns_fast.runs import RunDir, finished_weights, list_runs, resolve_run, weights_set
from mlns_fast.training import train

from .conftest import assert_user_error, flag_args, run_cli, tiny_flags

FUZZ = settings(max_examples=40, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_data):
    """A finished tiny run (1 epoch), copied by the tests that edit it."""
    runs = tmp_path_factory.mktemp("runs3")
    assert main(["train", "--quiet", "--name", "toy", "--runs-dir", str(runs),
                 *flag_args(tiny_flags(tiny_data, epochs=1))]) == 0
    return runs


@pytest.fixture
def runs(tmp_path, trained):
    """A fresh copy of the finished run's runs folder, to hand-edit."""
    shutil.copytree(trained, tmp_path / "runs")
    return tmp_path / "runs"


def _tree(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


# --- 1. a run folder's files are untrusted input ------------------------------------------------

@pytest.mark.parametrize("weights", ["/../../../../tmp/x", "../../escape", ["x"], 3, {"a": 1}, "best"])
def test_summary_weights_value_is_checked(capsys, runs, tiny_data, weights):
    run = resolve_run("toy", runs)
    s = json.loads((run.path / "summary.json").read_text())
    (run.path / "summary.json").write_text(json.dumps({**s, "weights": weights}))
    before = _tree(runs.parent)
    for cmd in (["evaluate", "toy", "--npz", tiny_data["train"]], ["predict", "toy", tiny_data["valid"].split(":")[0]]):
        code, _, err = run_cli(capsys, *cmd, "--runs-dir", runs)
        assert_user_error(code, err, "summary.json")
        assert "weights must be raw or ema" in err
    assert _tree(runs.parent) == before  # nothing written anywhere, inside or outside the runs folder
    code, out, err = run_cli(capsys, "compare", "--runs-dir", runs, "--format", "json")
    assert code == 0 and json.loads(out)[0]["status"] == "corrupt", err


_json = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20), st.floats(),
                               st.text(max_size=12)),
                     lambda kids: st.one_of(st.lists(kids, max_size=3), st.dictionaries(st.text(max_size=5), kids,
                                                                                        max_size=3)), max_leaves=8)
_keys = st.sampled_from(["status", "weights", "temperature", "final_acc", "best_acc_ema", "epochs", "minutes", "name",
                         "run", "trial", "study", "message", "epochs_done", "params", "other"])


@FUZZ
@given(edits=st.dictionaries(_keys, _json, min_size=1, max_size=4), depth=st.sampled_from([0, 0, 40, 5000]))
def test_hand_edited_summaries_read_as_valid_or_one_error(tmp_path, edits, depth):
    """Whatever a summary.json holds, its reader returns values of the documented types or raises
    RunError naming the file; evaluate's weights set and temperature are then always safe."""
    run = RunDir(tmp_path)
    doc = json.dumps({"status": "finished", "weights": "ema", **edits})
    if depth:
        doc = '{"x": ' + "[" * depth + "]" * depth + ", " + doc[1:]
    (tmp_path / "summary.json").write_text(doc)
    try:
        s = run.summary()
    except RunError as e:
        assert "summary.json" in str(e)
        assert run.status() == "unknown"
        return
    assert s.get("weights") in (None, "raw", "ema")
    assert s.get("status") in (None, "running", "finished", "interrupted", "failed", "diverged", "pruned")
    for key in ("final_acc", "best_acc_ema"):
        assert s.get(key) is None or 0 <= s[key] <= 1
    assert 0.01 <= run_temperature(run, "ema") <= 100


@pytest.mark.parametrize("file, text", [
    ("summary.json", "[" * 100_000 + "]" * 100_000),
    ("summary.json", '{"a": ' * 50_000 + "1" + "}" * 50_000),
    ("config.toml", "a = " + "[" * 100_000 + "]" * 100_000 + "\n"),
    ("config.toml", "a = " + "{b = " * 3000 + "1" + "}" * 3000 + "\n"),
])
def test_deeply_nested_run_files(capsys, runs, tiny_data, file, text):
    run = resolve_run("toy", runs)
    (run.path / file).write_text(text)
    code, out, err = run_cli(capsys, "compare", "--runs-dir", runs, "--format", "json")
    assert code == 0 and len(json.loads(out)) == 1, err
    code, _, err = run_cli(capsys, "evaluate", run.path, "--npz", tiny_data["train"])
    assert_user_error(code, err, file)
    assert "nested more than" in err or "no weights" in err or "not valid" in err


def test_eval_folder_symlinked_elsewhere_is_not_written_through(capsys, runs, tmp_path, tiny_data):
    run = resolve_run("toy", runs)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (run.path / "eval").symlink_to(elsewhere)
    code, _, err = run_cli(capsys, "evaluate", "toy", "--runs-dir", runs, "--npz", tiny_data["train"])
    assert_user_error(code, err, "symbolic link")
    assert not any(elsewhere.iterdir())


def _interrupted_run(tmp_path, tiny_cfg):
    from .conftest import SigintAfter
    s = train(tiny_cfg(epochs=3), tmp_path, quiet=True, extra_cbs=[SigintAfter(0)])
    return RunDir(tmp_path / s["run"])


@pytest.mark.parametrize("case, msg", [
    ("foreign_model", "weights do not fit this run's model"),
    ("short_rng", "'rng_torch' is a torch.uint8 tensor of shape (3,)"),
    ("empty_opt", "optimizer state does not fit"),
    ("opt_shapes", "optimizer state does not fit"),
    ("foreign_ema", "ema weights do not fit"),
])
def test_checkpoint_that_loads_but_does_not_fit(capsys, tmp_path, tiny_cfg, case, msg):
    run = _interrupted_run(tmp_path, tiny_cfg)
    ckpt = torch.load(run.checkpoint_path, weights_only=True)
    if case == "foreign_model":
        ckpt["model"] = {"fc.weight": torch.zeros(3, 3)}
    elif case == "short_rng":
        ckpt["rng_torch"] = torch.zeros(3, dtype=torch.uint8)
    elif case == "empty_opt":
        ckpt["opt"] = {"state": {}, "param_groups": []}  # torch's optimizer state, of no parameter group
    elif case == "opt_shapes":
        ckpt["opt"]["state"] = {i: {k: (torch.zeros(2, 2) if isinstance(v, torch.Tensor) and v.dim() else v)
                                    for k, v in st_.items()} for i, st_ in ckpt["opt"]["state"].items()}
    else:
        ckpt["ema"] = {k: v[..., :1] if v.dim() else v for k, v in ckpt["ema"].items()}
    torch.save(ckpt, run.checkpoint_path)
    summary = (run.path / "summary.json").read_text()
    code, _, err = run_cli(capsys, "train", "--resume", run.path)
    assert_user_error(code, err, msg)
    assert "checkpoint.pt" in err
    assert (run.path / "summary.json").read_text() == summary and run.status() == "interrupted"
    assert not run.lock_path.exists()


@pytest.mark.parametrize("edit, msg", [
    (lambda t: t.replace("\n0,", "\nzero,", 1), "epoch must be 0"),
    (lambda t: t + "x" * 200_000 + "\n", "metrics.csv"),
    (lambda t: t.replace("\n0,", "\n0,abc", 1), "is not a number"),
])
def test_metrics_csv_is_checked_before_the_run_is_locked(capsys, tmp_path, tiny_cfg, edit, msg):
    run = _interrupted_run(tmp_path, tiny_cfg)
    p = run.path / "metrics.csv"
    p.write_text(edit(p.read_text()))
    code, _, err = run_cli(capsys, "train", "--resume", run.path)
    assert_user_error(code, err, msg)
    assert not run.lock_path.exists() and run.status() == "interrupted"


@pytest.mark.parametrize("lock", ['{"pid": -1, "host": "h"}', '{"pid": 0}', '{"pid": "1"}', "[" * 10_000, ""])
def test_malformed_lock_is_named(capsys, tmp_path, tiny_cfg, lock):
    run = _interrupted_run(tmp_path, tiny_cfg)
    run.lock_path.write_text(lock.replace('"h"', json.dumps(os.uname().nodename)))
    code, _, err = run_cli(capsys, "train", "--resume", run.path)
    assert_user_error(code, err, "run.lock")
    assert run.status() == "interrupted"


# --- 2. no unrecoverable moment ------------------------------------------------------------------

def _rows(path):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in RunDir(path).metrics()]


def test_signal_after_the_last_checkpoint_then_resume_finishes(tmp_path, tiny_cfg, monkeypatch):
    """SIGTERM while the temperature is fitted (after the last checkpoint): still handled, the run is
    `interrupted`, and --resume finishes it without training again."""
    cfg = tiny_cfg(epochs=2)
    full = train(cfg, tmp_path / "full", quiet=True)
    real = train_mod.temperatures

    def signalled(*a, **k):
        signal.raise_signal(signal.SIGTERM)
        return real(*a, **k)

    monkeypatch.setattr(train_mod, "temperatures", signalled)
    handler = signal.getsignal(signal.SIGTERM)
    cut = train(cfg, tmp_path / "cut", quiet=True)
    run = RunDir(tmp_path / "cut" / cut["run"])
    assert cut["status"] == "interrupted" and "after the last epoch" in cut["message"]
    assert not run.weights_path(False).exists() and not run.lock_path.exists()
    assert signal.getsignal(signal.SIGTERM) == handler  # handlers given back after the run
    monkeypatch.setattr(train_mod, "temperatures", real)
    resumed = train(None, tmp_path / "cut", quiet=True, resume=str(run.path))
    assert resumed["status"] == "finished" and resumed["epochs_done"] == 2 and set(resumed["temperature"]) == {"raw", "ema"}
    assert _rows(run.path) == _rows(tmp_path / "full" / full["run"])  # no epoch trained twice
    assert run.weights_path(True).is_file() and weights_set(run) == resumed["weights"]


def test_signal_while_the_weights_are_written_still_finishes(tmp_path, tiny_cfg, monkeypatch):
    real = RunDir.save_weights

    def signalled(self, module, ema):
        if not ema:  # once: a second signal acts at once, by design
            signal.raise_signal(signal.SIGINT)  # before this change: KeyboardInterrupt, status `running`, no weights
        return real(self, module, ema)

    monkeypatch.setattr(RunDir, "save_weights", signalled)
    s = train(tiny_cfg(epochs=1), tmp_path, quiet=True)
    run = RunDir(tmp_path / s["run"])
    assert s["status"] == "finished" and run.weights_path(True).is_file() and run.weights_path(False).is_file()


KILL = """
import os, signal, sys
from mlns_fast import runs, training as t
from mlns_fast.config import resolve_config
point, root, flags = sys.argv[1], sys.argv[2], eval(sys.argv[3])
def die(*a, **k):
    os.kill(os.getpid(), signal.SIGKILL)
if point == "checkpoint":  # right after the last epoch's checkpoint
    real = runs.RunDir.save_checkpoint
    def hook(self, state):
        real(self, state)
        if state["epoch"] == flags["epochs"] - 1:
            die()
    runs.RunDir.save_checkpoint = hook
elif point == "weights":  # after the raw weights, before the EMA weights and the summary
    real_w = runs.RunDir.save_weights
    def hook(self, module, ema):
        if ema:
            die()
        real_w(self, module, ema)
    runs.RunDir.save_weights = hook
else:  # after the weights and curves, before summary.json says finished
    real_c = runs.RunDir.write_curves
    def hook(self, rows):
        real_c(self, rows)
        die()
    runs.RunDir.write_curves = hook
t.train(resolve_config(**flags), root, quiet=True)
"""


@pytest.mark.parametrize("point", ["checkpoint", "weights", "curves"])
def test_kill_9_at_any_moment_after_training_resumes_to_a_finished_run(capsys, tmp_path, tiny_data, point):
    flags = tiny_flags(tiny_data, epochs=1)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", KILL, point, str(tmp_path), repr(flags)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    run = list_runs(tmp_path)[0]
    assert run.status() == "stale"
    code, _, err = run_cli(capsys, "train", "--resume", run.path, "--quiet")
    assert code == 0, err
    assert run.status() == "finished" and len(run.metrics()) == 1
    code, out, err = run_cli(capsys, "evaluate", run.path, "--npz", tiny_data["train"], "--json")
    assert code == 0 and json.loads(out)["n"] == 96, err


# --- 3 and 4. outputs: never over the run's own files, checked before work ------------------------

@pytest.mark.parametrize("target, fmt", [("model_ema.safetensors", "onnx"), ("checkpoint.pt", "torchscript"),
                                         ("summary.json", "onnx"), ("config.toml", "onnx")])
def test_export_never_replaces_the_runs_own_files(capsys, runs, target, fmt):
    run = resolve_run("toy", runs)
    before = {p.name: p.read_bytes() for p in run.path.iterdir() if p.is_file()}
    code, _, err = run_cli(capsys, "export", "toy", "--runs-dir", runs, "--format", fmt, "--out", run.path / target)
    assert_user_error(code, err, "run's own")
    assert {p.name: p.read_bytes() for p in run.path.iterdir() if p.is_file()} == before


def _cmd(name, out, runs, tmp_path, tiny_data):
    suite = tmp_path / "suite.toml"
    return {
        "export": ["export", "toy", "--runs-dir", runs, "--out", out],
        "compare --plot": ["compare", "--runs-dir", runs, "--plot", out],
        "data synth": ["data", "synth", "--n", "4", "--out", str(out) + ".npz"],
        "data demo": ["data", "demo", "--out", out],
        "report": ["report", suite, "--runs-dir", runs, "--out", out],
        "lr-find": ["lr-find", "--quiet", "--num-it", "20", "--out", out, *flag_args(tiny_flags(tiny_data))],
        "data preview": ["data", "preview", "--out", out],
    }[name]


@pytest.mark.parametrize("name", ["export", "compare --plot", "data synth", "data demo", "report", "lr-find",
                                  "data preview"])
@pytest.mark.parametrize("where", ["/proc/nope/x", "/sys/x", "file/x", "folder"])
def test_unwritable_outputs_are_one_line(capsys, runs, tmp_path, tiny_data, monkeypatch, name, where):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "file").write_text("a file where a folder goes")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder.npz").mkdir()  # data synth's --out must end in .npz
    (tmp_path / "suite.toml").write_text('title = "t"\n')
    if name == "data demo" and where == "folder":
        where = "file"  # a folder is what data demo wants; a file is not
    before = _tree(tmp_path)
    code, _, err = run_cli(capsys, *_cmd(name, where, runs, tmp_path, tiny_data))
    assert_user_error(code, err, where)
    assert _tree(tmp_path) == before


@pytest.mark.parametrize("reading, suffix", [([], ".tta.onnx"), (["--no-tta"], ".onnx")])
def test_onnx_cache_that_is_a_folder_is_named_as_such(capsys, runs, tiny_data, reading, suffix):
    run = resolve_run("toy", runs)
    folder = run.path / finished_weights(run).with_suffix(suffix).name
    folder.mkdir()
    try:
        code, _, err = run_cli(capsys, "predict", "toy", tiny_data["valid"].split(":")[0], "--runs-dir", runs,
                               "--backend", "onnx", *reading)
        assert_user_error(code, err, "is a folder where the run's")
        assert "--out" not in err
    finally:
        folder.rmdir()


def test_a_huge_value_is_not_echoed_back(capsys, tmp_path):
    code, _, err = run_cli(capsys, "train", "--quiet", "--runs-dir", tmp_path / "runs", "--name", "x/" * 5_000_000)
    assert_user_error(code, err, "--name")
    assert len(err) < 500


# --- 5. labels.csv ---------------------------------------------------------------------------------

def _folder(tmp_path, table: str, n: int = 2):
    import cv2
    d = tmp_path / "imgs"
    d.mkdir(exist_ok=True)
    for i in range(n):
        cv2.imwrite(str(d / f"{'ab'[i]}.png"), np.full((40, 168), 40 * i, np.uint8))
    (d / "labels.csv").write_text(table, encoding="utf-8")
    return d


@pytest.mark.parametrize("label, value", [("+10", 10), ("1e1", 10), ("10.0", 10), (" 7 ", 7)])
def test_numeric_first_rows_are_data_not_a_header(tmp_path, label, value):
    s = load_folder(_folder(tmp_path, f"a.png,{label}\nb.png,3\n"))
    assert s.sums.tolist() == [value, 3]


@pytest.mark.parametrize("label, msg", [("nan", "finite"), ("inf", "finite"), ("1e400", "0..36"), ("-inf", "finite"),
                                        ("37", "0..36"), ("-1", "0..36"), ("3.5", "whole"), ("1" * 5000, "0..36"),
                                        ("3\x00", "NUL"), ("", "got 0 numbers")])
def test_bad_first_row_labels_are_named(capsys, tmp_path, label, msg):
    d = _folder(tmp_path, f"a.png,{label}\nb.png,3\n")
    with pytest.raises(DataError, match=msg) as e:
        load_folder(d)
    assert "row 1" in str(e.value)
    code, _, err = run_cli(capsys, "data", "preview", "--source", d, "--out", tmp_path / "p.png")
    assert_user_error(code, err, "row 1")


def test_a_header_is_dropped_and_a_digit_out_of_range_named(tmp_path):
    assert len(load_folder(_folder(tmp_path, "file,sum\na.png,1\nb.png,2\n"))) == 2
    with pytest.raises(DataError, match="row 1: labels must be in 0..9, got '12'"):
        load_folder(_folder(tmp_path, "a.png,13,1,2,12,-2\nb.png,3\n"))


def test_a_field_over_the_csv_limit_is_one_line(capsys, tmp_path):
    d = _folder(tmp_path, "a.png,1\n" + "b" * 200_000 + ".png,3\n")
    code, _, err = run_cli(capsys, "data", "preview", "--source", d, "--out", tmp_path / "p.png")
    assert_user_error(code, err, "row 2")
    assert len(err) < 500


@FUZZ
@given(label=st.text(alphabet="0123456789+-.eEinfaINFA x", min_size=1, max_size=8))
def test_no_data_row_is_dropped_silently(tmp_path, label):
    """Whatever the first row's label, the load keeps every data row or refuses with a row number."""
    d = _folder(tmp_path, f"a.png,{label}\nb.png,3\n")
    try:
        s = load_folder(d)
    except DataError as e:
        assert "row 1" in str(e)
        return
    try:
        float(label)
    except ValueError:  # not a number at all: a header
        assert len(s) == 1 and label.strip()
    else:
        assert len(s) == 2


# --- 6. sizes checked before allocation or decoding --------------------------------------------

def _npy_header(shape, dtype="|u1") -> bytes:
    header = f"{{'descr': '{dtype}', 'fortran_order': False, 'shape': {shape}, }}".encode()
    header += b" " * (63 - len(header) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header


def test_npy_header_claiming_a_petabyte(capsys, tmp_path):
    (tmp_path / "x.npy").write_bytes(_npy_header((10**9, 40, 168_000)) + b"\0" * 100)
    np.save(tmp_path / "y.npy", np.zeros(3, np.int64))
    with pytest.raises(DataError, match="header says shape"):
        load_npy_pair(tmp_path / "x.npy", tmp_path / "y.npy")
    code, _, err = run_cli(capsys, "data", "preview", "--source", f"{tmp_path / 'x.npy'}:{tmp_path / 'y.npy'}",
                           "--out", tmp_path / "p.png")
    assert_user_error(code, err, "truncated or forged")


def test_npz_member_header_lying_about_its_size(tmp_path):
    import zipfile
    with zipfile.ZipFile(tmp_path / "d.npz", "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("images.npy", _npy_header((10**7, 40, 168)) + b"\0" * 6720)
        z.writestr("labels.npy", _npy_header((1,), "<i8") + b"\0" * 8)
    with pytest.raises(DataError, match=r"\[images\].*truncated or forged"):
        load_source(str(tmp_path / "d.npz"))


def test_array_and_npz_over_the_limit_are_refused_before_inflating(tmp_path, monkeypatch):
    np.savez_compressed(tmp_path / "d.npz", images=np.zeros((1000, 40, 168), np.uint8), labels=np.zeros(1000))
    np.save(tmp_path / "x.npy", np.zeros((1000, 40, 168), np.uint8))
    assert (tmp_path / "d.npz").stat().st_size < 100_000  # a bomb in miniature: 6.7 MB inflated
    monkeypatch.setattr(arrays, "MAX_ARRAY_BYTES", 1 << 20)
    for source in (str(tmp_path / "d.npz"), f"{tmp_path / 'x.npy'}:{tmp_path / 'x.npy'}"):
        with pytest.raises(DataError, match="over the limit"):
            load_source(source)


def _png_claiming(path, w, h):
    """A valid small PNG whose header (IHDR, CRC fixed) claims w x h pixels."""
    import cv2
    cv2.imwrite(str(path), np.zeros((4, 4), np.uint8))
    data = bytearray(path.read_bytes())
    data[16:24] = struct.pack(">II", w, h)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    path.write_bytes(bytes(data))


def test_image_dimensions_are_checked_before_decoding(capsys, tmp_path):
    _png_claiming(tmp_path / "big.png", 30000, 30000)  # 870 KB in the issue; 70 bytes here
    with pytest.raises(DataError, match=r"big.png is over the limit of 16,777,216 pixels per image \(900,000,000 pixels\)"):
        load_images([tmp_path / "big.png"])
    _png_claiming(tmp_path / "wide.png", 5000, 5000)  # over our limit, under PIL's
    with pytest.raises(DataError, match="wide.png is 5000x5000 pixels, over the limit"):
        load_images([tmp_path / "wide.png"])
    d = _folder(tmp_path, "a.png,3\n", n=1)
    _png_claiming(d / "a.png", 30000, 30000)
    with pytest.raises(DataError, match="row 1: a.png is over the limit"):
        load_folder(d)
    code, _, err = run_cli(capsys, "data", "preview", "--source", d, "--out", tmp_path / "p.png")
    assert_user_error(code, err, "over the limit")


def test_gzip_bank_that_inflates_is_bounded(capsys, tmp_path, monkeypatch):
    bank = tmp_path / "bank"
    bank.mkdir()
    with gzip.open(bank / "train-images-idx3-ubyte.gz", "wb") as f:
        f.write(b"\0\0\x08\x03" + struct.pack(">III", 4000, 28, 28) + b"\0" * (4000 * 784))
    with gzip.open(bank / "train-labels-idx1-ubyte.gz", "wb") as f:
        f.write(b"\0\0\x08\x01" + struct.pack(">I", 4000) + bytes(range(10)) * 400)
    monkeypatch.setattr(arrays, "MAX_INFLATED_BYTES", 1 << 20)
    code, _, err = run_cli(capsys, "data", "synth", "--n", "4", "--bank", bank, "--out", tmp_path / "s.npz")
    assert_user_error(code, err, "unpacks to over")
    with gzip.open(bank / "train-images-idx3-ubyte.gz", "wb") as f:  # a header that lies about its size
        f.write(b"\0\0\x08\x03" + struct.pack(">III", 10**6, 28, 28) + b"\0" * 784)
    code, _, err = run_cli(capsys, "data", "synth", "--n", "4", "--bank", bank, "--out", tmp_path / "s.npz")
    assert_user_error(code, err, "IDX header says")
    assert not (tmp_path / "s.npz").exists()


@pytest.mark.parametrize("cmd, folder", [(["evaluate"], "eval"), (["robustness", "--set", "demo-test"], "robustness")])
@pytest.mark.parametrize("kind", ["file", "link"])
def test_results_folders_of_a_run_are_checked_before_scoring(capsys, runs, tmp_path, cmd, folder, kind):
    run = resolve_run("toy", runs)
    outside = tmp_path / "outside"
    outside.mkdir()
    if kind == "file":
        (run.path / folder).write_text("a file where the results folder goes")
    else:
        (run.path / folder).symlink_to(outside)
    code, _, err = run_cli(capsys, *cmd, "toy", "--runs-dir", runs)
    assert_user_error(code, err, "cannot write" if kind == "file" else "symbolic link")
    assert not any(outside.iterdir())
