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
    table = cmp.format_rows(rows, "table", width=400)
    assert "resnet50" in table and "0.97" in table and "corrupt" in table
    md = cmp.format_rows(rows, "md").splitlines()
    assert md[0].startswith("| name |") and md[1].startswith("|---|") and len(md) == 6
    parsed = list(csv.DictReader(io.StringIO(cmp.format_rows(rows, "csv"))))
    assert parsed[0]["name"] == "b" and float(parsed[0]["best_acc"]) == 0.97
    js = json.loads(cmp.format_rows(rows, "json"))
    assert js[0]["best_acc"] == 0.97 and js[-1]["best_acc"] is None
    with pytest.raises(ConfigError):
        cmp.format_rows(rows, "xml")


def test_only_changed_columns(runs):
    rows = cmp.select_rows(runs, filters=["status=finished"])
    cols = cmp.changed_columns(rows)
    assert "arch" in cols and "best_acc" in cols and "head" not in cols and "epochs" not in cols
    assert "head" not in cmp.format_rows(rows, "md", cols).splitlines()[0]


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


# --- runs told apart: config columns, data sources, evaluation results, several folders, seed groups -----
def _seed_run(root, name, seed, acc, lr=3e-3, test=None, rob=None, status="finished", sources=None,
              device="cpu (AMD EPYC, AVX512)", precision="bf16"):
    """A finished run folder made by hand: config (seed, lr), summary, and optional eval / robustness results."""
    run = RunDir.create(root, resolve_config(name=name, seed=seed, lr=lr))
    summary = {"status": status, "name": name, "arch": "mlns_cnn", "final_acc": acc, "final_acc_ema": acc + 0.01,
               "minutes": 1.0, "weights": "ema", "run": run.name, "device": device, "precision": precision}
    if sources:
        summary["data_sources"] = sources
    run.write_summary(summary)
    if test is not None:
        (run.path / "eval" / "demo-test-ema").mkdir(parents=True)
        (run.path / "eval" / "demo-test-ema" / "result.json").write_text(json.dumps(
            {"data": "demo:test", "weights": "ema", "tta": False, "sum_accuracy": test, "n": 2000}))
    if rob is not None:
        (run.path / "robustness" / "ema").mkdir(parents=True)
        (run.path / "robustness" / "ema" / "result.json").write_text(json.dumps(
            {"weights": "ema", "sets": [{"set": k, "group": "x", "sum_accuracy": v} for k, v in rob.items()]}))
    return run


def test_config_fields_are_columns_and_settings_that_differ_show(tmp_path, capsys):
    from mlns_fast.cli import main
    _seed_run(tmp_path, "slow", 0, 0.9, lr=1e-3)
    _seed_run(tmp_path, "fast", 0, 0.8, lr=1e-2)
    rows = cmp.select_rows(tmp_path, sort="lr")
    assert [(r["name"], r["lr"], r["bs"], r["seed"], r["real"]) for r in rows] == \
        [("fast", 1e-2, 128, 0, []), ("slow", 1e-3, 128, 0, [])]
    assert "lr" in cmp.default_columns(rows) and "bs" not in cmp.default_columns(rows)
    assert main(["compare", "--runs-dir", str(tmp_path), "--columns", "name,lr,wd,mix,render.gap",
                 "--format", "csv", "--sort", "valid_acc"]) == 0
    parsed = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [(r["name"], float(r["lr"]), float(r["wd"]), float(r["mix"]), r["render.gap"]) for r in parsed] == \
        [("slow", 1e-3, 0.01, 0.75, "-0.6,2.0"), ("fast", 1e-2, 0.01, 0.75, "-0.6,2.0")]
    code = main(["compare", "--runs-dir", str(tmp_path), "--columns", "name,lrr"])
    assert code == 2 and "unknown column 'lrr'; did you mean lr" in capsys.readouterr().err


def test_the_machine_and_precision_show_where_runs_differ_in_them(tmp_path, capsys):
    from mlns_fast.cli import main
    _seed_run(tmp_path, "here", 0, 0.9)
    _seed_run(tmp_path, "there", 1, 0.9)
    same = cmp.select_rows(tmp_path, sort="name")
    assert "device" not in cmp.default_columns(same) and "precision" not in cmp.default_columns(same)
    _seed_run(tmp_path, "laptop", 2, 0.9, device="cpu (Intel Core i7, AVX2)", precision="fp32")
    rows = cmp.select_rows(tmp_path, sort="name")
    assert [(r["name"], r["device"], r["precision"], r["train.precision"]) for r in rows] == [
        ("here", "cpu (AMD EPYC, AVX512)", "bf16", "auto"), ("laptop", "cpu (Intel Core i7, AVX2)", "fp32", "auto"),
        ("there", "cpu (AMD EPYC, AVX512)", "bf16", "auto")]  # as computed; the config's request beside it
    assert {"device", "precision"} <= set(cmp.default_columns(rows))
    # `--filter` picks the runs of one kind of machine
    assert main(["compare", "--runs-dir", str(tmp_path), "--filter", "precision=fp32", "--format", "csv",
                 "--columns", "name,device"]) == 0
    assert list(csv.DictReader(io.StringIO(capsys.readouterr().out))) == [
        {"name": "laptop", "device": "cpu (Intel Core i7, AVX2)"}]


def test_data_sources_and_evaluation_results_are_columns(tmp_path):
    from mlns_fast.robustness import BATTERY
    demo = {"train": {"source": "demo-abc:train", "sha1": "111"}, "valid": {"source": "demo-abc:valid", "sha1": "222"}}
    mine = {"train": {"source": "/data/mine", "sha1": "333"}, "valid": {"source": "/data/v.npz", "sha1": "444"}}
    full = {s.name: 0.5 + i / 100 for i, s in enumerate(BATTERY)} | {"demo-test": 0.99}
    _seed_run(tmp_path, "demo-run", 0, 0.9, sources=demo, test=0.93, rob=full)
    _seed_run(tmp_path, "own-run", 0, 0.9, sources=mine, rob={"tight": 0.4})
    a, b = cmp.select_rows(tmp_path, sort="name")
    assert (a["train_data"], a["train_hash"], b["train_data"], b["valid_hash"]) == ("demo-abc:train", "111",
                                                                                    "/data/mine", "444")
    assert a["test_acc"] == 0.93 and a["test_data"] == "demo:test" and b["test_acc"] is None
    # the battery mean is over the shifted sets only (not the demo test split), and only when all were scored
    assert a["rob_mean"] == pytest.approx(sum(full[s.name] for s in BATTERY) / len(BATTERY))
    assert a["rob_tight"] == 0.5 and b["rob_tight"] == 0.4 and b["rob_mean"] is None
    cols = cmp.default_columns([a, b])
    assert {"train_hash", "valid_hash", "test_acc", "rob_mean"} <= set(cols)


def test_figures_read_the_default_way_are_preferred_and_labelled(tmp_path):
    """A run scored both ways shows its TTA figures (the default reading); a run scored only plain (before
    the default changed) shows those, labelled, and the label column appears because the rows differ."""
    def result(run, folder, tta, acc, kind="eval"):
        (run.path / kind / folder).mkdir(parents=True)
        body = ({"data": "demo:test", "weights": "ema", "tta": tta, "sum_accuracy": acc, "n": 2000} if kind == "eval"
                else {"weights": folder, "tta": tta, "sets": [{"set": "tight", "group": "x", "sum_accuracy": acc}]})
        (run.path / kind / folder / "result.json").write_text(json.dumps(body))
    both = _seed_run(tmp_path, "both", 0, 0.9)
    result(both, "demo-test-ema-tta", True, 0.96)
    result(both, "demo-test-ema", False, 0.95)  # newer, but not the default reading
    result(both, "ema", False, 0.87, "robustness")
    result(both, "ema-tta", True, 0.89, "robustness")
    _seed_run(tmp_path, "old", 0, 0.9, test=0.94, rob={"tight": 0.85})
    a, b = cmp.select_rows(tmp_path, sort="name")
    assert (a["name"], a["test_acc"], a["test_tta"], a["rob_tight"], a["rob_tta"]) == ("both", 0.96, True, 0.89, True)
    assert (b["name"], b["test_acc"], b["test_tta"], b["rob_tight"], b["rob_tta"]) == ("old", 0.94, False, 0.85, False)
    assert {"test_tta", "rob_tta"} <= set(cmp.default_columns([a, b]))
    assert not {"test_tta", "rob_tta"} & set(cmp.default_columns([a]))  # one reading: no label column


def test_several_runs_dirs_are_all_listed(tmp_path, capsys):
    from mlns_fast.cli import main
    _seed_run(tmp_path / "A", "in-a", 0, 0.9)
    _seed_run(tmp_path / "B", "in-b", 0, 0.8)
    assert main(["compare", "--runs-dir", str(tmp_path / "A"), "--runs-dir", str(tmp_path / "B"),
                 "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["name"], r["runs_dir"]) for r in rows] == [("in-a", str(tmp_path / "A")), ("in-b", str(tmp_path / "B"))]


def test_group_by_gives_mean_std_and_n_over_seeds(tmp_path, capsys):
    from mlns_fast.cli import main
    for seed, acc in enumerate((0.90, 0.92, 0.97)):
        _seed_run(tmp_path, f"base-s{seed}", seed, acc, lr=3e-3, test=acc - 0.1)
    for seed, acc in enumerate((0.80, 0.84)):
        _seed_run(tmp_path, f"hot-s{seed}", seed, acc, lr=3e-2)
    _seed_run(tmp_path, "hot-s9", 9, 0.1, lr=3e-2, status="interrupted")  # not averaged in
    groups, keys, figures = cmp.group_rows(cmp.select_rows(tmp_path))
    assert keys == ["lr"]
    base, hot = sorted(groups, key=lambda g: g["lr"])
    assert (base["n"], base["seeds"], hot["n"], hot["seeds"]) == (3, [0, 1, 2], 2, [0, 1])
    assert base["final_acc_mean"] == pytest.approx(0.93) and base["final_acc_std"] == pytest.approx(0.0360555, rel=1e-5)
    assert hot["final_acc_mean"] == pytest.approx(0.82) and hot["final_acc_std"] == pytest.approx(0.0282843, rel=1e-5)
    assert base["test_acc_mean"] == pytest.approx(0.83) and hot["test_acc_mean"] is None
    assert main(["compare", "--runs-dir", str(tmp_path), "--group-by", "auto", "--format", "md"]) == 0
    md = capsys.readouterr().out
    assert "| 0.003 | 3 | 0,1,2 | 0.9300 ± 0.0361 |" in md
    assert main(["compare", "--runs-dir", str(tmp_path), "--group-by", "arch", "--format", "json"]) == 0
    (only,) = json.loads(capsys.readouterr().out)
    assert only["n"] == 5 and only["final_acc_mean"] == pytest.approx((0.90 + 0.92 + 0.97 + 0.80 + 0.84) / 5)


def test_baseline_pairs_runs_of_one_seed_and_machine_and_gives_the_differences(tmp_path, capsys):
    from mlns_fast.cli import main
    for seed, acc in enumerate((0.90, 0.92, 0.97)):
        _seed_run(tmp_path, f"base-s{seed}", seed, acc, test=acc - 0.1, rob={"tight": 0.80 + seed / 100})
    _seed_run(tmp_path, "base-s1-again", 1, 0.94, test=0.84, rob={"tight": 0.81})  # one cell: the mean of both
    for seed, acc in enumerate((0.93, 0.92)):
        _seed_run(tmp_path, f"hot-s{seed}", seed, acc, lr=3e-2, test=acc - 0.05, rob={"tight": 0.85})
    _seed_run(tmp_path, "hot-s2-zen", 2, 0.50, lr=3e-2, device="cpu (AMD EPYC, AVX2)", precision="fp32")  # no pair
    _seed_run(tmp_path, "hot-s3", 3, 0.10, lr=3e-2)  # the baseline has no seed 3
    rows = cmp.select_rows(tmp_path)
    groups, keys, figures, base = cmp.paired_rows(rows, cmp.parse_baseline("lr=0.003"))
    assert keys == ["lr"] and base == {"lr": 0.003} and "rob_tight" in figures  # device / precision: pair keys
    (hot,) = groups
    assert (hot["lr"], hot["pairs"], hot["seeds"]) == (0.03, 2, [0, 1])
    # seed 0: 0.93 - 0.90; seed 1: 0.92 - mean(0.92, 0.94)
    assert (hot["final_acc_diff_min"], hot["final_acc_diff_max"]) == pytest.approx((-0.01, 0.03))
    assert hot["final_acc_diff_mean"] == pytest.approx(0.01) and hot["final_acc_diff_std"] == pytest.approx(0.0282843, rel=1e-5)
    assert hot["test_acc_diff_mean"] == pytest.approx(0.06) and hot["rob_tight_diff_mean"] == pytest.approx(0.045)
    assert main(["compare", "--runs-dir", str(tmp_path), "--baseline", "lr=3e-3", "--columns", "test_acc,rob_tight",
                 "--format", "md"]) == 0
    md = capsys.readouterr().out.splitlines()
    assert md[0] == "| lr | pairs | seeds | test_acc | rob_tight |"
    assert md[2] == "| 0.03 | 2 | 0,1 | +0.0600 ± 0.0283 | +0.0450 ± 0.0071 |"
    # grouping by hand: device a group key, so the other machine's run is a group of its own with no pair
    assert main(["compare", "--runs-dir", str(tmp_path), "--group-by", "lr,device", "--format", "json",
                 "--baseline", "lr=0.003,device=cpu (AMD EPYC, AVX512)"]) == 0
    by_device = {(g["lr"], g["device"]): g for g in json.loads(capsys.readouterr().out)}
    assert by_device[(0.03, "cpu (AMD EPYC, AVX2)")]["pairs"] == 0
    assert by_device[(0.03, "cpu (AMD EPYC, AVX2)")]["final_acc_diff_mean"] is None
    assert by_device[(0.03, "cpu (AMD EPYC, AVX512)")]["final_acc_diff_mean"] == pytest.approx(0.01)
    for args, message in [(["--baseline", "lr=0.5"], "--baseline lr=0.5 matches 0 groups, not one (groups: lr=0.003; lr=0.03)"),
                          (["--baseline", "arch=mlns_cnn"], "--baseline arch: not a column the runs are grouped by (lr)"),
                          (["--baseline", "lr"], "expected COLUMN=VALUE"),
                          (["--group-by", "auto", "--columns", "lr"], "takes figures"),
                          (["--group-by", "lr", "--baseline", "lr=0.003", "--columns", "rob_tigth"], "did you mean rob_tight")]:
        assert main(["compare", "--runs-dir", str(tmp_path), *args]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1


def test_suite_seeds_expand_into_one_run_per_seed(tmp_path):
    from mlns_fast.suite import load_suite
    f = tmp_path / "s.toml"
    f.write_text('[defaults]\nseeds = [0, 1]\n[defaults.train]\nepochs = 2\n'
                 '[[run]]\nname = "a"\n[[run]]\nname = "b"\nseeds = [5, 6, 7]\n[run.train]\nlr = 0.01\n')
    cfgs = load_suite(f)
    assert [(c.name, c.train.seed, c.train.epochs) for c in cfgs] == \
        [("a-s0", 0, 2), ("a-s1", 1, 2), ("b-s5", 5, 2), ("b-s6", 6, 2), ("b-s7", 7, 2)]
    assert len({c.digest() for c in cfgs}) == 5
    f.write_text('[[run]]\nname = "a"\nseeds = [1, 1]\n')
    with pytest.raises(ConfigError, match="seeds must be a non-empty list of distinct integers"):
        load_suite(f)
    f.write_text('[[run]]\nname = "a"\nseeds = [1]\n[run.train]\nseed = 3\n')
    with pytest.raises(ConfigError, match="give seeds or"):
        load_suite(f)
