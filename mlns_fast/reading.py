"""A finished run's network and how it reads images: its chosen weights (`weights_set`), the
temperature it fitted, shift test-time augmentation, and the one batched readout every prediction path
uses (evaluate, robustness, predict, export's check, self-training, harvesting, the experiments)."""
from __future__ import annotations

import numpy as np
import torch

from .config import RunConfig
from .errors import ModelError, RunError
from .heap import keep_large_blocks
from .losses import mean_log_probs, sum_log_probs
from .model import create_model, read_state_dict
from .runs import RunDir, weights_set


def load_trained(run: RunDir, which: str = "best", tta: bool = False,
                 calibrate: bool = True) -> tuple[RunConfig, torch.nn.Module]:
    """A run's config and its network with its final best (or raw, or EMA) weights, in eval mode on CPU;
    calibrated where the run fitted a temperature (`calibrate` False: the logits as the run's own validation
    read them); `tta`: wrapped in shift test-time augmentation."""
    cfg = run.config()
    model = create_model(cfg.model.without_first_weights(), cfg.size)  # the run's own weights replace them
    used = weights_set(run, which)
    path = run.weights_path(used == "ema")
    try:
        model.load_state_dict(read_state_dict(path))
    except RuntimeError as e:
        raise ModelError(f"{path}: weights do not match {cfg.model.arch} ({str(e).splitlines()[0]})") from None
    t = run_temperature(run, used) if calibrate else 1.0

    def calibrated(net: torch.nn.Module) -> torch.nn.Module:
        return Calibrated(net, t) if t != 1.0 else net
    return cfg, (shift_tta(model, calibrated) if tta else calibrated(model)).eval()


def shift_tta(model: torch.nn.Module, inner=None) -> "ShiftTTA":
    """`model` read through shift TTA, its ink fit taken out to run once before the shifts (after them,
    InkFit would centre every shifted copy back); `inner` wraps the rest (e.g. the temperature)."""
    fit, model.fit = model.fit, None
    return ShiftTTA(inner(model) if inner else model, fit)


def run_temperature(run: RunDir, weights: str) -> float:
    """The temperature fitted on the valid split at the end of the run for these weights (1.0 if none)."""
    try:
        t = (run.summary().get("temperature") or {}).get(weights, 1.0)
    except (RunError, AttributeError):
        return 1.0
    return float(t) if isinstance(t, (int, float)) and 0.01 <= t <= 100 else 1.0


class Calibrated(torch.nn.Module):
    """A network whose logits are divided by its fitted temperature: same argmax per digit, honest confidences."""

    def __init__(self, model: torch.nn.Module, temperature: float):
        super().__init__()
        self.model, self.temperature = model, float(temperature)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) / self.temperature


class ShiftTTA(torch.nn.Module):
    """Test-time augmentation: the mean log-probabilities over copies shifted by a few pixels (zero fill,
    the background is black). Written here because a module keeps it in the ONNX graph and in every
    backend's one readout; fastai's `Learner.tta` works on its own DataLoaders with its own transforms.
    Output: per-digit log-probabilities (digits head) or sum log-probabilities, read like logits."""

    SHIFTS = ((0, 0), (-2, 0), (2, 0), (0, -2), (0, 2))  # (dx, dy) pixels

    def __init__(self, model: torch.nn.Module, fit: torch.nn.Module | None = None):
        super().__init__()
        self.model, self.fit = model, fit  # fit: the network's InkFit, taken out of it to run before the shifts

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fit is not None:
            x = self.fit(x)
        h, w, p = x.shape[-2], x.shape[-1], max(max(abs(dx), abs(dy)) for dx, dy in self.SHIFTS)
        padded = torch.nn.functional.pad(x, (p, p, p, p))
        return mean_log_probs([self.model(padded[..., p + dy:p + dy + h, p + dx:p + dx + w])
                               for dx, dy in self.SHIFTS])


def batches(images: np.ndarray, bs: int = 256):
    """uint8 (N, H, W) images as float32 (B, 1, H, W) batches in 0..1: the input of every backend."""
    for i in range(0, len(images), bs):
        yield images[i:i + bs, None].astype(np.float32) / 255.0


def readout(probs: np.ndarray, digit_logits: np.ndarray | None) -> dict[str, np.ndarray]:
    """Predictions from (N, 37) sum probabilities and optional (N, 4, 10) digit logits."""
    return {"sum": probs.argmax(1), "confidence": probs.max(1), "probs": probs,
            "digits": None if digit_logits is None else digit_logits.argmax(-1)}


@torch.no_grad()
def predict_outputs(model: torch.nn.Module, images: np.ndarray, bs: int = 256) -> torch.Tensor:
    """The network's raw output for every image: (N, 37) sum logits or (N, 4, 10) digit logits. Every
    batch reuses the last one's memory (`heap.keep_large_blocks`: 1.4-1.8x as fast on a CPU,
    benchmarks/heap.py --read)."""
    keep_large_blocks()
    return torch.cat([model(torch.from_numpy(x)).float() for x in batches(images, bs)])


def read_outputs(out: torch.Tensor) -> dict[str, np.ndarray]:
    """`readout` of a network's raw output ((N, 37) sum logits or (N, 4, 10) digit logits)."""
    return readout(sum_log_probs(out).exp().numpy(), out.numpy() if out.ndim == 3 else None)


def predict_arrays(model: torch.nn.Module, images: np.ndarray, bs: int = 256) -> dict[str, np.ndarray]:
    """Sum, its probability, the (37,) sum distribution and (for a digits head) digit readouts per image."""
    return read_outputs(predict_outputs(model, images, bs))
