import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from mlns_fast.config import resolve_config
from mlns_fast.evaluation import load_trained, predict_arrays
from mlns_fast.export import OnnxPredictor, export
from mlns_fast.model import create_model
from mlns_fast.runs import RunDir


def _finished_run(root, head):
    cfg = resolve_config(arch="mlns_cnn", head=head, name=head)
    run = RunDir.create(root, cfg)
    torch.manual_seed(1)
    model = create_model(cfg.model, cfg.size).eval()
    for m in model.modules():  # non-trivial BatchNorm statistics, so eval mode matters
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(run.weights_path(True)))
    return run


@pytest.mark.parametrize("head", ["digits", "sum"])
def test_onnx_matches_pytorch(tmp_path, head):
    run = _finished_run(tmp_path, head)
    path = export(run, "onnx")
    assert path == run.path / "model_ema.onnx" and path.is_file()
    images = np.random.default_rng(0).integers(0, 256, (37, 40, 168), dtype=np.uint8)  # batch size not 2
    torch_pred = predict_arrays(load_trained(run)[1], images)
    onnx_pred = OnnxPredictor(path)(images, bs=16)
    assert np.abs(torch_pred["probs"] - onnx_pred["probs"]).max() < 1e-4
    assert (torch_pred["sum"] == onnx_pred["sum"]).all()
    if head == "digits":
        assert onnx_pred["digits"].shape == (37, 4) and (onnx_pred["digits"] == torch_pred["digits"]).all()
    else:
        assert onnx_pred["digits"] is None


def test_torchscript_matches_pytorch(tmp_path):
    run = _finished_run(tmp_path, "digits")
    path = export(run, "torchscript", tmp_path / "m.pt")
    ts = torch.jit.load(str(path))
    x = torch.rand(5, 1, 40, 168)
    probs, logits = ts(x)
    ref = load_trained(run)[1](x)
    torch.testing.assert_close(logits, ref, atol=1e-5, rtol=1e-4)
    assert probs.shape == (5, 37) and torch.allclose(probs.sum(1), torch.ones(5), atol=1e-5)
