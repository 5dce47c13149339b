import json
import signal

import numpy as np
import pytest
import torch
from fastai.callback.core import Callback

from mlns_fast.evaluate import load_trained, predict_arrays
from mlns_fast.runs import TIMING_COLUMNS, RunDir, list_runs
from mlns_fast.train import train


def _metrics(run_dir):
    rows = RunDir(run_dir).metrics()
    return [{k: v for k, v in r.items() if k not in TIMING_COLUMNS} for r in rows]


def test_train_writes_a_complete_run(tiny_cfg, tmp_path):
    s = train(tiny_cfg(name="toy"), tmp_path, quiet=True)
    run = tmp_path / s["run"]
    assert s["status"] == "finished" and s["epochs_done"] == 2 and s["run"].endswith("-toy")
    for f in ("config.toml", "summary.json", "metrics.csv", "checkpoint.pt", "model.safetensors",
              "model_ema.safetensors", "curves.png"):
        assert (run / f).is_file() and (run / f).stat().st_size > 0, f
    rows = RunDir(run).metrics()
    assert [r["epoch"] for r in rows] == [0, 1]
    for r in rows:
        assert 0 <= r["acc"] <= 1 and 0 <= r["acc_ema"] <= 1 and r["train_loss"] > 0 and r["seconds"] > 0
        assert 0 < r["lr"] < 0.01
    summary = json.loads((run / "summary.json").read_text())
    assert summary["final_acc"] == rows[-1]["acc"] and summary["params"] > 1000
    assert summary["best_acc_ema"] == max(r["acc_ema"] for r in rows)
    assert {"torch", "fastai", "timm"} <= set(summary["versions"])
    assert not list(run.glob(".*tmp*"))  # atomic writes leave no temp files


def test_saved_weights_reload_to_same_predictions(tiny_cfg, tmp_path):
    s = train(tiny_cfg(ema=0.0), tmp_path, quiet=True)
    run = RunDir(tmp_path / s["run"])
    assert not run.weights_path(True).exists()  # no EMA, no EMA file
    _, m1 = load_trained(run)
    _, m2 = load_trained(run)
    x = np.random.default_rng(0).integers(0, 255, (5, 40, 168), dtype=np.uint8)
    p1, p2 = predict_arrays(m1, x), predict_arrays(m2, x)
    assert (p1["sum"] == p2["sum"]).all() and np.allclose(p1["probs"], p2["probs"])
    assert p1["probs"].shape == (5, 37) and p1["digits"].shape == (5, 4)


def test_same_seed_gives_identical_metrics(tiny_cfg, tmp_path):
    a = train(tiny_cfg(workers=1, augment=True), tmp_path / "a", quiet=True)
    b = train(tiny_cfg(workers=1, augment=True), tmp_path / "b", quiet=True)
    assert _metrics(tmp_path / "a" / a["run"]) == _metrics(tmp_path / "b" / b["run"])


class SigintAfter(Callback):
    """Sends this process SIGINT at the end of epoch `n` (as Ctrl-C would)."""

    def __init__(self, n):
        self.n = n

    def after_epoch(self):
        if self.epoch == self.n:
            signal.raise_signal(signal.SIGINT)


def test_interrupt_then_resume_matches_uninterrupted(tiny_cfg, tmp_path):
    before = signal.getsignal(signal.SIGINT)  # default, or SIG_IGN when run in the background
    cfg = tiny_cfg(epochs=3)
    full = train(cfg, tmp_path / "full", quiet=True)
    cut = train(cfg, tmp_path / "cut", quiet=True, extra_cbs=[SigintAfter(0)])
    assert cut["status"] == "interrupted" and "SIGINT" in cut["message"]
    run = tmp_path / "cut" / cut["run"]
    assert len(RunDir(run).metrics()) == 1 and not RunDir(run).weights_path(False).exists()
    resumed = train(None, tmp_path / "cut", quiet=True, resume=str(run))
    assert resumed["status"] == "finished" and resumed["run"] == cut["run"]
    assert _metrics(run) == _metrics(tmp_path / "full" / full["run"])
    assert signal.getsignal(signal.SIGINT) == before  # handlers restored


class PoisonLoss(Callback):
    """Makes the loss NaN at batch 2 of epoch 1."""
    order = 0

    def after_loss(self):
        if self.epoch == 1 and self.iter == 2:
            self.learn.loss = self.learn.loss * float("nan")


def test_divergence_stops_and_keeps_last_good_checkpoint(tiny_cfg, tmp_path):
    s = train(tiny_cfg(epochs=3), tmp_path, quiet=True, extra_cbs=[PoisonLoss()])
    assert s["status"] == "diverged" and "epoch 1, batch 2" in s["message"] and "lr" in s["message"]
    run = RunDir(tmp_path / s["run"])
    ck = run.load_checkpoint()
    assert ck["epoch"] == 0 and all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())
    assert json.loads((run.path / "summary.json").read_text())["status"] == "diverged"


def test_two_runs_in_the_same_second_get_distinct_folders(tiny_cfg, tmp_path):
    a = RunDir.create(tmp_path, tiny_cfg(name="same"))
    b = RunDir.create(tmp_path, tiny_cfg(name="same"))
    assert a.path != b.path and len(list_runs(tmp_path)) == 2


@pytest.mark.parametrize("head", ["sum", "digits"])
def test_heads_and_data_modes_train(tiny_cfg, tmp_path, head):
    s = train(tiny_cfg(head=head, data="synthetic", epochs=1, arch="convnet4", precision="bf16"), tmp_path, quiet=True)
    assert s["status"] == "finished" and s["precision"] == "bf16" and 0 <= s["final_acc"] <= 1


def test_evaluate_says_raw_when_the_run_has_no_ema(tiny_cfg, tmp_path):
    from mlns_fast.data.demo import demo_split
    from mlns_fast.evaluate import evaluate
    s = train(tiny_cfg(ema=0.0, epochs=1), tmp_path, quiet=True)
    res = evaluate(RunDir(tmp_path / s["run"]), demo_split("valid").subset(slice(0, 32)))
    assert res["weights"] == "raw" and res["n"] == 32 and 0 <= res["sum_accuracy"] <= 1


def test_best_weights_are_recorded_and_used_by_default(tiny_cfg, tmp_path):
    from mlns_fast.evaluate import evaluate
    from mlns_fast.runs import finished_weights
    s = train(tiny_cfg(epochs=1, ema=0.5), tmp_path, quiet=True)
    run = RunDir(tmp_path / s["run"])
    want = "ema" if s["final_acc_ema"] >= s["final_acc"] else "raw"
    assert s["weights"] == want and finished_weights(run).name == run.weights_path(want == "ema").name
    summary = json.loads((run.path / "summary.json").read_text())
    for forced in ("raw", "ema"):  # whatever the summary names is what `best` means
        (run.path / "summary.json").write_text(json.dumps({**summary, "weights": forced}))
        assert finished_weights(run) == run.weights_path(forced == "ema")
        assert evaluate(run, make_valid(32))["weights"] == forced
    assert evaluate(run, make_valid(32), "ema")["weights"] == "ema"


def make_valid(n):
    from mlns_fast.data.demo import demo_split
    return demo_split("valid").subset(slice(0, n))


def test_init_from_a_run_records_its_weights_file(tiny_cfg, tmp_path):
    from mlns_fast.runs import finished_weights
    a = train(tiny_cfg(name="pre", data="synthetic", epochs=1), tmp_path, quiet=True)
    b = train(tiny_cfg(name="fine", data="real", head="sum", epochs=1, init="pre"), tmp_path, quiet=True)
    cfg = RunDir(tmp_path / b["run"]).config()
    assert b["status"] == "finished" and cfg.model.init == str(finished_weights(RunDir(tmp_path / a["run"])).resolve())


def test_temperature_is_fitted_and_applied(tiny_cfg, tmp_path):
    from mlns_fast.evaluate import Calibrated, load_trained
    s = train(tiny_cfg(epochs=1), tmp_path, quiet=True)
    assert set(s["temperature"]) == {"raw", "ema"} and all(0.05 < t < 20 for t in s["temperature"].values())
    _, model = load_trained(RunDir(tmp_path / s["run"]), "raw")
    assert isinstance(model, Calibrated) and model.temperature == s["temperature"]["raw"]
    x = torch.rand(3, 1, 40, 168)
    torch.testing.assert_close(model(x), model.model(x) / s["temperature"]["raw"])


def test_self_training_labels_only_sum_consistent_confident_readings():
    """The callback turns readings into digit labels only where they sum to the image's label and every
    digit is confident; the items then serve those digits as known, the others as sum-only."""
    from types import SimpleNamespace

    import torch

    from mlns_fast.callbacks import SelfTraining
    from mlns_fast.data.loaders import Items

    from .conftest import make_samples
    real = make_samples(6, digits=False)
    truth = np.array([[1, 2, 3, 4]] * 6)
    real.sums = np.array([10, 10, 10, 11, 10, 10])  # image 3: readings 1+2+3+4 = 10 disagree with its label
    items = Items(real)

    class Reader(torch.nn.Module):
        def forward(self, x):
            logits = torch.full((len(x), 4, 10), -10.0)
            logits[torch.arange(len(x))[:, None], torch.arange(4), torch.as_tensor(truth[: len(x)])] = 10.0
            logits[:len(x)][x[:, 0, 0, 0] > 0.99, 0] = 0.0  # a flat first digit: not confident
            return logits
    real.images[:, 0, 0] = 0
    real.images[5, 0, 0] = 255  # image 5: unsure of its first digit
    info = {}
    cb = SelfTraining(0.9, info)
    cb.learn = SimpleNamespace(model=Reader(), epoch=1, dls=SimpleNamespace(train=SimpleNamespace(dataset=items),
                                                                            device=None))
    cb.before_train()
    assert items.pseudo[:, 0].tolist() == [1, 1, 1, -1, 1, -1]
    assert info["self_train_labelled"] == [round(4 / 6, 4)]
    _, s, digits, known = items[(0, 1, 0)]
    assert bool(known) and digits.tolist() == [1, 2, 3, 4] and int(s) == 10
    _, _, digits, known = items[(0, 1, 3)]
    assert not bool(known) and digits.tolist() == [0, 0, 0, 0]
    cb.learn.epoch = 0  # the first epoch trains on sums only
    items.pseudo = None
    cb.before_train()
    assert items.pseudo is None


def test_self_training_runs_in_a_fit(tiny_cfg, tmp_path):
    from mlns_fast.train import train
    s = train(tiny_cfg(self_train=0.5, epochs=2, data="real"), runs_dir=tmp_path, quiet=True)
    assert len(s["self_train_labelled"]) == 1 and 0 <= s["self_train_labelled"][0] <= 1
