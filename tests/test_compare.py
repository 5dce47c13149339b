import csv
import io
import json

import pytest

from mlns_fast import comparison as cmp
from mlns_fast.config import resolve_config
from mlns_fast.errors import ConfigError
from mlns_fast.runs import RunDir


def _fake_run(root, name, arch, acc, status="finished", ema=0.99, epochs=3):
    run = RunDir.create(root, resolve_config(name=name, arch=arch, ema=ema))
    rows = [{"epoch": e, "train_loss": 1.0 / (e + 1), "valid_loss": 1.0, "acc": acc * (e + 1) / epochs,
             "acc_ema": acc, "lr": 1e-3, "seconds": 1.0} for e in range(epochs)]
    run.write_metrics(rows)
    run.write_summary({"status": status, "name": name, "arch": arch, "head": "digits", "data": "mixed", "ema": ema,
                       "epochs": epochs, "params": 1000, "minutes": 0.5, "best_acc": acc, "final_acc": acc,
                       "best_acc_ema": acc, "final_acc_ema": acc, "run": run.name})
    return run


@pytest.fixture
def runs(tmp_path):
    _fake_run(tmp_path, "a", "resnet50", 0.9)
    _fake_run(tmp_path, "b", "mlns_cnn", 0.97)
    _fake_run(tmp_path, "c", "resnet50", 0.3, status="interrupted")
    broken = _fake_run(tmp_path, "d", "resnet18", 0.5)
    (broken.path / "summary.json").write_text("{not json")
    return tmp_path


def test_sort_top_filter(runs):
    rows = cmp.select_rows(runs, sort="best_acc")
    assert [r["name"] for r in rows] == ["b", "a", "c", "d"]  # unknown figures last
    assert [r["name"] for r in cmp.select_rows(runs, sort="name")] == ["a", "b", "c", "d"]
    assert [r["name"] for r in cmp.select_rows(runs, sort="best_acc", top=2)] == ["b", "a"]
    assert {r["name"] for r in cmp.select_rows(runs, filters=["arch=resnet50"])} == {"a", "c"}
    assert [r["name"] for r in cmp.select_rows(runs, filters=["arch=resnet50", "status=finished"])] == ["a"]
    assert [r["name"] for r in cmp.select_rows(runs, filters=["best_acc=0.97"])] == ["b"]


def test_corrupt_run_is_flagged_not_fatal(runs):
    d = next(r for r in cmp.select_rows(runs) if r["name"] == "d")
    assert d["status"] == "corrupt" and d["arch"] == "resnet18" and d["best_acc"] is None


def test_every_format(runs):
    rows = cmp.select_rows(runs, sort="best_acc")
    table = cmp.render(rows, "table", width=400)
    assert "resnet50" in table and "0.97" in table and "corrupt" in table
    md = cmp.render(rows, "md").splitlines()
    assert md[0].startswith("| name |") and md[1].startswith("|---|") and len(md) == 6
    parsed = list(csv.DictReader(io.StringIO(cmp.render(rows, "csv"))))
    assert parsed[0]["name"] == "b" and float(parsed[0]["best_acc"]) == 0.97
    js = json.loads(cmp.render(rows, "json"))
    assert js[0]["best_acc"] == 0.97 and js[-1]["best_acc"] is None
    with pytest.raises(ConfigError):
        cmp.render(rows, "xml")


def test_only_changed_columns(runs):
    rows = cmp.select_rows(runs, filters=["status=finished"])
    cols = cmp.changed_columns(rows)
    assert "arch" in cols and "best_acc" in cols and "head" not in cols and "epochs" not in cols
    assert "head" not in cmp.render(rows, "md", cols).splitlines()[0]


def test_plot(runs, tmp_path):
    out = cmp.plot(cmp.select_rows(runs), runs, tmp_path / "p.png")
    assert out.stat().st_size > 5000


def test_cli_compare_formats(runs, capsys):
    from mlns_fast.cli import main
    assert main(["compare", "--runs-dir", str(runs), "--format", "md", "--only-changed", "--sort", "best_acc",
                 "--top", "2"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 4 and "| b |" in out[2]


def test_suite_skips_finished_identical_runs(tmp_path, tiny_data, capsys):
    from mlns_fast.suite import load_suite, run_suite
    f = tmp_path / "suite.toml"
    f.write_text(f"""
[defaults.data]
real = ["{tiny_data['train']}"]
valid = ["{tiny_data['valid']}"]
bs = 16
workers = 0
synthetic_per_epoch = 32
[defaults.train]
epochs = 1
precision = "fp32"
[defaults.model]
channels_last = false

[[run]]
name = "one"
[run.model]
arch = "convnet4"

[[run]]
name = "two"
[run.model]
head = "sum"

[[run]]
name = "three"
[run.model]
head = "sum"
init = "two"
""")
    cfgs = load_suite(f)
    assert [c.name for c in cfgs] == ["one", "two", "three"] and cfgs[1].model.head == "sum"
    assert cfgs[0].train.epochs == 1
    rows = run_suite(f, tmp_path / "runs", echo=lambda *a: None)
    assert [r["status"] for r in rows] == ["finished", "finished", "finished"]
    log = []
    run_suite(f, tmp_path / "runs", echo=log.append)
    # `three` starts from `two`'s weights: its recorded config names the file, and still matches its row
    assert sum("done already" in line for line in log) == 3, log
    assert len(list((tmp_path / "runs").iterdir())) == 3


def test_report_from_fixture_runs(tmp_path):
    from mlns_fast.report import write_report
    from mlns_fast.suite import load_suite
    f = tmp_path / "s.toml"
    f.write_text('title = "demo suite"\n[[run]]\nname = "alpha"\nseed_result = "~30%"\n[run.model]\narch = "convnet4"\n'
                 '[[run]]\nname = "beta"\n[run.train]\nema = 0.0\n')
    alpha = load_suite(f)[0]
    run = _fake_run(tmp_path / "runs", "alpha", "convnet4", 0.42)
    s = run.summary()
    s["config_digest"] = alpha.digest()
    run.write_summary(s)
    out = write_report([f], tmp_path / "runs", tmp_path / "exp" / "RESULTS.md", intro="Hello.")
    text = out.read_text()
    assert "### demo suite" in text and "Hello." in text and "| alpha | convnet4 |" in text and "~30%" in text
    assert "| 0.42 |" in text and "Not run yet: beta." in text
    assert (tmp_path / "exp" / "figures" / "s_curves.png").is_file()


def test_default_table_fits_the_terminal_and_names_each_run_once(runs, capsys, monkeypatch):
    from mlns_fast.cli import main
    RunDir.create(runs, resolve_config())  # a run without a name: its folder must not print twice
    monkeypatch.setenv("COLUMNS", "100")
    assert main(["compare", "--runs-dir", str(runs)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 100
    assert "arch" in out and "head" not in out  # differs / equal in every row
    unnamed = next(line for line in lines if "no-summary" in line)
    folder = sorted(p.name for p in runs.iterdir())[-1]
    assert unnamed.count(folder[:8]) == 1
    assert main(["compare", "--runs-dir", str(runs), "--wide"]) == 0
    assert "head" in capsys.readouterr().out
