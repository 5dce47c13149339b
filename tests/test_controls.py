"""Training controls: early stopping, gradient accumulation, label smoothing in a fit, tags and notes."""
from __future__ import annotations

import json

import pytest
import torch
from fastai.callback.core import Callback
from fastai.learner import AvgMetric
from fastai.test_utils import synth_learner

from mlns_fast.callbacks import EarlyStop
from mlns_fast.errors import RunError
from mlns_fast.losses import make_loss
from mlns_fast.runs import RunDir
from mlns_fast.training import train

from .conftest import flag_args, run_cli, tiny_flags


pytestmark = pytest.mark.usefixtures("one_thread")


def _learner_with_acc(values):
    """fastai's synthetic regression learner whose `acc` metric reads `values[epoch]` (a scripted curve)."""
    learn = synth_learner(n_trn=8, n_val=4)

    def acc(out, *_):
        return torch.tensor(values[learn.epoch])

    learn.metrics = [AvgMetric(acc)]
    learn.logger = lambda *a, **k: None
    return learn


@pytest.mark.parametrize("curve, patience, history, epochs_run", [
    ([0.5] * 8, 2, (), 3),                       # flat: the first epoch sets the best, then 2 without gain
    ([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], 1, (), 6),  # always improving: never stops
    ([0.1, 0.3, 0.3, 0.2, 0.9, 0.9], 2, (), 4),  # best at epoch 1; epochs 2 and 3 no better
    ([0.5] * 8, 2, (0.5, 0.5), 1),              # resumed after two flat epochs: patience counts across
    ([0.6] * 8, 2, (0.5, 0.5), 3),              # resumed: the first new epoch beats the recorded best
])
def test_early_stop_stops_after_patience_epochs_without_gain(curve, patience, history, epochs_run):
    learn = _learner_with_acc(curve)
    es = EarlyStop("acc", patience, history)
    with learn.no_bar():
        learn.fit(len(curve), cbs=[es])
    assert len(learn.recorder.values) == epochs_run
    assert (es.stopped is not None) == (epochs_run < len(curve))
    if es.stopped:
        assert es.stopped["stop_reason"] == "early-stopped" and f"for {patience} epochs" in es.stopped["message"]


def test_an_early_stopped_run_is_finished_with_weights_and_not_resumable(tiny_cfg, tmp_path):
    # lr ~ 0: the sum accuracy stays where the initial weights put it, so the first epoch is the best
    s = train(tiny_cfg(epochs=5, early_stop=1, lr=1e-9, ema=0.0), tmp_path, quiet=True)
    run = RunDir(tmp_path / s["run"])
    accs = [r["acc"] for r in run.metrics()]
    assert accs[1] <= accs[0], accs  # the premise: no gain in epoch 1
    assert s["status"] == "finished" and s["stop_reason"] == "early-stopped" and s["epochs_done"] == 2
    assert "acc did not improve" in s["message"]
    assert run.weights_path(False).is_file() and (run.path / "curves.png").is_file() and s["weights"] == "raw"
    assert json.loads((run.path / "summary.json").read_text())["stop_reason"] == "early-stopped"
    with pytest.raises(RunError, match="early-stopped after 2 epochs"):
        train(None, tmp_path, quiet=True, resume=str(run.path))


class StepCounter(Callback):
    """Counts training batches and optimizer steps, and checks each batch's loss is the smoothed one."""
    order = 99

    def __init__(self, head: str, eps: float):
        self.batches = self.steps = 0
        self.smooth, self.plain = make_loss(head, label_smoothing=eps), make_loss(head)

    def after_step(self):
        self.steps += 1

    def after_loss(self):
        if not self.training:
            return
        self.batches += 1
        pred, yb = self.learn.pred.detach(), self.learn.yb
        assert torch.isclose(self.learn.loss, self.smooth(pred, *yb), atol=1e-5)
        assert not torch.isclose(self.learn.loss, self.plain(pred, *yb), atol=1e-5)


def test_accumulation_steps_n_times_less_and_smoothing_reaches_the_loss(tiny_cfg, tmp_path):
    count = StepCounter("digits", 0.2)
    s = train(tiny_cfg(epochs=2, accum=3, label_smoothing=0.2), tmp_path, quiet=True, extra_cbs=[count])
    per_epoch = count.batches // 2
    assert s["status"] == "finished" and per_epoch >= 3
    assert count.steps == 2 * (per_epoch // 3)  # every 3rd batch steps; each epoch starts a fresh accumulation
    ckpt = RunDir(tmp_path / s["run"]).load_checkpoint()
    assert ckpt["ema_updates"] == count.steps  # the EMA averages real steps only


def test_accumulation_larger_than_an_epoch_is_refused_before_a_run_folder(tiny_data, tmp_path, capsys):
    code, _, err = run_cli(capsys, "train", *flag_args(tiny_flags(tiny_data, epochs=1, accum=1000)),
                           "--runs-dir", tmp_path / "runs", "-q")
    assert code == 2 and err.startswith("error: --accum 1000 exceeds the") and err.count("\n") == 1, err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_tags_and_note_are_recorded_and_leave_the_digest_alone(tiny_data, tmp_path, capsys):
    runs = tmp_path / "runs"
    code, _, err = run_cli(capsys, "train", *flag_args(tiny_flags(tiny_data, epochs=1)), "--tag", "team=vision",
                           "--tag", "idea=wider gaps", "--note", "checking the gap range", "--runs-dir", runs, "-q")
    assert code == 0, err
    s = json.loads(next(runs.glob("*/summary.json")).read_text())
    assert s["tags"] == {"team": "vision", "idea": "wider gaps"} and s["note"] == "checking the gap range"
    from mlns_fast.config import resolve_config
    assert s["config_digest"] == resolve_config(**tiny_flags(tiny_data, epochs=1)).digest()
