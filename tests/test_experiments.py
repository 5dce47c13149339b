"""Building blocks of the experiment scripts whose figures RESULTS.md reports."""
import importlib.util
from pathlib import Path

import numpy as np
import torch

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
