"""Evaluation and prediction with a finished run's weights (EMA by default)."""
from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from .config import LAYOUTS, RunConfig
from .data.demo import demo_split
from .data.mnist import embedded_bank
from .data.render import Renderer
from .data.sources import Samples
from .errors import ModelError
from .losses import sum_log_probs
from .model import MlnsNet, create_model, read_state_dict
from .runs import RunDir, atomic_write, finished_weights


def load_trained(run: RunDir, ema: bool = True) -> tuple[RunConfig, MlnsNet]:
    """A run's config and its network with the final EMA (or raw) weights, in eval mode on CPU."""
    cfg = run.config()
    model = create_model(replace(cfg.model, weights=""), (cfg.render.height, cfg.render.width))
    path = finished_weights(run, ema)
    try:
        model.load_state_dict(read_state_dict(path))
    except RuntimeError as e:
        raise ModelError(f"{path}: weights do not match {cfg.model.arch} ({str(e).splitlines()[0]})") from None
    return cfg, model.eval()


@torch.no_grad()
def predict_arrays(model: torch.nn.Module, images: np.ndarray, bs: int = 256) -> dict[str, np.ndarray]:
    """Sum, its probability, the (37,) sum distribution and (for a digits head) digit readouts per image."""
    probs, digits = [], []
    for i in range(0, len(images), bs):
        x = torch.from_numpy(images[i:i + bs]).float().div_(255).unsqueeze(1)  # (B, 1, H, W)
        out = model(x).float()
        probs.append(sum_log_probs(out).exp())
        if out.ndim == 3:
            digits.append(out.argmax(-1))
    p = torch.cat(probs).numpy()
    return {"sum": p.argmax(1), "confidence": p.max(1), "probs": p,
            "digits": torch.cat(digits).numpy() if digits else None}


def rendered_test_set(layout: str, n: int = 2000, seed: int = 1004) -> Samples:
    """A test set rendered from the *reserved* digits with a named layout (e.g. `tight`), digits known."""
    render = Renderer(LAYOUTS[layout], embedded_bank("reserved"), seed=seed)
    out = [render(i) for i in range(n)]
    return Samples(np.stack([o.image for o in out]), np.array([o.sum for o in out]),
                   np.stack([o.digits for o in out]), f"rendered:{layout}")


def evaluate(run: RunDir, samples: Samples | None = None, ema: bool = True) -> dict:
    """Sum accuracy (and digit accuracy where digits are known) of a run on `samples` (default:
    the demo test split, reserved digits), plus a confusion PNG and a most-confident-mistakes PNG."""
    samples = samples if samples is not None else demo_split("test", with_digits=True)
    _, model = load_trained(run, ema)
    used_ema = finished_weights(run, ema) == run.weights_path(True)  # a run without EMA falls back to raw
    pred = predict_arrays(model, samples.images)
    correct = pred["sum"] == samples.sums
    result = {"run": run.name, "data": samples.source, "weights": "ema" if used_ema else "raw", "n": int(len(samples)),
              "sum_accuracy": float(correct.mean())}
    if pred["digits"] is not None and samples.digits is not None:
        result["digit_accuracy"] = float((pred["digits"] == samples.digits).mean())
        result["all_digits_accuracy"] = float((pred["digits"] == samples.digits).all(1).mean())
    out_dir = run.path / "eval" / f"{_slug(samples.source)}-{result['weights']}"
    out_dir.mkdir(parents=True, exist_ok=True)
    from .plots import image_grid, plot_confusion
    plot_confusion(samples.sums, pred["sum"], out_dir / "confusion.png",
                   f"{run.name} on {samples.source}: {result['sum_accuracy']:.2%}")
    wrong = np.flatnonzero(~correct)
    worst = wrong[np.argsort(-pred["confidence"][wrong])][:16]
    titles = [f"pred {pred['sum'][i]} ({pred['confidence'][i]:.0%})"
              + (f" {''.join(map(str, pred['digits'][i]))}" if pred["digits"] is not None else "")
              + f" | true {samples.sums[i]}" for i in worst]
    if len(worst):
        image_grid(samples.images[worst], titles, out_dir / "mistakes.png", suptitle="most confident mistakes")
    result["files"] = [str(p) for p in sorted(out_dir.glob("*.png"))]
    atomic_write(out_dir / "result.json", json.dumps(result, indent=2) + "\n")
    return result


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", Path(s).name if "/" in s else s).strip("-")[:60] or "data"
