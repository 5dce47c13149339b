"""--progressive: the first epochs train on a smaller canvas (the ink fit's window with fewer pixels)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from fastai.callback.core import Callback

from mlns_fast.config import IMAGE_SIZE, ModelConfig
from mlns_fast.model import InkFit, create_model

from .conftest import assert_user_error, run_cli


def test_the_ink_fit_onto_a_smaller_canvas_samples_the_same_window_at_fewer_pixels():
    torch.manual_seed(0)
    x = torch.rand(3, 1, *IMAGE_SIZE)
    x[..., 0, 0] = x[..., -1, -1] = 1.0  # ink in two corners: the window is the whole image (no zoom)
    fit = InkFit(3.0, IMAGE_SIZE)
    small = fit(x, size=(20, 84))
    assert small.shape == (3, 1, 20, 84)
    # the identity window at half the pixels: bilinear sampling at the small canvas's pixel centres
    torch.testing.assert_close(small, F.interpolate(x, size=(20, 84), mode="bilinear", align_corners=False))
    assert torch.equal(fit(x), fit(x, size=None))  # no size: the image's own canvas, as before

    tiny = torch.zeros(1, 1, *IMAGE_SIZE)
    tiny[..., 15:25, 60:70] = 1.0  # a small blob: enlarged 3x onto either canvas, centred
    full, half = fit(tiny), fit(tiny, size=(20, 84))
    rows_full, rows_half = (full[0, 0] > 0.5).any(1).sum(), (half[0, 0] > 0.5).any(1).sum()
    assert rows_full >= 20 and abs(2 * rows_half - rows_full) <= 2  # enlarged, the same share of either height


@pytest.mark.parametrize("zoom", [3.0, 1.0])
def test_the_models_canvas_applies_in_training_only(zoom):
    model = create_model(ModelConfig(zoom=zoom), IMAGE_SIZE)
    seen = []
    model.backbone.features.register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape[-2:])))
    x = torch.rand(2, 1, *IMAGE_SIZE)
    model.canvas = (30, 126)
    assert model.train()(x).shape == (2, 4, 10)
    assert model.eval()(x).shape == (2, 4, 10)
    model.canvas = None
    model.train()(x)
    assert seen == [(30, 126), IMAGE_SIZE, IMAGE_SIZE]


class Inputs(Callback):
    """The backbone's input size in each training and validation epoch, and the canvas after the fit."""

    def before_fit(self):
        self.sizes, self.hook = {}, None

    def before_train(self):  # hooked after before_fit, where the EMA callback copies the model
        self.hook = self.hook or self.learn.model.backbone.features.register_forward_pre_hook(self.record)

    def record(self, module, args):
        key = (self.epoch, "train" if self.training else "valid")
        self.sizes.setdefault(key, set()).add(tuple(args[0].shape[-2:]))

    def after_fit(self):
        self.hook.remove()
        self.canvas_after = self.learn.model.canvas


@pytest.mark.parametrize("zoom", [3.0, 1.0])
def test_a_progressive_run_trains_its_first_epochs_small_and_validates_at_full_size(tiny_cfg, tmp_path, zoom):
    from mlns_fast.training import train
    spy = Inputs()
    s = train(tiny_cfg(epochs=3, progressive=0.5, progressive_until=0.67, zoom=zoom), tmp_path, quiet=True,
              extra_cbs=[spy])
    assert s["status"] == "finished"
    small, full = {(20, 84)}, {IMAGE_SIZE}
    assert spy.sizes == {(0, "train"): small, (0, "valid"): full, (1, "train"): small, (1, "valid"): full,
                         (2, "train"): full, (2, "valid"): full}  # round(0.67 x 3) = 2 small epochs
    assert spy.canvas_after is None


@pytest.mark.parametrize("flags, message", [
    (["--progressive", "0.2"], "progressive"),
    (["--progressive", "1.5"], "progressive"),
    (["--progressive", "0.75", "--progressive-until", "0"], "progressive-until"),
])
def test_progressive_user_errors(capsys, tmp_path, flags, message):
    code, _, err = run_cli(capsys, "train", *flags, "--runs-dir", tmp_path)
    assert_user_error(code, err, message)
    assert not any(tmp_path.iterdir())
