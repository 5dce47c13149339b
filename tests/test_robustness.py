import json

import numpy as np
import pytest

from mlns_fast import robustness as rb
from mlns_fast.evaluation import calibration_error
from mlns_fast.runs import RunDir


def test_calibration_error_known_values():
    conf = np.array([0.95, 0.95, 0.95, 0.95, 0.55, 0.55])
    correct = np.array([1, 1, 1, 0, 1, 0], bool)
    # bins: 0.95 -> acc 0.75 (|0.2|, weight 4/6); 0.55 -> acc 0.5 (|0.05|, weight 2/6)
    assert calibration_error(conf, correct) == pytest.approx(4 / 6 * 0.2 + 2 / 6 * 0.05)
    assert calibration_error(np.array([1.0, 1.0]), np.array([True, True])) == pytest.approx(0.0)


@pytest.mark.parametrize("spec", rb.BATTERY, ids=lambda s: s.name)
def test_every_set_renders_deterministically_from_unseen_handwriting(spec, monkeypatch):
    from mlns_fast.data import mnist
    asked = []
    real = mnist.embedded_bank
    monkeypatch.setattr(mnist, "embedded_bank", lambda split="synth": asked.append(split) or real(split))
    a, b = rb.render_set(spec, 24), rb.render_set(spec, 24)
    assert a.images.shape == (24, 40, 168) and a.images.dtype == np.uint8
    assert (a.images == b.images).all() and (a.sums == a.digits.sum(1)).all()
    assert a.images.max() > 40  # something was drawn
    assert set(asked) <= {"reserved"}  # never a training or validation glyph
    # the training default's printed glyphs never reach a set: handwriting alone, or the fonts set's Hershey faces
    r = spec.render
    assert (r.glyphs, r.faces) == ("fonts" if spec.name == "fonts" else "handwriting", "hershey")


def test_sets_differ_the_way_they_say():
    base = rb.render_set(next(s for s in rb.BATTERY if s.name == "thin"), 64).images
    thick = rb.render_set(next(s for s in rb.BATTERY if s.name == "thick"), 64).images
    low = rb.render_set(next(s for s in rb.BATTERY if s.name == "contrast"), 64).images
    assert (thick > 128).mean() > 1.5 * (base > 128).mean()  # more ink
    assert low.max() <= 0.45 * 255 + 1


def test_sklearn_bank_is_other_writers():
    bank = rb.sklearn_bank()
    assert bank.images.shape == (1797, 28, 28) and set(bank.labels.tolist()) == set(range(10))


def test_robustness_command(capsys, tmp_path, tiny_data, monkeypatch):
    from mlns_fast.cli import main
    from .conftest import flag_args, tiny_flags
    monkeypatch.setattr(rb, "N_IMAGES", 32)
    runs = tmp_path / "runs"
    assert main(["train", "--quiet", "--runs-dir", str(runs), *flag_args(tiny_flags(tiny_data, epochs=1))]) == 0
    capsys.readouterr()
    assert main(["robustness", "latest", "--runs-dir", str(runs), "--set", "tight", "--set", "sklearn-digits",
                 "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert [r["set"] for r in res["sets"]] == ["tight", "sklearn-digits"]
    run = next(runs.iterdir())
    from mlns_fast.reading import load_trained, predict_arrays
    assert res["tta"] is True and res["weights"].endswith("-tta")  # read the default way: shift TTA
    _, model = load_trained(RunDir(run), res["weights"].removesuffix("-tta"), tta=True)
    sets = rb.battery(["tight", "sklearn-digits"])
    for r in res["sets"]:  # each row scores its own set with the run's weights
        pred = predict_arrays(model, sets[r["set"]].images)
        assert r["n"] == 32 and r["sum_accuracy"] == pytest.approx((pred["sum"] == sets[r["set"]].sums).mean())
        assert r["digit_accuracy"] == pytest.approx((pred["digits"] == sets[r["set"]].digits).mean())
        assert 0 <= r["ece"] <= 1
    assert (run / "robustness" / res["weights"] / "robustness.png").stat().st_size > 5000
    assert json.loads((run / "robustness" / res["weights"] / "result.json").read_text())["sets"] == res["sets"]
    assert main(["robustness", "latest", "--runs-dir", str(runs), "--set", "nope"]) == 2
    assert "--set: unknown set 'nope'" in capsys.readouterr().err
    # a later --set adds to (and replaces by name) what the run's battery result holds
    first = {r["set"]: r for r in res["sets"]}
    assert main(["robustness", "latest", "--runs-dir", str(runs), "--set", "small", "--set", "tight", "--json"]) == 0
    merged = json.loads(capsys.readouterr().out)
    assert [r["set"] for r in merged["sets"]] == ["tight", "small", "sklearn-digits"]  # the battery's order
    assert merged["sets"][2] == first["sklearn-digits"] and merged["sets"][0] == first["tight"]  # same weights
    on_disk = json.loads((run / "robustness" / res["weights"] / "result.json").read_text())
    assert on_disk["sets"] == merged["sets"]
    # --raw scores the raw weights into their own folder, --no-tta the plain network into another
    assert main(["robustness", "latest", "--runs-dir", str(runs), "--set", "tight", "--raw", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["weights"] == "raw-tta" and (run / "robustness" / "raw-tta").is_dir()
    assert main(["robustness", "latest", "--runs-dir", str(runs), "--set", "tight", "--raw", "--no-tta", "--json"]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert plain["weights"] == "raw" and plain["tta"] is False and (run / "robustness" / "raw").is_dir()
    tight = rb.battery(["tight"])["tight"]
    right = predict_arrays(load_trained(RunDir(run), "raw")[1], tight.images)["sum"] == tight.sums
    assert plain["sets"][0]["sum_accuracy"] == pytest.approx(right.mean())
    # the data the run trained on is recorded with a hash of its content
    from mlns_fast.data.sources import content_hash, load_source
    sources = json.loads((run / "summary.json").read_text())["data_sources"]
    assert sources["train"]["sha1"] == content_hash(load_source(tiny_data["train"]))


def test_merge_sets_reads_earlier_results_as_user_input(tmp_path):
    p = tmp_path / "result.json"
    p.write_text(json.dumps({"sets": [{"set": "blur", "sum_accuracy": 0.5, "n": 9}, {"set": "bogus", "sum_accuracy": 1},
                                      {"set": "thin", "sum_accuracy": "high"}, "junk"]}))
    old = rb.earlier_sets(p)
    assert old == [{"set": "blur", "sum_accuracy": 0.5, "n": 9, "group": "style"}]
    new = [{"set": "tight", "group": "layout", "sum_accuracy": 0.4}, {"set": "blur", "group": "style", "sum_accuracy": 0.6}]
    assert [(r["set"], r["sum_accuracy"]) for r in rb.merge_sets(old, new)] == [("tight", 0.4), ("blur", 0.6)]
    p.write_text("{not json")
    assert rb.earlier_sets(p) == [] and rb.earlier_sets(tmp_path / "missing.json") == []
