import json
import signal

import numpy as np
import pytest
import torch
from fastai.callback.core import Callback

from mlns_fast.reading import load_trained, predict_arrays, predict_outputs
from mlns_fast.runs import RunDir, list_runs
from mlns_fast.training import train

from .conftest import SigintAfter

TIMING_COLUMNS = ("seconds",)  # wall-clock: the only metrics.csv columns that differ between identical runs


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


class KeepFinalModel(Callback):
    """Keeps a copy of the trained network as it is when the fit ends (what the run saves)."""
    order = 100

    def after_fit(self):
        import copy
        from timm.utils import unwrap_model
        self.kept = copy.deepcopy(unwrap_model(self.learn.model)).float().eval().cpu()


@pytest.mark.parametrize("flags", [{}, {"arch": "resnet18", "prune_stages": 2}], ids=["mlns_cnn", "resnet18-pruned"])
def test_saved_weights_reload_to_the_trained_network(tiny_cfg, tmp_path, flags):
    """The run's config rebuilds its network: a pruned backbone (--prune-stages) is pruned again on loading."""
    keep = KeepFinalModel()
    s = train(tiny_cfg(ema=0.0, **flags), tmp_path, quiet=True, extra_cbs=[keep])
    run = RunDir(tmp_path / s["run"])
    assert not run.weights_path(True).exists()  # no EMA, no EMA file
    _, loaded = load_trained(run)
    t = s["temperature"]["raw"]  # predictions are calibrated: logits / t
    x = np.random.default_rng(0).integers(0, 255, (5, 40, 168), dtype=np.uint8)
    torch.testing.assert_close(predict_outputs(loaded, x), predict_outputs(keep.kept, x) / t, atol=1e-5, rtol=1e-4)
    p = predict_arrays(loaded, x)
    assert p["probs"].shape == (5, 37) and p["digits"].shape == (5, 4)


def test_same_seed_gives_identical_metrics(tiny_cfg, tmp_path):
    # deterministic: on a GPU too (a no-op for the CPU kernels CI runs)
    a = train(tiny_cfg(workers=1, augment=True, deterministic=True), tmp_path / "a", quiet=True)
    b = train(tiny_cfg(workers=1, augment=True, deterministic=True), tmp_path / "b", quiet=True)
    assert _metrics(tmp_path / "a" / a["run"]) == _metrics(tmp_path / "b" / b["run"])




def test_interrupt_then_resume_matches_uninterrupted(tiny_cfg, tmp_path):
    before = signal.getsignal(signal.SIGINT)  # default, or SIG_IGN when run in the background
    cfg = tiny_cfg(epochs=3, deterministic=True)
    full = train(cfg, tmp_path / "full", quiet=True)
    cut = train(cfg, tmp_path / "cut", quiet=True, extra_cbs=[SigintAfter(0)])
    assert cut["status"] == "interrupted" and "SIGINT" in cut["message"]
    run = tmp_path / "cut" / cut["run"]
    assert len(RunDir(run).metrics()) == 1 and not RunDir(run).weights_path(False).exists()
    resumed = train(None, tmp_path / "cut", quiet=True, resume=str(run))
    assert resumed["status"] == "finished" and resumed["run"] == cut["run"]
    assert _metrics(run) == _metrics(tmp_path / "full" / full["run"])
    steps = RunDir(run).steps()  # per-step losses: the interrupted epoch's steps are not kept twice
    assert [r["step"] for r in steps] == list(range(1, len(steps) + 1)) and steps[-1]["epoch"] == 2
    assert steps == RunDir(tmp_path / "full" / full["run"]).steps()
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


@pytest.mark.parametrize("head, shape", [("sum", (3, 37)), ("digits", (3, 4, 10))])
def test_heads_and_data_modes_train(tiny_cfg, tmp_path, head, shape):
    s = train(tiny_cfg(head=head, data="synthetic", epochs=1, arch="convnet4", precision="bf16"), tmp_path, quiet=True)
    assert s["status"] == "finished" and s["precision"] == "bf16"
    assert s["final_acc"] * 48 == pytest.approx(round(s["final_acc"] * 48), abs=1e-6)  # a share of the 48 valid images
    run = RunDir(tmp_path / s["run"])
    _, model = load_trained(run, "raw")
    assert tuple(predict_outputs(model, np.zeros((3, 40, 168), np.uint8)).shape) == shape


def test_evaluate_says_raw_when_the_run_has_no_ema(tiny_cfg, tmp_path):
    from mlns_fast.data.demo import demo_split
    from mlns_fast.evaluation import evaluate
    s = train(tiny_cfg(ema=0.0, epochs=1), tmp_path, quiet=True)
    run, samples = RunDir(tmp_path / s["run"]), demo_split("valid").subset(slice(0, 32))
    res = evaluate(run, samples)  # read the default way: through shift TTA
    right = predict_arrays(load_trained(run, "raw", tta=True)[1], samples.images)["sum"] == samples.sums
    assert res["weights"] == "raw" and res["tta"] is True and res["n"] == 32
    assert res["sum_accuracy"] == pytest.approx(right.mean())
    plain = evaluate(run, samples, tta=False)
    right = predict_arrays(load_trained(run, "raw")[1], samples.images)["sum"] == samples.sums
    assert plain["tta"] is False and plain["sum_accuracy"] == pytest.approx(right.mean())


def test_best_weights_are_recorded_and_used_by_default(tiny_cfg, tmp_path):
    from mlns_fast.evaluation import evaluate
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
    from mlns_fast.reading import Calibrated, load_trained
    s = train(tiny_cfg(epochs=1), tmp_path, quiet=True)
    assert set(s["temperature"]) == {"raw", "ema"} and all(0.05 < t < 20 for t in s["temperature"].values())
    _, model = load_trained(RunDir(tmp_path / s["run"]), "raw")
    assert isinstance(model, Calibrated) and model.temperature == s["temperature"]["raw"]
    x = torch.rand(3, 1, 40, 168)
    torch.testing.assert_close(model(x), model.model(x) / s["temperature"]["raw"])
    _, plain = load_trained(RunDir(tmp_path / s["run"]), "raw", calibrate=False)  # the logits validation read
    assert not isinstance(plain, Calibrated)
    torch.testing.assert_close(plain(x), model.model(x))


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
    cb = SelfTraining(0.9)
    cb.learn = SimpleNamespace(model=Reader(), epoch=1, dls=SimpleNamespace(train=SimpleNamespace(dataset=items),
                                                                            device=None))
    cb.before_train()
    assert items.pseudo[:, 0].tolist() == [1, 1, 1, -1, 1, -1]
    assert cb.summary() == {"self_train_labelled": [round(4 / 6, 4)]}  # what RunTracker writes to summary.json
    _, s, digits, known = items[(0, 1, 0)]
    assert bool(known) and digits.tolist() == [1, 2, 3, 4] and int(s) == 10
    _, _, digits, known = items[(0, 1, 3)]
    assert not bool(known) and digits.tolist() == [0, 0, 0, 0]
    cb.learn.epoch = 0  # the first epoch trains on sums only
    items.pseudo = None
    cb.before_train()
    assert items.pseudo is None


def test_self_training_runs_in_a_fit(tiny_cfg, tmp_path):
    from mlns_fast.training import train
    s = train(tiny_cfg(self_train=0.5, epochs=2, data="real"), runs_dir=tmp_path, quiet=True)
    assert len(s["self_train_labelled"]) == 1 and 0 <= s["self_train_labelled"][0] <= 1


class BatchShapes(Callback):
    """Records the input shape of every training batch."""

    def before_fit(self):
        self.shapes = set()

    def before_batch(self):
        if self.training:
            self.shapes.add(tuple(self.xb[0].shape[1:]))


def test_a_run_at_another_image_size_honours_it_everywhere(tiny_data, tmp_path):
    """The run's size (one home: `[render] height / width`) reaches every reader of images: real files
    (40 x 168 on disk) are resized, synthetic ones rendered at it, and evaluate / predict / export
    feed the network at it."""
    from mlns_fast.config import resolve_config
    from mlns_fast.evaluation import evaluate, predict
    from mlns_fast.export import OnnxPredictor, export
    from .conftest import tiny_flags
    f = tmp_path / "size.toml"
    f.write_text("[render]\nheight = 48\nwidth = 192\n")
    shapes = BatchShapes()
    s = train(resolve_config(str(f), **tiny_flags(tiny_data, epochs=1)), tmp_path / "runs", quiet=True,
              extra_cbs=[shapes])
    run = RunDir(tmp_path / "runs" / s["run"])
    assert s["status"] == "finished" and shapes.shapes == {(1, 48, 192)} and s["grid"] == "6x24"
    assert run.config().size == (48, 192)
    valid = make_valid(32)  # 40 x 168, as the course ships them
    res = evaluate(run, valid, "raw")
    _, model = load_trained(run, "raw", tta=True)  # the default reading
    big = valid.at_size((48, 192)).images
    assert res["sum_accuracy"] == pytest.approx((predict_arrays(model, big)["sum"] == valid.sums).mean())
    np.save(tmp_path / "x.npy", valid.images[:6])
    rows = predict(run, [str(tmp_path / "x.npy")], "raw")
    assert [r["sum"] for r in rows] == predict_arrays(model, big[:6])["sum"].tolist()
    onnx = OnnxPredictor(export(run, "onnx", tmp_path / "m.onnx", "raw"))(big[:6])
    assert onnx["sum"].tolist() == [r["sum"] for r in rows]


def test_data_sources_name_the_demo_by_version_and_hash_the_content(tiny_data):
    from types import SimpleNamespace
    from mlns_fast.data.demo import demo_version
    from mlns_fast.data.sources import content_hash, load_source
    from mlns_fast.training import data_sources
    mine = load_source(tiny_data["train"])
    edited = load_source(tiny_data["train"])
    edited.images = edited.images.copy()
    edited.images[0, 0, 0] ^= 1  # one pixel of one image changed, same path
    demo = load_source(tiny_data["valid"])
    demo.source = "demo:valid"
    dls = lambda train, valid: SimpleNamespace(train=SimpleNamespace(dataset=SimpleNamespace(real=train)),
                                               valid=SimpleNamespace(dataset=SimpleNamespace(real=valid)))
    got = data_sources(dls(mine, demo))
    assert got["train"] == {"source": tiny_data["train"], "sha1": content_hash(mine), "n": 96}
    assert got["valid"]["source"] == f"demo-{demo_version()}:valid"
    assert data_sources(dls(edited, demo))["train"]["sha1"] != got["train"]["sha1"]
    assert "train" not in data_sources(dls(None, demo))  # synthetic only


def test_deterministic_sets_the_process_kernels_both_ways(tiny_cfg, tmp_path):
    from mlns_fast.training import prepare
    prepare(tiny_cfg(deterministic=True), "cpu", tmp_path)
    assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
    prepare(tiny_cfg(), "cpu", tmp_path)  # the next run in the same process (a suite, a sweep) gets the default back
    assert not torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.deterministic
