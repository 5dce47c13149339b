import copy

import torch
from fastai.callback.core import Callback, CancelStepException
from timm.utils import ModelEmaV3

from mlns_fast.callbacks import EMACallback
from mlns_fast.config import IMAGE_SIZE, ModelConfig
from mlns_fast.data.loaders import build_dataloaders
from mlns_fast.losses import make_loss, sum_log_probs
from mlns_fast.model import create_model, read_state_dict
from mlns_fast.training import build_learner, train


def _learner(cfg, model, cbs=()):
    return build_learner(cfg, build_dataloaders(cfg), model, torch.device("cpu"), "fp32", quiet=True, extra_cbs=cbs)


@torch.no_grad()
def _score_by_hand(model, dl, loss_func):
    """Reference: mean loss and sum accuracy over a loader, written out independently of fastai."""
    model.eval()
    loss, correct, n = 0.0, 0, 0
    for x, *y in dl:
        out = model(x).float()
        loss += float(loss_func(out, *y)) * len(x)
        correct += int((sum_log_probs(out).argmax(1) == y[0]).sum())
        n += len(x)
    return loss / n, correct / n


class Spy(Callback):
    """Records the raw weights after every optimiser step."""
    order = 99

    def __init__(self, seen):
        self.seen = seen

    def after_step(self):
        self.seen.append(copy.deepcopy(self.learn.model.state_dict()))


def test_ema_callback_equals_model_ema_v3_driven_by_hand(tiny_cfg):
    cfg = tiny_cfg(epochs=1, ema=0.9, drop=0.0)
    torch.manual_seed(0)
    model = create_model(ModelConfig(arch="convnet4"), IMAGE_SIZE)
    start = copy.deepcopy(model)
    cb = EMACallback(0.9)
    learn = _learner(cfg, model, [cb])
    # replay the same optimisation by hand, updating a hand-driven ModelEmaV3 after every step
    seen = []
    learn.add_cb(Spy(seen))
    learn.fit(1, lr=1e-3)
    ref = ModelEmaV3(start, decay=0.9)
    for sd in seen:
        start.load_state_dict(sd)
        ref.update(start)
    assert len(seen) == len(learn.dls.train) and cb.updates == len(seen)
    ours, theirs = cb.model_ema.module.state_dict(), ref.module.state_dict()
    bn = [k for k in ours if "running_mean" in k]
    assert bn, "BatchNorm buffers must be averaged too"
    for k in ours:
        torch.testing.assert_close(ours[k], theirs[k], msg=k)
    # the EMA differs from the raw weights (it is really an average)
    assert any(not torch.equal(ours[k], learn.model.state_dict()[k]) for k in bn)


def test_ema_metrics_come_from_ema_weights(tiny_cfg, tmp_path):
    from mlns_fast.runs import RunDir
    cfg = tiny_cfg(epochs=1, ema=0.5)
    run = RunDir(tmp_path / train(cfg, tmp_path, quiet=True)["run"])
    row = run.metrics()[-1]
    dl = build_dataloaders(cfg).valid
    scores = {}
    for ema in (True, False):
        model = create_model(cfg.model, IMAGE_SIZE)
        model.load_state_dict(read_state_dict(run.weights_path(ema)))
        scores[ema] = _score_by_hand(model, dl, make_loss("digits"))
    loss, acc = scores[True]
    assert abs(row["acc_ema"] - acc) < 1e-6 and abs(row["valid_loss_ema"] - loss) < 1e-5
    raw_loss, _ = scores[False]
    assert abs(row["valid_loss"] - raw_loss) < 1e-4 and abs(raw_loss - loss) > 1e-6


def test_cancelled_step_is_not_averaged(tiny_cfg):
    cfg = tiny_cfg(epochs=1)

    class CancelAll(Callback):
        order = 0

        def before_step(self):
            raise CancelStepException()

    cb = EMACallback(0.9)
    learn = _learner(cfg, create_model(ModelConfig(arch="convnet4"), IMAGE_SIZE), [cb, CancelAll()])
    learn.fit(1, lr=1e-3)
    assert cb.updates == 0


def test_divergence_on_another_rank_stops_this_one(monkeypatch):
    """The NaN flag is all-reduced (on the loss's device), so one rank's NaN stops every rank."""
    from fastai.callback.core import CancelFitException
    import pytest
    from types import SimpleNamespace
    from mlns_fast import callbacks
    seen = []

    def fake_all_reduce(t):
        seen.append(t.device)
        t += 1  # another rank reported a NaN

    monkeypatch.setattr(callbacks.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(callbacks.dist, "all_reduce", fake_all_reduce)
    guard = callbacks.DivergenceGuard()
    loss = torch.tensor(0.5)
    guard.learn = SimpleNamespace(loss=loss, opt=None, epoch=0, iter=3)
    with pytest.raises(CancelFitException):
        guard.after_loss()
    assert seen == [loss.device] and guard.learn.stop_reason[0] == "diverged"
