"""Evaluation and prediction with a finished run's weights (its best set by default: `weights_set`),
read as `reading` reads them: figures, plots and result files on test sets, rows for `predict`.

Every image reaches a run's network at the run's own input size (`RunConfig.size`): test sets and
prediction inputs of another size are resized here, as training resized its real images."""
from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from .config import layout_config
from .data.demo import demo_split
from .data.render import create_renderer, render_samples
from .data.sources import Samples, load_images
from .errors import ConfigError, RunError
from .export import OnnxPredictor, onnx_for
from .files import atomic_write
from .heap import keep_large_blocks
from .losses import digit_accuracy, sum_accuracy
from .reading import load_trained, predict_arrays, predict_outputs, read_outputs, run_temperature
from .runs import DEFAULT_TTA, RunDir, reading_label, weights_set


def predict(run: RunDir, inputs: list[str], which: str = "best", tta: bool = DEFAULT_TTA,
            backend: str = "torch") -> list[dict]:
    """A run's reading of image files / .npy stacks (resized to the run's input size): one row per
    image with its name, sum, sum confidence and (digits head) digits."""
    if backend not in BACKENDS:
        raise ConfigError(f"--backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
    cfg = run.config()
    images, names = load_images(inputs, cfg.size)
    if backend == "onnx":
        pred = OnnxPredictor(onnx_for(run, which, tta))(images)
    else:
        pred = predict_arrays(load_trained(run, which, tta)[1], images)
    return [{"input": n, "sum": int(pred["sum"][i]), "confidence": round(float(pred["confidence"][i]), 4),
             "digits": None if pred["digits"] is None else [int(d) for d in pred["digits"][i]]}
            for i, n in enumerate(names)]


BACKENDS = ("torch", "onnx")


def rendered_test_set(layout: str, size: tuple[int, int], n: int = 2000, seed: int = 1004) -> Samples:
    """A test set rendered at `size` from the *reserved* digits with a named layout (e.g. `tight`), digits known."""
    renderer = create_renderer(replace(layout_config(layout), height=size[0], width=size[1]), seed, pool="reserved")
    return render_samples(renderer, n, source=f"rendered:{layout}")


def score(model: torch.nn.Module, samples: Samples) -> tuple[dict, dict]:
    """A model's figures on samples: n, sum accuracy, expected calibration error of the sum confidence,
    and digit accuracies where the digits are known; plus its predictions."""
    out = predict_outputs(model, samples.images)
    pred = read_outputs(out)
    sums = torch.from_numpy(samples.sums)
    metrics = {"n": int(len(samples)), "sum_accuracy": float(sum_accuracy(out, sums)),
               "ece": calibration_error(pred["confidence"], pred["sum"] == samples.sums)}
    if pred["digits"] is not None and samples.digits is not None:
        digits, known = torch.from_numpy(samples.digits), torch.ones(len(samples), dtype=torch.bool)
        metrics["digit_accuracy"] = float(digit_accuracy(out, sums, digits, known))
        metrics["all_digits_accuracy"] = float((pred["digits"] == samples.digits).all(1).mean())
    return metrics, pred


def calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = 15) -> float:
    """Expected calibration error: mean |accuracy - confidence| over equal-width confidence bins,
    weighted by the share of predictions in each bin."""
    idx = np.clip(np.digitize(confidence, np.linspace(0.0, 1.0, bins + 1)[1:-1]), 0, bins - 1)
    return float(sum((idx == b).mean() * abs(correct[idx == b].mean() - confidence[idx == b].mean())
                     for b in range(bins) if (idx == b).any()))


def evaluate(run: RunDir, samples: Samples | None = None, which: str = "best", tta: bool = DEFAULT_TTA) -> dict:
    """Sum accuracy (and digit accuracy where digits are known) of a run on `samples` (default:
    the demo test split, reserved digits), plus a confusion PNG and a most-confident-mistakes PNG."""
    keep_large_blocks()  # a bad $MLNS_FAST_HEAP_KEEP is refused before the results folder is made
    samples = samples if samples is not None else demo_split("test", with_digits=True)
    used = weights_set(run, which)
    out_dir = results_dir(run, "eval", f"{_slug(samples.source)}-{reading_label(used, tta)}", "evaluation")
    cfg, model = load_trained(run, which, tta)
    samples = samples.at_size(cfg.size)
    metrics, pred = score(model, samples)
    result = {"run": run.name, "data": samples.source, "weights": used, "tta": tta,
              "temperature": run_temperature(run, used), **metrics}
    correct = pred["sum"] == samples.sums
    from .plots import image_grid, plot_confusion
    plot_confusion(samples.sums, pred["sum"], out_dir / "confusion.png",
                   f"{run.name} on {samples.source}: {result['sum_accuracy']:.2%}")
    wrong = np.flatnonzero(~correct)
    worst = wrong[np.argsort(-pred["confidence"][wrong])][:16]
    if len(worst):
        image_grid(samples.images[worst], mistake_titles(pred, samples, worst), out_dir / "mistakes.png",
                   suptitle="most confident mistakes")
    result["files"] = [str(p) for p in sorted(out_dir.glob("*.png"))]
    atomic_write(out_dir / "result.json", json.dumps(result, indent=2) + "\n")
    from .tracking import log_results  # into the run's MLflow run, where it was tracked
    log_results(run, f"eval/{out_dir.name}", {k: result[k] for k in FIGURES if k in result},
                [out_dir / "result.json", *result["files"]])
    return result


def results_dir(run: RunDir, kind: str, name: str, what: str) -> Path:
    """RUN/<kind>/<name>/, made before any work: inside the run folder, no symbolic link on the way."""
    out_dir = run.file(kind, name)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunError(f"{out_dir}: cannot write {what} files ({e.strerror})") from None
    return out_dir


def mistake_titles(pred: dict, samples: Samples, idx) -> list[str]:
    """`pred 17 (93%) 4733 | true 18 4743`: the predicted sum, its confidence and digit readout, then the
    true sum and, where the data knows them, the true digits."""
    def digits(d, i):
        return f" {''.join(map(str, d[i]))}" if d is not None else ""
    return [f"pred {pred['sum'][i]} ({pred['confidence'][i]:.0%}){digits(pred['digits'], i)}"
            f" | true {samples.sums[i]}{digits(samples.digits, i)}" for i in idx]


FIGURES = ("n", "sum_accuracy", "digit_accuracy", "all_digits_accuracy", "ece", "temperature")  # numbers a tracker gets


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", Path(s).name if "/" in s else s).strip("-")[:60] or "data"
