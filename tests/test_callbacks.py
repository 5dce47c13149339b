import copy
import os
import sys

import pytest

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
    """The NaN flag is all-reduced (on the loss's device) before the step, so one rank's NaN makes
    every rank skip that step and stop."""
    from fastai.callback.core import CancelFitException
    import pytest
    from types import SimpleNamespace
    from mlns_fast import callbacks
    seen, skipped = [], []

    def fake_all_reduce(t, op=None):
        seen.append((t.device, op))
        t.fill_(1.0)  # another rank reported a NaN

    monkeypatch.setattr(callbacks.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(callbacks.dist, "all_reduce", fake_all_reduce)
    guard = callbacks.DivergenceGuard()
    guard.before_epoch()
    loss = torch.tensor(0.5)
    opt = SimpleNamespace(hypers=[{"lr": 0.01}], skip_if=lambda flag: skipped.append(float(flag)) or True)
    guard.learn = SimpleNamespace(loss=loss, opt=opt, epoch=0, iter=3, training=True)
    guard.after_loss()  # no host read yet: the step is skipped on the device
    assert skipped == [1.0] and seen == [(loss.device, callbacks.dist.ReduceOp.MAX)]
    with pytest.raises(CancelFitException):
        guard.after_train()
    assert guard.learn.stop_reason[0] == "diverged" and "batch 3" in guard.learn.stop_reason[1]


class NanAt(Callback):
    """Makes the training loss NaN at batch `n` of the first epoch."""
    order = 0

    def __init__(self, n):
        self.n = n

    def after_loss(self):
        if self.training and self.iter == self.n:
            self.learn.loss = self.learn.loss * float("nan")


def test_nan_step_is_skipped_and_stops_at_the_next_read(tiny_cfg):
    """With reads every 4 batches, a NaN at batch 1 is caught at batch 3; the weights never take it."""
    from mlns_fast.callbacks import DivergenceGuard
    cfg = tiny_cfg(epochs=1, ema=0.0)
    seen = []
    learn = _learner(cfg, create_model(ModelConfig(arch="convnet4"), IMAGE_SIZE), [NanAt(1), Spy(seen)])
    learn.cbs.filter(lambda cb: isinstance(cb, DivergenceGuard))[0].every = 4
    learn.fit(1, lr=1e-3)
    assert learn.stop_reason[0] == "diverged" and "epoch 0, batch 1," in learn.stop_reason[1]
    assert len(seen) == 4  # the steps of batches 0..3 ran (1 skipped), then the read stopped the fit
    for k, v in seen[1].items():  # the NaN batch's step changed nothing
        assert torch.equal(v, seen[0][k]) or "running" in k or "num_batches" in k, k
    assert all(torch.isfinite(v).all() for sd in seen for v in sd.values() if v.is_floating_point())


SYNCS = ("item", "cpu", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__")


class CountSyncs(Callback):
    """Counts host-synchronising Tensor calls made between a batch's first and last event."""
    order = 1000

    def __init__(self, monkeypatch):
        self.inside, self.calls = False, 0
        for name in SYNCS:
            orig = getattr(torch.Tensor, name)
            monkeypatch.setattr(torch.Tensor, name, self._counted(orig))

    def _counted(self, orig):
        def call(t, *a, **k):
            # fastai's ParamScheduler does its schedule math on host tensors of its own, never on the
            # device's (here, on a CPU, the two cannot be told apart by device)
            host = sys._getframe(1).f_code.co_filename.endswith("fastai/callback/schedule.py")
            self.calls += self.inside and not host
            return orig(t, *a, **k)
        return call

    def after_batch(self):
        self.inside = False


class StartCount(Callback):
    order = -1000

    def __init__(self, counter):
        self.counter = counter

    def before_batch(self):
        self.counter.inside = True


@pytest.mark.parametrize("quiet", [True, False])
def test_no_host_sync_per_training_batch(tiny_cfg, monkeypatch, quiet):
    """Over 24 training and 6 validation batches (guard, losses, metric, progress bar, EMA, AdamW):
    the host reads the device at most once per `every` (32) batches, not once a batch."""
    cfg = tiny_cfg(epochs=2, ema=0.9)
    counter = CountSyncs(monkeypatch)
    ema = EMACallback(0.9)
    learn = build_learner(cfg, build_dataloaders(cfg), create_model(ModelConfig(arch="convnet4"), IMAGE_SIZE),
                          torch.device("cpu"), "fp32", quiet=quiet, extra_cbs=[ema, counter, StartCount(counter)])
    learn.fit_one_cycle(2, lr_max=1e-3)
    assert learn.train_iter == 24 and ema.updates == 24
    assert counter.calls <= 2, counter.calls  # the progress bar's comment at batch 0 of each epoch


def test_epoch_table_prints_rows_without_bars_and_honours_no_logging(capsys):
    from fastai.callback.progress import ProgressCallback
    from fastai.test_utils import synth_learner
    from mlns_fast.callbacks import EpochTable
    learn = synth_learner(n_trn=32)
    learn.remove_cbs(ProgressCallback)
    learn.add_cb(EpochTable())
    learn.fit(2, 1e-3)
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "\r" not in out and len(lines) == 3 and lines[0].split()[:3] == ["epoch", "train_loss", "valid_loss"]
    assert [line.split()[0] for line in lines[1:]] == ["0", "1"]
    with learn.no_logging():  # lr_find's sweep logs nothing
        learn.fit(1, 1e-3)
    assert capsys.readouterr().out == ""


def test_heap_trim_runs_every_n_training_batches_and_after_each_validation(tiny_cfg, monkeypatch):
    """$MLNS_FAST_HEAP_TRIM=5 over 2 epochs of 12 training batches: train_iter 5, 10, 15, 20 and the two
    validations; never inside validation. The trim moves no number: the weights equal an untrimmed run's."""
    from mlns_fast.callbacks import HeapTrim
    cfg = tiny_cfg(epochs=2)

    def fit(every):
        monkeypatch.setenv("MLNS_FAST_HEAP_TRIM", str(every))
        torch.manual_seed(0)
        learn = _learner(cfg, create_model(ModelConfig(arch="convnet4"), IMAGE_SIZE))
        trim = next(cb for cb in learn.cbs if isinstance(cb, HeapTrim))
        calls = []
        if trim.trim is not None:
            real = trim.trim
            trim.trim = lambda pad: calls.append((learn.training, learn.train_iter)) or real(pad)
        learn.fit_one_cycle(2, lr_max=1e-3)
        return learn, calls

    learn, calls = fit(5)
    assert learn.train_iter == 24 and len(learn.dls.valid) == 3
    if sys.platform.startswith("linux"):  # glibc
        assert calls == [(True, 5), (True, 10), (False, 12), (True, 15), (True, 20), (False, 24)]
    plain, none = fit(0)
    assert none == []
    for k, v in plain.model.state_dict().items():
        assert torch.equal(v, learn.model.state_dict()[k]), k


def test_heap_trim_gives_the_heaps_freed_memory_back():
    """The pattern that grew a run's RSS: blocks freed in the middle of glibc's heap (a small block above
    them stops the heap shrinking from its top) stay resident until the trim."""
    from mlns_fast.callbacks import HeapTrim
    cb = HeapTrim(1)
    if cb.trim is None or not sys.platform.startswith("linux"):
        pytest.skip("glibc only")

    def rss_mib():
        return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") >> 20

    big = torch.ones(16 << 18)  # a 16 MiB block, mmapped; freeing it raises glibc's mmap threshold,
    del big                     # so the 1 MiB blocks below come from the heap
    blocks = [t for _ in range(256) for t in (torch.ones(1 << 18), torch.ones(8))]
    del blocks[0::2]  # the 1 MiB blocks; the small ones stay, above them
    before = rss_mib()
    cb.after_validate()
    assert before - rss_mib() >= 128, (before, rss_mib())


@pytest.mark.parametrize("value", ["fifty", "-1", "2.5"])
def test_bad_heap_trim_setting_is_a_user_error_before_any_run_folder(value, tiny_cfg, tmp_path, monkeypatch, capsys):
    from .conftest import assert_user_error, run_cli
    from mlns_fast.errors import ConfigError
    monkeypatch.setenv("MLNS_FAST_HEAP_TRIM", value)
    with pytest.raises(ConfigError, match="MLNS_FAST_HEAP_TRIM"):
        train(tiny_cfg(epochs=1), runs_dir=tmp_path / "runs", quiet=True)
    code, _, err = run_cli(capsys, "train", "--epochs", 1, "--runs-dir", tmp_path / "runs")
    assert_user_error(code, err, f"$MLNS_FAST_HEAP_TRIM={value!r}")
    assert not (tmp_path / "runs").exists()
