"""Building blocks of the experiment scripts whose figures RESULTS.md reports."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from mlns_fast.errors import ConfigError

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
    from mlns_fast.evaluation import ShiftTTA
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
