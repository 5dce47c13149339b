import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from mlns_fast.config import resolve_config
from mlns_fast.export import TTA_KEY, OnnxPredictor, export, onnx_for
from mlns_fast.model import create_model
from mlns_fast.reading import load_trained, predict_arrays
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
    path = export(run, "onnx", tta=False)
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
    path = export(run, "torchscript", tmp_path / "m.pt", tta=False)
    ts = torch.jit.load(str(path))
    x = torch.rand(5, 1, 40, 168)
    probs, logits = ts(x)
    ref = load_trained(run)[1](x)
    torch.testing.assert_close(logits, ref, atol=1e-5, rtol=1e-4)
    assert probs.shape == (5, 37) and torch.allclose(probs.sum(1), torch.ones(5), atol=1e-5)


def test_tta_graph_matches_torch_tta(tmp_path):
    """`export` writes the shift-TTA graph by default (`--no-tta`: the plain one, beside it); `onnx_for`
    keeps the two apart and re-exports a file whose metadata does not say it is the graph asked for."""
    import onnx
    run = _finished_run(tmp_path, "digits")
    images = np.random.default_rng(1).integers(0, 256, (21, 40, 168), dtype=np.uint8)
    path = export(run, "onnx")  # the default reading: shift TTA
    assert path == run.path / "model_ema.tta.onnx"
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert meta[TTA_KEY] == "shift"
    cfg, tta_net = load_trained(run, tta=True)
    torch_tta = predict_arrays(tta_net, images)
    onnx_tta = OnnxPredictor(path)(images, bs=8)
    assert np.abs(torch_tta["probs"] - onnx_tta["probs"]).max() < 1e-4
    assert (torch_tta["sum"] == onnx_tta["sum"]).all() and (torch_tta["digits"] == onnx_tta["digits"]).all()
    plain = onnx_for(run)  # the plain graph, its own file
    assert plain == run.path / "model_ema.onnx" and plain.is_file()

    def ops(p, kind):
        return sum(n.op_type == kind for n in onnx.load(str(p)).graph.node)
    # five copies through the backbone and the reader (an untrained net reads them almost alike, so count);
    # the ink fit runs once, before the shifts: the line map (the default) is its three Max nodes
    assert cfg.model.ink_map == "lines" and ops(path, "Max") == ops(plain, "Max") >= 3
    assert ops(path, "Conv") == 5 * ops(plain, "Conv") > 0
    assert ops(path, "GRU") == 5 * ops(plain, "GRU") > 0
    (run.path / "model_ema.tta.onnx").write_bytes((run.path / "model_ema.onnx").read_bytes())  # a plain graph under the TTA name
    again = onnx_for(run, tta=True)
    assert {p.key: p.value for p in onnx.load(str(again)).metadata_props}[TTA_KEY] == "shift"
    assert np.abs(OnnxPredictor(again)(images)["probs"] - onnx_tta["probs"]).max() < 1e-5
    ts = torch.jit.load(str(export(run, "torchscript", tmp_path / "tta.pt", tta=True)))
    with torch.no_grad():
        probs, _ = ts(torch.from_numpy(images[:5, None].astype(np.float32) / 255))
    assert np.abs(probs.numpy() - torch_tta["probs"][:5]).max() < 1e-4
