"""The CLI end to end at toy size (the README's commands), and every user error -> one line, exit 2."""
import json

import numpy as np
import pytest
import torch

from mlns_fast.cli import main

from .conftest import assert_user_error, flag_args, run_cli, tiny_flags


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, tiny_data):
    """One toy run trained through the CLI (epoch table only), shared by the read-only command tests:
    the runs folder, what training printed, and what it logged."""
    import contextlib
    import io
    import logging
    runs = tmp_path_factory.mktemp("runs")
    out, notes = io.StringIO(), []
    handler = logging.Handler()
    handler.emit = lambda record: notes.append(record.getMessage())
    logger, level = logging.getLogger("mlns_fast"), logging.getLogger("mlns_fast").level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        with contextlib.redirect_stdout(out):
            code = main(["train", "--progress", "table", "--name", "toy", "--runs-dir", str(runs),
                         *flag_args(tiny_flags(tiny_data))])
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert code == 0
    return runs, out.getvalue(), notes


@pytest.fixture(scope="module")
def trained(trained_run):
    return trained_run[0]


def test_train_progress_table_and_the_run_folder_named_at_the_start(trained_run):
    runs, out, notes = trained_run
    (folder,) = runs.iterdir()
    lines = out.splitlines()
    assert "\r" not in out and lines[0].split()[:3] == ["epoch", "train_loss", "valid_loss"]
    assert [line.split()[0] for line in lines[1:3]] == ["0", "1"]  # one row per epoch, no bars
    assert f"run folder: {folder}" in notes
    # what the run computes on, named as it starts (its minutes mean little without it), and kept in its summary
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["device"].startswith("cpu (") and torch.backends.cpu.get_cpu_capability() in summary["device"]
    assert f"training on {summary['device']} in fp32 ({torch.get_num_threads()} threads)" in notes
    steps = (folder / "steps.csv").read_text().splitlines()
    assert steps[0] == "step,epoch,loss,smooth_loss,lr"
    # 96 real images at 8 a batch (half of 16; mix 0.5): 12 steps an epoch, 2 epochs
    assert [(int(r.split(",")[0]), int(r.split(",")[1])) for r in steps[1:]] == \
        [(k, (k - 1) // 12) for k in range(1, 25)]


def test_help_shows_defaults_and_brackets_and_the_version(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")
    code, out, _ = run_cli(capsys, "train", "--help")
    assert code == 0
    line = lambda flag: next(x for x in out.splitlines() if f" {flag} " in x)
    assert "[default: (9)]" in line("--epochs") and "[default: (0.003)]" in line("--lr")
    assert "[default: (128)]" in line("--bs") and "[default: (0.99)]" in line("--ema")
    assert "[default: (--augment)]" in line("--augment")
    _, out, _ = run_cli(capsys, "sweep", "--help")
    assert "sweep TOML: [defaults], [space], [study]" in out
    _, out, _ = run_cli(capsys, "suite", "--help")
    assert "[[run]]" in out
    code, out, _ = run_cli(capsys, "--version")
    assert code == 0 and out.startswith("mlns-fast ") and len(out.split()) == 2
    code, _, err = run_cli(capsys, "train", "--progress", "bars")
    assert_user_error(code, err, "--progress must be one of bar, table, none")


def test_outputs_default_to_the_runs_folder(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may land in the working directory (the repository)
    code, out, _ = run_cli(capsys, "data", "preview", "--n", "4", "--runs-dir", "runs")
    assert code == 0 and (tmp_path / "runs" / "preview.png").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]


def test_trained_run_is_listed_by_compare(trained, capsys):
    code, out, err = run_cli(capsys, "compare", "--runs-dir", trained, "--format", "json")
    rows = json.loads(out)
    assert code == 0 and len(rows) == 1 and rows[0]["status"] == "finished" and rows[0]["name"] == "toy"


def test_evaluate_json_and_files(trained, capsys, tmp_path):
    from mlns_fast.data.demo import demo_split
    from mlns_fast.data.sources import save_npz
    save_npz(demo_split("test", with_digits=True).subset(slice(0, 96)), tmp_path / "t.npz")
    code, out, _ = run_cli(capsys, "evaluate", "latest", "--runs-dir", trained, "--npz", tmp_path / "t.npz", "--json")
    res = json.loads(out)
    from mlns_fast.reading import load_trained, predict_arrays
    from mlns_fast.runs import resolve_run
    t = demo_split("test", with_digits=True).subset(slice(0, 96))
    pred = predict_arrays(load_trained(resolve_run("latest", trained), tta=True)[1], t.images)  # the default reading
    assert code == 0 and res["n"] == 96 and res["sum_accuracy"] == pytest.approx((pred["sum"] == t.sums).mean())
    assert res["digit_accuracy"] == pytest.approx((pred["digits"] == t.digits).mean())
    assert any(f.endswith("confusion.png") for f in res["files"])
    code, out, _ = run_cli(capsys, "evaluate", "toy", "--runs-dir", trained, "--raw")
    assert code == 0 and "demo:test" in out and "raw weights, TTA, n=2000" in out
    t = json.loads((trained / next(trained.iterdir()).name / "summary.json").read_text())["temperature"]["raw"]
    assert f"at temperature {t:.3g}" in out and "; ECE 0." in out


@pytest.mark.parametrize("command", [("evaluate", "toy"), ("robustness", "toy", "--set", "tight"), ("predict", "toy")])
def test_bad_heap_keep_setting_is_a_user_error_before_any_output(command, trained, capsys, tmp_path, monkeypatch):
    """A reading command refuses a bad $MLNS_FAST_HEAP_KEEP in one line, exit 2, and writes nothing."""
    np.save(tmp_path / "x.npy", np.zeros((2, 40, 168), np.uint8))
    monkeypatch.setenv("MLNS_FAST_HEAP_KEEP", "yes")
    before = sorted(p.relative_to(trained) for p in trained.rglob("*"))
    extra = [str(tmp_path / "x.npy")] if command[0] == "predict" else []
    code, out, err = run_cli(capsys, *command, *extra, "--runs-dir", trained)
    assert_user_error(code, err, "$MLNS_FAST_HEAP_KEEP='yes'")
    assert out == "" and sorted(p.relative_to(trained) for p in trained.rglob("*")) == before


def test_evaluate_takes_real_in_every_format(trained, capsys, tmp_path, tiny_data):
    from mlns_fast.data.sources import load_npz
    s = load_npz(tiny_data["train"]).subset(slice(0, 20))
    np.save(tmp_path / "x.npy", s.images)
    np.save(tmp_path / "y.npy", s.sums)
    (tmp_path / "d").mkdir()
    import cv2
    for i, im in enumerate(s.images):
        cv2.imwrite(str(tmp_path / "d" / f"{i}.png"), im)
    (tmp_path / "d" / "labels.csv").write_text("".join(f"{i}.png,{v}\n" for i, v in enumerate(s.sums)))
    results = []
    for spec in (f"{tmp_path / 'x.npy'}:{tmp_path / 'y.npy'}", tiny_data["train"], str(tmp_path / "d")):
        code, out, err = run_cli(capsys, "evaluate", "toy", "--runs-dir", trained, "--real", spec, "--raw", "--json")
        assert code == 0, err
        results.append(json.loads(out))
    assert [r["n"] for r in results] == [20, 96, 20]
    assert results[0]["sum_accuracy"] == results[2]["sum_accuracy"]  # the same 20 images, two formats
    code, _, err = run_cli(capsys, "evaluate", "toy", "--runs-dir", trained, "--real", tiny_data["train"],
                           "--npz", tiny_data["train"])
    assert_user_error(code, err, "give one of --real")


def test_predict_table_and_json(trained, capsys, tmp_path):
    x = np.load(str(tiny_data_images(tmp_path)))
    code, out, _ = run_cli(capsys, "predict", "latest", tmp_path / "x.npy", "--runs-dir", trained, "--json")
    lines = [json.loads(line) for line in out.strip().splitlines()]
    assert code == 0 and len(lines) == len(x)
    for row in lines:
        assert 0 <= row["sum"] <= 36 and len(row["digits"]) == 4 and 0 < row["confidence"] <= 1
        assert row["input"].endswith("]")
    code, out, _ = run_cli(capsys, "predict", "latest", tmp_path / "x.npy", "--runs-dir", trained)
    assert code == 0 and "confidence" in out


def test_tta_averages_shifted_copies(trained, capsys, tmp_path):
    import torch
    from mlns_fast.reading import ShiftTTA, load_trained, read_outputs
    from mlns_fast.runs import resolve_run
    _, model = load_trained(resolve_run("toy", trained))
    _, tta = load_trained(resolve_run("toy", trained), tta=True)
    x = torch.from_numpy(np.load(str(tiny_data_images(tmp_path)))[:, None].astype(np.float32) / 255)
    net = getattr(tta.model, "model", tta.model)  # inside the temperature's wrapper, if the run fitted one
    assert isinstance(tta, ShiftTTA) and tta.fit is not None and net.fit is None  # shifts after --zoom's fit
    pad = torch.nn.functional.pad
    with torch.no_grad():
        out, plain = tta(x), model(x).float().log_softmax(-1)
        fitted = tta.fit(x)
        shifted = tta.model(pad(fitted, (0, 2))[..., 2:]).float().log_softmax(-1)  # content 2 px left
        own = torch.stack([tta.model(pad(fitted, (2, 2, 2, 2))[..., 2 + dy:42 + dy, 2 + dx:170 + dx]).float()
                           .log_softmax(-1) for dx, dy in ShiftTTA.SHIFTS]).mean(0)
    assert out.shape == plain.shape == (3, 4, 10)
    assert torch.allclose(out.exp().sum(-1), torch.ones(3, 4), atol=0.2)  # a mean of log-probs: near-normalised
    assert not torch.allclose(out, plain) and not torch.allclose(shifted, plain)
    assert torch.allclose(out, own, atol=1e-5)  # the mean over the fitted image's shifted copies
    # the CLI reads through TTA by default (--tta says the same), the plain network with --no-tta
    readings = {}
    for flag in ("--tta", None, "--no-tta"):
        code, out, _ = run_cli(capsys, "predict", "latest", tmp_path / "x.npy", "--runs-dir", trained, "--json",
                               *([flag] if flag else []))
        readings[flag] = [json.loads(line) for line in out.strip().splitlines()]
        assert code == 0 and len(readings[flag]) == 3
    rows = readings["--tta"]
    assert readings[None] == rows
    with torch.no_grad():
        want = read_outputs(tta(x))  # torch's TTA readout of the same images
    assert [r["sum"] for r in rows] == want["sum"].tolist() and [r["digits"] for r in rows] == want["digits"].tolist()
    assert max(abs(r["confidence"] - c) for r, c in zip(rows, want["confidence"])) <= 1e-4
    with torch.no_grad():  # --no-tta: the plain network's readout (an untrained net's confidences differ only
        plain_read = read_outputs(model(x))  # past the rows' 4 decimals, so this compares with torch, not TTA)
    assert [r["digits"] for r in readings["--no-tta"]] == plain_read["digits"].tolist()
    assert max(abs(r["confidence"] - c) for r, c in zip(readings["--no-tta"], plain_read["confidence"])) <= 1e-4
    for flag, kind in ((None, True), ("--no-tta", False)):
        code, out, _ = run_cli(capsys, "evaluate", "toy", "--runs-dir", trained, "--json", *([flag] if flag else []))
        res = json.loads(out)
        assert code == 0 and res["tta"] is kind and any(f.split("/")[-2].endswith("-tta") == kind for f in res["files"])
    # the ONNX backend reads through the exported TTA graph: the same sums, digits and confidences
    code, out, _ = run_cli(capsys, "predict", "latest", tmp_path / "x.npy", "--runs-dir", trained, "--json",
                           "--backend", "onnx")
    onnx_rows = [json.loads(line) for line in out.strip().splitlines()]
    assert code == 0 and [(r["sum"], r["digits"]) for r in onnx_rows] == [(r["sum"], r["digits"]) for r in rows]
    assert max(abs(a["confidence"] - b["confidence"]) for a, b in zip(rows, onnx_rows)) <= 2e-4
    assert list(resolve_run("toy", trained).path.glob("*.tta.onnx"))


def tiny_data_images(tmp_path):
    from mlns_fast.data.demo import demo_split
    np.save(tmp_path / "x.npy", demo_split("test").images[:3])
    return tmp_path / "x.npy"


def test_export_onnx_and_predict_with_onnxruntime(trained, capsys, tmp_path):
    code, out, _ = run_cli(capsys, "export", "latest", "--runs-dir", trained, "--out", tmp_path / "m.onnx")
    assert code == 0 and (tmp_path / "m.onnx").stat().st_size > 1000
    tiny_data_images(tmp_path)
    code, out, _ = run_cli(capsys, "predict", "latest", tmp_path / "x.npy", "--runs-dir", trained, "--json",
                           "--backend", "onnx")
    onnx_rows = [json.loads(line) for line in out.strip().splitlines()]
    code, out, _ = run_cli(capsys, "predict", "latest", tmp_path / "x.npy", "--runs-dir", trained, "--json")
    torch_rows = [json.loads(line) for line in out.strip().splitlines()]
    assert [r["sum"] for r in onnx_rows] == [r["sum"] for r in torch_rows]
    code, out, _ = run_cli(capsys, "export", "latest", "--runs-dir", trained, "--format", "torchscript",
                           "--out", tmp_path / "m.pt")
    assert code == 0 and (tmp_path / "m.pt").is_file()


def test_data_commands(capsys, tmp_path):
    code, out, _ = run_cli(capsys, "data", "preview", "--source", "synthetic", "--out", tmp_path / "g.png", "--n", "8")
    assert code == 0 and (tmp_path / "g.png").stat().st_size > 5000
    code, out, _ = run_cli(capsys, "data", "synth", "--n", "64", "--out", tmp_path / "s.npz", "--glyphs", "fonts",
                           "--faces", "hershey")
    assert code == 0 and "64 images" in out
    code, out, _ = run_cli(capsys, "data", "synth", "--n", "64", "--out", tmp_path / "t.npz", "--glyphs", "fonts",
                           "--faces", "ttf")
    hershey, ttf = np.load(tmp_path / "s.npz"), np.load(tmp_path / "t.npz")
    assert code == 0 and (hershey["labels"] == ttf["labels"]).all() and not (hershey["images"] == ttf["images"]).all()
    # not given, --glyphs / --faces are the --layout's own: tight its handwriting, train the training default's
    rendered = {}
    for layout, glyphs in (("tight", None), ("tight", "handwriting"), ("train", None), ("train", "mixed"),
                           ("train", "handwriting")):
        f = tmp_path / f"{layout}-{glyphs}.npz"
        code, _, _ = run_cli(capsys, "data", "synth", "--n", "16", "--out", f, "--layout", layout,
                             *(["--glyphs", glyphs] if glyphs else []))
        rendered[layout, glyphs] = np.load(f)["images"]
    assert (rendered["tight", None] == rendered["tight", "handwriting"]).all()
    assert (rendered["train", None] == rendered["train", "mixed"]).all()
    assert not (rendered["train", None] == rendered["train", "handwriting"]).all()
    code, _, err = run_cli(capsys, "data", "synth", "--n", "8", "--out", tmp_path / "u.npz", "--faces", "arial")
    assert code == 2 and "faces" in err and err.count("\n") == 1 and not (tmp_path / "u.npz").exists()
    code, out, _ = run_cli(capsys, "data", "demo", "--out", tmp_path / "demo")
    assert code == 0 and np.load(tmp_path / "demo" / "data0.npy").shape == (10000, 40, 168)
    assert np.load(tmp_path / "demo" / "lab2.npy").shape == (2000,)
    code, out, _ = run_cli(capsys, "data", "preview", "--source", str(tmp_path / "s.npz"), "--out", tmp_path / "p.png")
    assert code == 0 and (tmp_path / "p.png").is_file()


def test_lr_find(capsys, tmp_path, tiny_data):
    flags = tiny_flags(tiny_data, data="synthetic", synthetic_per_epoch=160)
    code, out, _ = run_cli(capsys, "lr-find", "--quiet", "--num-it", "30", "--out", tmp_path / "lr.png",
                           *flag_args(flags))
    assert code == 0 and (tmp_path / "lr.png").is_file()
    for k in ("valley", "slide", "minimum", "steep", "edge"):
        assert k in out
    rows = (tmp_path / "lr.csv").read_text().splitlines()
    assert rows[0] == "lr,smoothed_loss" and 10 < len(rows) <= 31  # the whole curve (it may stop on divergence)
    lrs = [float(r.split(",")[0]) for r in rows[1:]]
    assert lrs == sorted(lrs) and lrs[0] < 1e-5


def test_edge_suggestion_is_half_the_lr_where_the_loss_climbs():
    import torch
    from mlns_fast.training import edge
    lrs = torch.logspace(-6, 0, 61)  # 10 points per decade
    plateau_then_dip_then_rise = torch.cat([torch.full((40,), 2.5), torch.linspace(2.5, 2.0, 10),
                                            torch.linspace(2.0, 4.0, 11)])
    lr, (x, y) = edge(lrs, plateau_then_dip_then_rise, 100)
    assert lr == pytest.approx(float(lrs[51]) / 2)  # 2.2 > 2.0 * 1.05 first at 51; half of that lr
    # the point the plot marks is the curve at the suggested lr (10 points a decade: half is 3 points back)
    assert x == pytest.approx(float(lrs[48])) and y == pytest.approx(float(plateau_then_dip_then_rise[48]))
    flat = torch.full((61,), 2.5)  # never climbs: the edge is the last lr tried
    assert edge(lrs, flat, 100)[0] == pytest.approx(0.5)


def test_curve_warnings_name_the_curves_that_mislead():
    import torch
    from mlns_fast.training import curve_warnings
    lrs = torch.logspace(-6, 0, 61)
    dip_then_rise = torch.cat([torch.linspace(2.5, 1.0, 40), torch.linspace(1.0, 4.0, 21)])
    assert curve_warnings(lrs, dip_then_rise) == []
    flat_then_rise = torch.cat([torch.full((50,), 2.5), torch.linspace(2.5, 4.0, 11)])
    assert ["plateau" in w for w in curve_warnings(lrs, flat_then_rise)] == [True]
    never_rises = torch.linspace(2.5, 1.0, 61)
    assert ["end of the sweep" in w for w in curve_warnings(lrs, never_rises)] == [True]


def test_lr_find_short_curve_warns_instead_of_failing(capsys, tmp_path, tiny_data):
    """fastai cuts a tenth and 5 points off the curve and its `slide` rule looks 16 points back: at
    --num-it 20 it used to fail the whole finder with an IndexError."""
    flags = tiny_flags(tiny_data, data="synthetic", synthetic_per_epoch=160)
    code, out, err = run_cli(capsys, "lr-find", "--quiet", "--num-it", "20", "--out", tmp_path / "lr.png",
                             *flag_args(flags))
    assert code == 0 and "slide: the curve is too short" in err and "edge:" in out


def test_lr_find_warmup_trains_first_then_restores(tiny_data, tmp_path, monkeypatch):
    """--warmup takes optimizer steps before the sweep; fastai's finder still restores its start."""
    import torch
    from fastai.learner import Learner
    from mlns_fast.config import resolve_config
    from mlns_fast.training import lr_find
    steps, starts = [], []
    real_fit, real_lr_find = Learner.fit, Learner.lr_find

    def fit(self, n_epoch, *a, **k):
        out = real_fit(self, n_epoch, *a, **k)
        steps.append(self.train_iter)
        return out

    def finder(self, *a, **k):
        starts.append({n: p.detach().clone() for n, p in self.model.named_parameters()})
        res = real_lr_find(self, *a, **k)
        assert all(torch.equal(p, starts[0][n]) for n, p in self.model.named_parameters())
        return res

    monkeypatch.setattr(Learner, "fit", fit)
    monkeypatch.setattr(Learner, "lr_find", finder)
    cfg = resolve_config(**tiny_flags(tiny_data, data="synthetic", synthetic_per_epoch=160))
    passes = []  # (finder started?, training?) of every pass over a loader
    real_all_batches = Learner.all_batches
    monkeypatch.setattr(Learner, "all_batches",
                        lambda self: (passes.append((len(starts), self.training)), real_all_batches(self))[1])
    cfg = resolve_config(**tiny_flags(tiny_data, data="synthetic", synthetic_per_epoch=32))  # 2 steps an epoch
    res = lr_find(cfg, tmp_path / "lr.png", quiet=True, num_it=30, warmup=7)
    assert steps[0] == 7 and len(starts) == 1
    assert set(res) == {"valley", "slide", "minimum", "steep", "edge", "warnings"}
    assert passes[:4] == [(0, True)] * 4 and (0, False) not in passes  # 4 warm-up epochs, none validated


# --- user errors: one line, exit 2, no run folder -----------------------------------------------
def _bad_inputs(tmp_path, tiny_data):
    import pickle
    obj = np.empty(3, dtype=object)
    np.save(tmp_path / "obj.npy", obj, allow_pickle=True)
    np.save(tmp_path / "y.npy", np.zeros(3, int))
    (tmp_path / "nolabels").mkdir(exist_ok=True)
    (tmp_path / "bad.toml").write_text("[train]\nepochz = 1\n")
    (tmp_path / "type.toml").write_text("[train]\nepochs = 'x'\n")
    np.save(tmp_path / "tiny_x.npy", np.zeros((3, 1, 168), np.uint8))
    np.save(tmp_path / "lab99.npy", np.full(3, 99))
    np.save(tmp_path / "ok_x.npy", np.zeros((3, 40, 168), np.uint8))
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"a": 1}, f)
    return [
        (["--arch", "resnet5"], "unknown architecture"),
        (["--head", "both"], "--head"),
        (["--data", "web"], "--data"),
        (["--precision", "fp8"], "--precision"),
        (["--faces", "helvetica"], "--faces"),
        (["--ema", "1.0"], "--ema"),
        (["--epochs", "0"], "--epochs"),
        (["--bs", "0"], "--bs"),
        (["--lr", "-1"], "--lr"),
        (["--real", tmp_path / "missing.npz"], "file not found"),
        (["--real", tmp_path / "nolabels"], "labels.csv"),
        (["--real", f"{tmp_path / 'obj.npy'}:{tmp_path / 'y.npy'}"], "pickled"),
        (["--real", f"{tmp_path / 'tiny_x.npy'}:{tmp_path / 'y.npy'}"], "too small"),
        (["--real", f"{tmp_path / 'ok_x.npy'}:{tmp_path / 'lab99.npy'}"], "0..36"),
        (["--backbone-weights", tmp_path / "evil.pt"], "not a loadable weights file"),
        (["--backbone-weights", "timm/resnet18.a1_in1k", "--arch", "resnet18"], "nothing is downloaded"),
        (["--prune-stages", "1", "--real", tiny_data["train"], "--valid", tiny_data["valid"]], "no stages to remove"),
        (["--config", tmp_path / "bad.toml"], "unknown key 'epochz'"),
        (["--config", tmp_path / "type.toml"], "epochs must be int"),
        (["--config", tmp_path / "none.toml"], "not found"),
        (["--bogus-option"], "No such option"),
        (["--bs", "abc"], "--bs"),
    ]


def test_bad_train_inputs(capsys, tmp_path, tiny_data):
    runs = tmp_path / "runs"
    for args, msg in _bad_inputs(tmp_path, tiny_data):
        code, out, err = run_cli(capsys, "train", "--runs-dir", runs, "--quiet", *args)
        assert code == 2, (args, err)
        assert msg in err and err.count("\n") == 1 and "Traceback" not in err, (args, err)
        assert not runs.exists() or not any(runs.iterdir()), args


def test_unknown_arch_is_refused_before_any_data_is_built(capsys, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("MLNS_FAST_CACHE", str(cache))  # empty: the demo set would be built here
    code, _, err = run_cli(capsys, "train", "--runs-dir", tmp_path / "runs", "--quiet", "--arch", "resnet5O")
    assert code == 2 and err.count("\n") == 1 and "unknown architecture" in err, err
    assert not cache.exists() or not any(cache.iterdir())
    assert not (tmp_path / "runs").exists()


def test_bad_run_references(capsys, tmp_path, trained):
    partial = trained / "20000101-000000-partial"
    partial.mkdir(exist_ok=True)
    (partial / "config.toml").write_text('name = "partial"\n')
    (partial / "summary.json").write_text('{"status": "interrupted"}')
    for args, msg in [
        (["evaluate", "nope", "--runs-dir", trained], "unknown run"),
        (["evaluate", partial], "partial"),
        (["predict", "nope", "x.png", "--runs-dir", trained], "unknown run"),
        (["export", partial], "partial"),
        (["export", "latest", "--runs-dir", trained, "--format", "tflite"], "--format"),
        (["evaluate", "latest", "--runs-dir", tmp_path / "empty"], "no runs yet"),
        (["predict", "toy", tmp_path / "none.png", "--runs-dir", trained], "file not found"),
        (["train", "--resume", "toy", "--runs-dir", trained], "already trained"),
        (["compare", "--runs-dir", trained, "--sort", "colour"], "unknown column"),
        (["compare", "--runs-dir", trained, "--filter", "arch"], "COLUMN=VALUE"),
    ]:
        code, out, err = run_cli(capsys, *args)
        assert code == 2 and msg in err and err.count("\n") == 1, (args, err)
    import shutil
    shutil.rmtree(partial)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="fp16 is valid where CUDA exists")
def test_fp16_without_cuda_is_a_user_error(capsys, tmp_path):
    code, _, err = run_cli(capsys, "train", "--precision", "fp16", "--runs-dir", tmp_path / "runs", "--quiet")
    assert code == 2 and "needs a CUDA GPU" in err and not (tmp_path / "runs").exists()
