"""`--compile` (torch.compile of the model) with what a run does around it: EMA, stop and resume, export."""
import numpy as np
import torch
from safetensors.torch import load_file

from mlns_fast.config import resolve_config
from mlns_fast.export import OnnxPredictor, export
from mlns_fast.model import create_model
from mlns_fast.reading import load_trained, predict_arrays
from mlns_fast.runs import RunDir
from mlns_fast.training import train

from .conftest import SigintAfter


def test_a_compiled_run_with_ema_stops_resumes_and_exports(tiny_cfg, tmp_path):
    cfg = tiny_cfg(compile=True, ema=0.9, epochs=2, arch="convnet4", precision="bf16")
    cut = train(cfg, tmp_path, quiet=True, extra_cbs=[SigintAfter(0)])
    assert cut["status"] == "interrupted"
    run = RunDir(tmp_path / cut["run"])
    done = train(None, tmp_path, quiet=True, resume=str(run.path))
    assert done["status"] == "finished" and done["epochs_done"] == 2 and done["config_digest"] == cut["config_digest"]
    assert np.isfinite(done["final_acc_ema"]) and 0 <= done["final_acc_ema"] <= 1
    # weights on disk are the plain model's: no torch.compile wrapper in the keys, loadable uncompiled
    plain = create_model(resolve_config(arch="convnet4").model, (40, 168)).state_dict()
    for which in ("model.safetensors", "model_ema.safetensors"):
        saved = load_file(run.path / which)
        assert saved.keys() == plain.keys()
        assert all(v.shape == plain[k].shape for k, v in saved.items())
    # the EMA weights moved away from the raw ones (the average was updated through the compiled model)
    raw, ema = load_file(run.path / "model.safetensors"), load_file(run.path / "model_ema.safetensors")
    assert any(not torch.equal(raw[k], ema[k]) for k in raw if raw[k].is_floating_point())
    # ONNX export of the compiled run agrees with PyTorch
    images = np.random.default_rng(0).integers(0, 256, (12, 40, 168), dtype=np.uint8)
    path = export(run, "onnx")
    torch_pred = predict_arrays(load_trained(run, "best", tta=True)[1], images)  # export's default: the TTA graph
    onnx_pred = OnnxPredictor(path)(images, bs=4)
    assert np.abs(torch_pred["probs"] - onnx_pred["probs"]).max() < 1e-4
    assert (torch_pred["sum"] == onnx_pred["sum"]).all()
