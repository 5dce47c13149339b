"""Export a run's network (its best weights set by default) to ONNX or TorchScript, and run ONNX with onnxruntime.

The exported graph takes `image` (B, 1, H, W) float32 in 0..1 (dynamic batch; H x W the run's size,
40 x 168 by default) and returns
`sum_probs` (B, 37) and, for a digits head, `digit_logits` (B, 4, 10). With `tta` the graph is the
shift test-time augmentation (`reading.ShiftTTA`: five copies, per-digit log-probabilities averaged)
and `digit_logits` holds those mean log-probabilities: the same readout as `predict --tta`.
"""
from __future__ import annotations

import hashlib
import logging
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .errors import ConfigError, RunError
from .files import atomic_path
from .losses import sum_log_probs
from .reading import batches, load_trained, readout
from .runs import DEFAULT_TTA, RunDir, finished_weights

log = logging.getLogger(__name__)
FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}


class Exported(nn.Module):
    """The network with its outputs made self-explanatory: sum probabilities (+ digit logits)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor):
        out = self.model(image).float()
        probs = sum_log_probs(out).exp()
        return (probs, out) if out.ndim == 3 else (probs,)


def export(run: RunDir, fmt: str = "onnx", out: str | Path | None = None, which: str = "best",
           tta: bool = DEFAULT_TTA) -> Path:
    """Write the run's network (with `tta`: wrapped in shift TTA) as ONNX (opset 17, dynamic batch) or
    TorchScript; returns the file."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    weights = finished_weights(run, which)
    if out:  # checked before any work: a folder, an unwritable place or the run's own files are refused
        from .outputs import check_output
        out = check_output(out, example="model" + FORMATS[fmt])
    else:
        out = _in_run(run, _export_name(weights, fmt, tta))
    return _write(run, fmt, out, which, weights, tta)


def _export_name(weights: Path, fmt: str, tta: bool) -> str:
    """model_ema.onnx, or model_ema.tta.onnx for the TTA graph: both can live beside the weights."""
    return weights.with_suffix((".tta" if tta else "") + FORMATS[fmt]).name


def _in_run(run: RunDir, name: str) -> Path:
    """An export's place in the run folder (containment checked); a folder there is the user's to remove."""
    path = run.file(name)
    if path.is_dir():
        raise RunError(f"{path}: is a folder where the run's {name} goes; remove or rename it")
    return path


def _write(run: RunDir, fmt: str, out: Path, which: str, weights: Path, tta: bool = False) -> Path:
    cfg, model = load_trained(run, which, tta)
    with atomic_path(out) as tmp:
        if fmt == "onnx":
            write_onnx(model, tmp, cfg.model.head, cfg.size)
            _stamp(tmp, weights_digest(weights), tta)
        else:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.jit.save(torch.jit.trace(Exported(model).eval(), torch.rand(2, 1, *cfg.size)), str(tmp))
    return out


def write_onnx(model: nn.Module, path: Path, head: str, size: tuple[int, int]) -> Path:
    """`model` (an eval-mode network, plain or TTA) as the ONNX graph described above, at `path`."""
    names = ["sum_probs"] + (["digit_logits"] if head == "digits" else [])
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # TorchScript-based exporter: the dynamo one needs onnxscript, which this project does not ship.
        torch.onnx.export(Exported(model).eval(), (torch.rand(2, 1, *size),), str(path), input_names=["image"],
                          output_names=names, opset_version=17,
                          dynamic_axes={n: {0: "batch"} for n in ["image", *names]}, dynamo=False)
    return path


WEIGHTS_KEY = "mlns_fast.weights_sha256"  # ONNX metadata: which weights file this graph was exported from
TTA_KEY = "mlns_fast.tta"  # ONNX metadata: "shift" where the graph is the shift TTA, else "none"


def _graph_kind(tta: bool) -> str:
    return "shift" if tta else "none"


def weights_digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _stamp(path: Path, digest: str, tta: bool) -> None:
    import onnx
    m = onnx.load(str(path))
    m.metadata_props.add(key=WEIGHTS_KEY, value=digest)
    m.metadata_props.add(key=TTA_KEY, value=_graph_kind(tta))
    onnx.save(m, str(path))


def onnx_for(run: RunDir, which: str = "best", tta: bool = False) -> Path:
    """The run's ONNX file for these weights (and TTA or not): the cached one if it was exported from
    exactly these weights as this graph (its metadata says so), else a fresh export (a stale, foreign
    or corrupt file is replaced)."""
    import onnx
    from google.protobuf.message import DecodeError
    weights = finished_weights(run, which)
    path = _in_run(run, _export_name(weights, "onnx", tta))
    try:
        props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        same = props.get(WEIGHTS_KEY) == weights_digest(weights)
        if same and props.get(TTA_KEY, _graph_kind(False)) == _graph_kind(tta):  # files before TTA_KEY: plain
            return path
        log.info("%s was not exported from this run's weights; exporting again", path.name)
    except FileNotFoundError:
        pass
    except (DecodeError, OSError, ValueError, RuntimeError) as e:  # a corrupt or foreign file
        log.info("%s is unreadable (%s); exporting again", path.name, type(e).__name__)
    return _write(run, "onnx", path, which, weights, tta)


class OnnxPredictor:
    """onnxruntime (CPU) session over an exported file, with the same outputs as `predict_arrays`."""

    def __init__(self, path: str | Path, threads: int | None = None):
        import onnxruntime as ort
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def __call__(self, images: np.ndarray, bs: int = 256) -> dict[str, np.ndarray]:
        outs = [self.session.run(None, {"image": x}) for x in batches(images, bs)]
        probs = np.concatenate([o[0] for o in outs])
        return readout(probs, np.concatenate([o[1] for o in outs]) if len(outs[0]) > 1 else None)
