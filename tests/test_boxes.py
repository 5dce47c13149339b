"""--box-weight: the per-column box target from the renderer's boxes (losses, model geometry, items, a fit)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from fastai.callback.core import Callback

from mlns_fast.config import IMAGE_SIZE, ModelConfig
from mlns_fast.data.loaders import REAL, SYNTH, build_dataloaders
from mlns_fast.losses import box_loss, column_targets
from mlns_fast.model import create_model

from .conftest import assert_user_error, run_cli


def test_column_targets_mark_the_digits_whose_boxes_cover_each_column():
    xs = torch.tensor([[5.0, 15.0, 25.0, 35.0, 45.0, 60.0]])  # six columns' centres in input pixels
    spans = torch.tensor([[[0.0, 12.0], [10.0, 30.0], [28.0, 40.0], [41.0, 50.0]]])  # 2 and 3 overlap at 28..30
    digits = torch.tensor([[7, 3, 3, 1]])
    t = column_targets(xs, spans, digits)
    assert t.shape == (1, 6, 10)
    on = [sorted(torch.nonzero(t[0, j]).flatten().tolist()) for j in range(6)]
    assert on == [[7], [3], [3], [3], [1], []]  # two boxes of one digit class: one label; past the last: none
    spans[0, 2] = torch.tensor([20.0, 40.0])  # now the third box also covers column 25 (x = 25), with digit 3
    digits[0, 2] = 9
    assert sorted(torch.nonzero(column_targets(xs, spans, digits)[0, 2]).flatten().tolist()) == [3, 9]


def test_box_loss_counts_only_items_with_known_spans():
    torch.manual_seed(0)
    cols, xs = torch.randn(3, 6, 10), torch.linspace(0, 60, 6).expand(3, 6)
    spans = torch.tensor([[0.0, 15.0], [15.0, 30.0], [30.0, 45.0], [45.0, 60.0]]).expand(3, 4, 2).clone()
    digits = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8], [9, 0, 1, 2]])
    full = box_loss(cols, xs, spans, digits)
    spans[1] = -1.0  # item 1: a real image, no boxes
    part = box_loss(cols, xs, spans, digits)
    keep = [0, 2]
    assert part == pytest.approx(float(box_loss(cols[keep], xs[keep], spans[keep], digits[keep])))
    assert part != pytest.approx(float(full))
    assert float(box_loss(cols, xs, torch.full_like(spans, -1.0), digits)) == 0.0
    # a sure, right column reader scores near 0; a sure, wrong one far above the untrained ~6.9
    target = column_targets(xs, spans, digits)
    assert float(box_loss((target * 2 - 1) * 20, xs, spans, digits)) < 1e-6
    assert float(box_loss((1 - target * 2) * 20, xs, spans, digits)) > 20


@pytest.mark.parametrize("zoom", [1.0, 3.0])
def test_column_x_follows_the_ink_fit_to_the_input_pixel_a_column_reads(zoom):
    """A bright bar at input column X, inside a wider block of faint ink that sets the fit: the feature
    column whose centre the model maps to X is the one the zoomed image shows the bar in."""
    model = create_model(ModelConfig(zoom=zoom, box_weight=1.0), IMAGE_SIZE).train()
    x = torch.zeros(2, 1, *IMAGE_SIZE)
    x[:, :, 12:28, 40:100] = 0.5  # the ink's extent: 60 columns, zoomed up to `zoom`
    bars = [55, 83]
    for i, bar in enumerate(bars):
        x[i, :, 12:28, bar] = 1.0
    w = 21
    xs = model.column_x(x, w)
    assert xs.shape == (2, w) and bool((xs[:, 1:] > xs[:, :-1]).all())
    fitted = model.fit(x) if model.fit is not None else x
    W = IMAGE_SIZE[1]
    for i, bar in enumerate(bars):
        p = int(fitted[i, 0].amax(0).argmax())  # the output pixel column where the bar lands
        j = int(p * w / W)  # the feature column whose span holds it
        assert abs(float(xs[i, j]) - bar) <= W / w / zoom, (zoom, bar, float(xs[i, j]))
    if zoom == 1.0:
        torch.testing.assert_close(xs[0], (torch.arange(w) + 0.5) * W / w - 0.5)


def test_the_box_head_is_a_training_output_only():
    plain = create_model(ModelConfig(), IMAGE_SIZE)
    assert not any(k.startswith("boxes.") for k in plain.state_dict())  # runs made without it load unchanged
    model = create_model(ModelConfig(box_weight=0.5), IMAGE_SIZE)
    x = torch.rand(3, 1, *IMAGE_SIZE)
    out, cols, xs = model.train()(x)
    assert out.shape == (3, 4, 10) and cols.shape == (3, 21, 10) and xs.shape == (3, 21)
    model.eval()
    assert model(x).shape == (3, 4, 10)  # evaluate, predict and export see the digits only
    queries = create_model(ModelConfig(box_weight=0.5, reader="queries"), IMAGE_SIZE).train()
    assert queries(x)[1].shape == (3, 21, 10)


def test_training_items_carry_the_renderers_spans_and_real_ones_none(tiny_cfg):
    dls = build_dataloaders(tiny_cfg(box_weight=1.0, augment=False))
    items = dls.train.dataset
    x, s, digits, known, spans = items[(SYNTH, 0, 3)]
    r = items.renderer(0, 3)
    assert spans.tolist() == r.boxes[:, [0, 2]].tolist() and digits.tolist() == r.digits.tolist()
    ink = (x[0] > 60).any(0).nonzero().flatten()
    assert ink.min() >= spans[0, 0] and ink.max() < spans[3, 1]  # the ink lies inside the boxes' span
    *_, real_spans = items[(REAL, 0, 0)]
    assert real_spans.tolist() == [[-1.0, -1.0]] * 4
    assert len(dls.valid.dataset[(REAL, 0, 0)]) == 4  # validation items: as without the option
    assert len(build_dataloaders(tiny_cfg()).train.dataset[(SYNTH, 0, 3)]) == 4


class Terms(Callback):
    """After BoxTarget: the targets the loss saw, and the loss beyond the head's own on training batches."""
    order = 50

    def before_fit(self):
        self.train_extra, self.valid_extra, self.n_targets = [], [], set()

    def after_loss(self):
        self.n_targets.add(len(self.learn.yb))
        extra = float(self.learn.loss.detach() - self.learn.loss_func(self.learn.pred, *self.learn.yb).detach())
        (self.train_extra if self.training else self.valid_extra).append(extra)


def test_a_run_with_the_box_target_adds_it_to_the_training_loss_only(tiny_cfg, tmp_path):
    from mlns_fast.reading import load_trained, predict_outputs
    from mlns_fast.runs import RunDir
    from mlns_fast.training import train
    spy = Terms()
    s = train(tiny_cfg(box_weight=2.0, epochs=1), tmp_path, quiet=True, extra_cbs=[spy])
    assert s["status"] == "finished"
    assert spy.n_targets == {3}  # the loss and the metrics never see the spans
    # 12 batches (96 real images, 8 a batch), each half synthetic; 2 x ~6.9 at the start, then falling
    assert len(spy.train_extra) == 12 and all(e > 0.05 for e in spy.train_extra)
    assert 10 < spy.train_extra[0] < 18 and spy.train_extra[-1] < spy.train_extra[0]
    assert spy.valid_extra and all(e == 0.0 for e in spy.valid_extra)
    _, model = load_trained(RunDir(tmp_path / s["run"]), "raw")
    assert tuple(predict_outputs(model, np.zeros((2, *IMAGE_SIZE), np.uint8)).shape) == (2, 4, 10)


@pytest.mark.parametrize("flags, message", [
    (["--head", "sum"], "--box-weight trains the digits head's reader"),
    (["--synth-pool", "500"], "--box-weight needs each synthetic image's boxes"),
    (["--data", "real"], "--box-weight learns from synthetic images' boxes"),
    (["--box-weight", "-1"], "box-weight"),
])
def test_box_weight_user_errors(capsys, tmp_path, flags, message):
    args = ["--box-weight", "1"] if "--box-weight" not in flags else []
    code, _, err = run_cli(capsys, "train", *args, *flags, "--runs-dir", tmp_path)
    assert_user_error(code, err, message)
    assert not any(tmp_path.iterdir())
