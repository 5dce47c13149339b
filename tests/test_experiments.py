"""Building blocks of the experiment scripts whose figures RESULTS.md reports."""
import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mlns_fast.errors import ConfigError, MlnsError

ROOT = Path(__file__).resolve().parents[1]


def _script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_ceiling_learning_curve_keeps_the_first_trainable_glyphs_of_each_digit():
    ceiling = _script("ceiling")
    full = ceiling.trainable_bank()
    assert len(full.labels) == 3400 and (full.ids % 500 < 340).all()  # never valid (340..400) or reserved
    few = ceiling.trainable_bank(20)
    assert np.bincount(few.labels).tolist() == [20] * 10
    assert (few.ids % 500 < 20).all() and set(few.ids.tolist()) <= set(full.ids.tolist())
    more = ceiling.trainable_bank(250)  # past the synth pool: the real pool's first 50 of each digit
    assert np.bincount(more.labels).tolist() == [250] * 10 and (more.ids % 500 < 250).all()
    assert (ceiling.trainable_bank(340).ids == full.ids).all()


def test_adapt_bn_reestimates_batchnorm_on_the_images_and_leaves_the_model_alone():
    adapt_bn = _script("adapt_bn")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3, padding=1), torch.nn.BatchNorm2d(3)).eval()
    images = np.random.default_rng(0).integers(0, 256, (320, 8, 12), dtype=np.uint8)
    m = adapt_bn.adapted(model, images, bs=64)
    with torch.no_grad():
        z = model[0](torch.from_numpy(images[:, None].astype(np.float32) / 255))
    assert torch.allclose(m[1].running_mean, z.mean((0, 2, 3)), atol=1e-5)
    # equal batches: the cumulative average of their means is the mean; of their variances, close to the variance
    assert torch.allclose(m[1].running_var, z.var((0, 2, 3)), rtol=2e-2)
    assert not torch.allclose(m[1].running_var, torch.ones(3), rtol=0.1)
    assert not m[1].training and not m.training
    assert torch.equal(model[1].running_mean, torch.zeros(3)) and model[1].momentum == 0.1  # the original untouched


def test_ensemble_averages_log_probabilities_per_digit_and_per_subset_size():
    ensemble = _script("ensemble")
    sure, unsure = torch.full((1, 4, 10), -5.0), torch.zeros(1, 4, 10)
    sure[..., 3], unsure[..., 5] = 5.0, 1.0  # one model sure of 3s, the other leaning to 5s
    mean = ensemble.combine([sure, unsure])
    assert mean.shape == (1, 4, 10) and mean.argmax(-1).tolist() == [[3, 3, 3, 3]]
    expected = (sure.log_softmax(-1) + unsure.log_softmax(-1)) / 2
    assert torch.allclose(mean, expected)
    assert torch.allclose(ensemble.combine([sure]), sure.log_softmax(-1))
    with pytest.raises(ConfigError, match="one head"):
        ensemble.combine([sure, torch.zeros(1, 37)])
    rows = {(0,): {"valid": 0.9, "tight": 0.8}, (1,): {"valid": 0.7, "tight": 0.6},
            (0, 1): {"valid": 0.95, "tight": 0.85}}
    sizes = ensemble.by_size(rows)
    assert list(sizes) == [1, 2] and sizes[1] == pytest.approx({"valid": 0.8, "tight": 0.7})
    assert sizes[2] == {"valid": 0.95, "tight": 0.85}
    assert ensemble.shifted_mean({"valid": 0.1, "tight": 0.8, "small": 0.6, "demo-test": 0.2}) == pytest.approx(0.7)


def test_stroke_tta_thickens_and_thins_ink_and_adds_its_copies_to_shift_tta():
    tta_strokes = _script("tta_strokes")
    from mlns_fast.reading import ShiftTTA
    x = torch.zeros(1, 1, 9, 11)
    x[..., 4, 2:9] = 1.0  # a one-pixel stroke
    x[..., 3:6, 5] = 1.0
    thick, thick2 = tta_strokes.dilate(x), tta_strokes.dilate(x, 2)
    assert thick.shape == thick2.shape == x.shape and (thick >= x).all() and (thick2 >= x).all()
    assert int(thick.sum()) == 3 * 9 + 2 * 3 and int(thick2.sum()) > int(x.sum())
    assert int(tta_strokes.erode(x).sum()) == 0  # a one-pixel stroke does not survive a 3 x 3 erosion
    block = torch.zeros(1, 1, 9, 11)
    block[..., 2:7, 3:8] = 1.0
    assert int(tta_strokes.erode(block).sum()) == 3 * 3

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding=1), torch.nn.Flatten(1), torch.nn.LazyLinear(10)).eval()
    images = torch.rand(3, 1, 9, 11)
    with torch.no_grad():
        plain = ShiftTTA(net)(images)
        m = ShiftTTA(net)
        m.__class__ = tta_strokes.StrokeTTA
        m.extra = []
        assert torch.allclose(m(images), plain, atol=1e-6)
        m.extra = [(tta_strokes.dilate, False)]
        one = net(tta_strokes.dilate(images)).log_softmax(-1)
        assert torch.allclose(m(images), (plain * 5 + one) / 6, atol=1e-5)
        m.extra = [(tta_strokes.dilate, True)]
        assert torch.allclose(m(images), (plain + ShiftTTA(net)(tta_strokes.dilate(images))) / 2, atol=1e-5)


def test_set_errors_bins_error_by_cover_with_the_isolated_classifier_beside_it():
    set_errors = _script("set_errors")
    cover = np.array([[0.0, 0.1, 0.5, 0.9], [0.05, 0.3, 0.95, 2.0]])
    wrong = np.array([[False, True, False, True], [False, False, True, False]])
    alone = np.array([[False, False, True, False], [True, False, False, False]])
    cells = set_errors.by_cover(wrong, cover, alone)
    # 0-0.2 holds 0.0, 0.1, 0.05 (one wrong, one wrong alone); 0.2-0.4: 0.3; 0.4-0.6: 0.5; >= 0.8: 0.9, 0.95, 2.0
    assert cells == ["0.0-0.2: 0.333 / alone 0.333 (n=3)", "0.2-0.4: 0.000 / alone 0.000 (n=1)",
                     "0.4-0.6: 0.000 / alone 1.000 (n=1)", "0.8-inf: 0.667 / alone 0.000 (n=3)"]
    assert set_errors.by_cover(wrong, cover)[0] == "0.0-0.2: 0.333 (n=3)"
    in_row = np.array([[True, True, True, False], [False, False, False, True]])  # the in-row classifier's, beside
    cells = set_errors.by_cover(wrong, cover, alone, others={"in-row": in_row})
    assert cells[0] == "0.0-0.2: 0.333 / alone 0.333 / in-row 0.667 (n=3)"
    assert cells[-1] == "0.8-inf: 0.667 / alone 0.000 / in-row 0.333 (n=3)"
    assert set_errors.by_cover(wrong, cover, others={"in-row": in_row})[2] == "0.4-0.6: 0.000 / in-row 1.000 (n=1)"
    # another reading against the reader's 3 wrong digits: it misses 4, one of them the reader's too
    assert set_errors.shared(wrong, in_row) == ("digit accuracy 0.5000; of the reader's 3 wrong digits it reads "
                                                "2 right and 1 wrong too; the reader reads 3 of its 4 wrong right")
    # the classifier's glyphs come in the reader's order (image by image, left to right), one digit each
    ceiling = set_errors._ceiling_script()
    from mlns_fast.data.render import create_renderer
    from mlns_fast.robustness import BATTERY
    spec = next(s for s in BATTERY if s.name == "tight")
    rendered = [create_renderer(spec.render, spec.seed, pool="reserved", solo=True)(i) for i in range(3)]
    glyphs, labels = map(np.array, ceiling.glyph_crops(rendered))
    assert glyphs.shape == (12, 28, 28) and labels.reshape(3, 4).tolist() == [list(o.digits) for o in rendered]
    pred = ceiling.glyph_predictions(ceiling.GlyphNet().eval(), glyphs)
    assert pred.shape == (12,) and ((pred >= 0) & (pred < 10)).all()


def test_in_row_ceiling_trains_on_glyphs_cut_from_whole_rows_with_their_neighbours_ink(monkeypatch):
    ceiling = _script("ceiling")
    from mlns_fast.data.render import create_renderer
    from mlns_fast.robustness import BATTERY
    spec = next(s for s in BATTERY if s.name == "tight")
    rendered = [create_renderer(spec.render, spec.seed, pool="reserved", solo=True)(i) for i in range(4)]
    alone, labels = map(np.array, ceiling.glyph_crops(rendered))
    cut, cut_labels = map(np.array, ceiling.glyph_crops(rendered, solo=False))
    assert (labels == cut_labels).all() and cut.shape == alone.shape == (16, 28, 28)
    # tight's neighbours overlap: a cut glyph holds ink its isolated self does not have, in most glyphs
    assert ((cut.astype(int) - alone.astype(int)) > 60).any((1, 2)).mean() > 0.5
    seen = []  # what the training loop cut its glyphs from
    real = ceiling.glyph_crops
    monkeypatch.setattr(ceiling, "glyph_crops", lambda r, images=None, solo=True: seen.append(
        (solo, all(o.solo is None for o in r))) or real(r, images, solo))
    net = ceiling.train_classifier(1, bs=1700, context=True)  # two steps of 425 rows each
    assert seen == [(False, True)] * 2 and not net.training
    seen.clear()
    ceiling.train_classifier(1, bs=1700)
    assert seen == [(True, False)] * 2  # isolated: each glyph drawn alone as well, read alone
    assert "cut from their rows" in ceiling.CLASSIFIERS[True] and "isolated" in ceiling.CLASSIFIERS[False]


@pytest.mark.parametrize("flag", ["--ceiling-epochs", "--context-epochs"])
def test_set_errors_refuses_a_negative_classifier_budget_in_one_line(flag, tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "experiments" / "set_errors.py"), "some-run", flag, "-1",
                        "--runs-dir", str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1] == f"error: {flag} must be >= 0; got -1"
    assert "Traceback" not in r.stderr and not any(tmp_path.iterdir())


def test_set_errors_names_a_missing_run_beside_in_one_line(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "experiments" / "set_errors.py"), "no-such-run", "--beside",
                        "other", "--runs-dir", str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "no-such-run" in r.stderr
    assert "Traceback" not in r.stderr


def test_inkfit_threshold_measures_the_ink_its_window_cuts_off():
    from mlns_fast.model import InkFit
    inkfit_threshold = _script("inkfit_threshold")
    images = np.zeros((3, 40, 168), np.uint8)
    images[:, 12:28, 60:76] = 255  # a thick digit in each
    images[1, 12:28, 110] = 150  # image 1: a thin, faint stroke beside it (3x3-averaged: under 0.3 of the thick ink's)
    images[2, 12:28, 90:94] = 255  # image 2: a second thick digit
    zooms = {}
    for rel, cut_one in ((0.3, True), (0.15, False)):
        cut, zooms[rel] = inkfit_threshold.ink_cut(InkFit(3.0, (40, 168), rel), images, bs=2)  # two batches
        assert cut.shape == zooms[rel].shape == (3,) and ((zooms[rel] >= 1) & (zooms[rel] <= 3)).all()
        assert cut[0] == 0 and cut[2] == 0  # thick ink stays inside the window
        # the stroke, 3.5 % of the image's ink (16 pixels at 150 beside 256 at 255): cut off at 0.3 only
        assert cut[1] == pytest.approx(16 * 150 / (16 * 150 + 256 * 255)) if cut_one else cut[1] == 0
    assert zooms[0.15][1] < zooms[0.3][1] and zooms[0.15][0] == zooms[0.3][0]  # a window grown for the stroke zooms less
    wide = InkFit(3.0, (40, 168), 0.3)
    wide.MARGIN = 40.0  # the box (59-77 once averaged) plus 40 pixels a side reaches the stroke at 110: kept,
    cut, zoom = inkfit_threshold.ink_cut(wide, images)  # for less zoom: 168 / (18 + 80)
    assert cut[1] == 0 and (zoom < zooms[0.3]).all() and zoom[0] == pytest.approx(168 / 98)
    lines = InkFit(3.0, (40, 168), 0.3, kind="lines")  # the stroke keeps its value along its length: kept at 0.3
    cut, zoom = inkfit_threshold.ink_cut(lines, images)
    assert (cut == 0).all() and zoom[0] == zooms[0.3][0]  # the thick digit alone: the same window


def test_inkfit_threshold_refuses_a_margin_outside_its_range_in_one_line():
    r = subprocess.run([sys.executable, str(ROOT / "experiments" / "inkfit_threshold.py"), "--margin", "-1"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1] == "error: --margin must be in [0, 64] pixels; got [-1.0]"


def test_threshold_tta_reads_one_network_through_its_own_fit_per_threshold():
    from mlns_fast.model import InkFit
    from mlns_fast.reading import shift_tta
    tta_thresholds = _script("tta_thresholds")

    class Net(torch.nn.Module):  # MlnsNet's shape: an ink fit (None once shift TTA has taken it), then the rest
        def __init__(self):
            super().__init__()
            self.fit = InkFit(3.0, (40, 168), 0.3)
            self.body = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding=1), torch.nn.AdaptiveAvgPool2d((2, 4)),
                                            torch.nn.Flatten(1), torch.nn.Linear(16, 10))

        def forward(self, x):
            return self.body(self.fit(x) if self.fit is not None else x)

    torch.manual_seed(0)
    tta = shift_tta(Net()).eval()
    hi, lo = tta_thresholds.readings(tta, [0.3, 0.15])
    assert (hi.fit.rel, lo.fit.rel, tta.fit.rel) == (0.3, 0.15, 0.3)  # the original keeps its threshold
    assert hi.model is lo.model is tta.model  # one set of weights
    x = torch.zeros(2, 1, 40, 168)
    x[:, 0, 12:28, 60:76] = 1.0
    x[1, 0, 12:28, 110] = 0.6  # a thin, faint stroke: inside the window at 0.15 only
    with torch.no_grad():
        assert torch.allclose(hi(x), tta(x))
        assert torch.allclose(lo(x)[0], hi(x)[0]) and not torch.allclose(lo(x)[1], hi(x)[1])
    tta.fit = None
    with pytest.raises(MlnsError, match="no ink fit"):
        tta_thresholds.readings(tta, [0.3, 0.15])


def test_recorded_valid_reads_a_one_process_runs_saved_weights_as_it_recorded_them(tmp_path, tiny_data):
    from mlns_fast.cli import main
    from mlns_fast.runs import resolve_run
    from .conftest import flag_args, tiny_flags
    runs = tmp_path / "runs"
    assert main(["train", "--quiet", "--name", "toy", "--runs-dir", str(runs), *flag_args(tiny_flags(tiny_data))]) == 0
    rows = _script("recorded_valid").reread(resolve_run("toy", runs))
    assert [r["weights"] for r in rows] == ["raw", "ema"] and all(r["n"] == 48 for r in rows)
    for r in rows:
        assert abs(r["recorded"] - r["read"]) < 1e-6, r  # one process: what it validated is what it saved
        assert round(r["read"] * 48, 6) == round(r["read"] * 48)  # a share of 48 images
    r = subprocess.run([sys.executable, str(ROOT / "experiments" / "recorded_valid.py"), "no-such-run",
                        "--runs-dir", str(runs)], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("error: unknown run")


def test_glyph_screen_reads_render_changes_as_toml_and_draws_the_classifier_s_glyphs_with_them(monkeypatch):
    screen = _script("glyph_screen")
    assert screen.parse_sets(["morph=0.5", "glyphs=mixed", "rescan_px=[5, 9]", "crowded_clean=false"]) == \
        {"morph": 0.5, "glyphs": "mixed", "rescan_px": [5, 9], "crowded_clean": False}
    with pytest.raises(MlnsError, match="FIELD=VALUE"):
        screen.parse_sets(["morph"])
    from dataclasses import replace
    from mlns_fast.config import HANDWRITTEN, RenderConfig
    ceiling = screen.ceiling
    drawn = []

    class Drawn(Exception):
        pass

    def renderer(cfg, *args, **kwargs):  # the layout the classifier's glyphs are drawn with; no training after
        drawn.append(cfg)
        raise Drawn

    monkeypatch.setattr(ceiling, "create_renderer", renderer)
    for render in (replace(RenderConfig(**HANDWRITTEN), morph=1.0), None):
        with pytest.raises(Drawn):
            ceiling.train_classifier(1, render=render)
    assert [c.morph for c in drawn] == [1.0, 0.0] and drawn[1] == RenderConfig(**HANDWRITTEN)


@pytest.mark.parametrize("args, says", [([], "give at least one --set"), (["--set", "nosuch=1"], "nosuch"),
                                        (["--set", "morph=2"], "morph"), (["--set", "morph=0.5", "--epochs", "0"],
                                                                         "--epochs")])
def test_glyph_screen_refuses_a_bad_change_in_one_line(args, says, tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "experiments" / "glyph_screen.py"), *args,
                        "--out", str(tmp_path / "s.json")], capture_output=True, text=True)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and says in r.stderr
    assert "Traceback" not in r.stderr and not any(tmp_path.iterdir())
