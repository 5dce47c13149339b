"""PNG figures: training curves, labelled image grids, confusion matrix, mistakes gallery, run comparison."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path: str | Path) -> Path:
    """Write a figure atomically (format from the suffix: png, pdf, svg...; png when it names none)."""
    from .files import atomic_path
    path = Path(path)
    fmt = path.suffix[1:].lower()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110, bbox_inches="tight",
                        format=fmt if fmt in fig.canvas.get_supported_filetypes() else "png")
    finally:
        _plt().close(fig)
    return path


def _series(rows: list[dict], key: str) -> tuple[list, list]:
    pts = [(r["epoch"] + 1, r[key]) for r in rows if r.get(key) is not None]
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_curves(rows: list[dict], path: str | Path, title: str = "", steps: list[dict] | None = None) -> Path:
    """Validation accuracy raw vs EMA per epoch; the training loss per step (fastai's smoothed loss, the
    raw batch losses faint) beside the valid loss per epoch, on one axis in epochs. Without `steps`
    (runs from before steps.csv) the per-epoch train loss is drawn instead."""
    fig, _ = curves_figure(rows, title, steps)
    return _save(fig, path)


def curves_figure(rows: list[dict], title: str = "", steps: list[dict] | None = None):
    """The figure of `plot_curves` and its two axes (accuracy, loss)."""
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 3.8))
    for key, label in (("acc", "raw weights"), ("acc_ema", "EMA weights")):
        a1.plot(*_series(rows, key), marker="o", label=label)
    a1.set(xlabel="epoch", ylabel="valid sum accuracy", title="accuracy: raw vs EMA")
    if steps:
        x = _step_epochs(steps)
        a2.plot(x, [r.get("loss") for r in steps], color="C0", alpha=0.2, linewidth=0.6)
        a2.plot(x, [r.get("smooth_loss") for r in steps], color="C0", label="train (per step, smoothed)")
    else:
        a2.plot(*_series(rows, "train_loss"), marker="o", label="train")
    for key, label in (("valid_loss", "valid (raw)"), ("valid_loss_ema", "valid (EMA)")):
        a2.plot(*_series(rows, key), marker="o", label=label)
    a2.set(xlabel="epoch", ylabel="loss", title="loss", yscale="log")
    for a in (a1, a2):
        a.grid(alpha=0.3)
        a.legend()
    fig.suptitle(title)
    return fig, (a1, a2)


def _step_epochs(steps: list[dict]) -> list[float]:
    """Each step's place in epochs (epoch e's k-th of n steps at e + k/n), so a step's loss lines up
    with the valid loss drawn at the end of its epoch."""
    per_epoch: dict[int, int] = {}
    for r in steps:
        per_epoch[r["epoch"]] = per_epoch.get(r["epoch"], 0) + 1
    seen: dict[int, int] = {}
    out = []
    for r in steps:
        seen[r["epoch"]] = seen.get(r["epoch"], 0) + 1
        out.append(r["epoch"] + seen[r["epoch"]] / per_epoch[r["epoch"]])
    return out


def image_grid(images: np.ndarray, titles: list[str], path: str | Path, cols: int = 4, suptitle: str = "",
               cell: tuple[float, float] = (3.4, 1.15)) -> Path:
    """Images (N, H, W) in a grid, each with its title (sum and digits, or prediction vs truth); `cell`:
    inches per image (a 40 x 168 row by default)."""
    plt = _plt()
    n = len(images)
    rows = max(1, int(np.ceil(n / cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * cell[0], rows * cell[1]), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, im, t in zip(axes.flat, images, titles):
        ax.imshow(im, cmap="gray", vmin=0, vmax=255)
        ax.set_title(t, fontsize=8)
    if suptitle:
        fig.suptitle(suptitle)
    return _save(fig, path)


def plot_confusion(true: np.ndarray, pred: np.ndarray, path: str | Path, title: str = "") -> Path:
    """37 x 37 confusion of sums, rows = true, as counts on a log colour scale (see `confusion_figure`)."""
    return _save(confusion_figure(true, pred, title), path)


def confusion_figure(true: np.ndarray, pred: np.ndarray, title: str = ""):
    """The confusion of sums as counts on a log colour scale (LogNorm): on a linear scale the diagonal
    drowns every error; on a log one a single mistake shows. Empty cells stay blank."""
    plt = _plt()
    from matplotlib.colors import LogNorm
    from .config import N_SUMS
    cm = np.zeros((N_SUMS, N_SUMS))
    np.add.at(cm, (true, pred), 1)
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    im = ax.imshow(np.ma.masked_equal(cm, 0), cmap="viridis", norm=LogNorm(vmin=1, vmax=max(cm.max(), 2)))
    ax.set(xlabel="predicted sum", ylabel="true sum", title=title or "confusion (counts, log scale)")
    fig.colorbar(im, ax=ax, label="images (log scale)")
    return fig


def plot_runs(curves: dict[str, list[dict]], path: str | Path, key: str = "acc") -> Path:
    """Validation accuracy curves of several runs on one figure (EMA dashed where present)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, rows in curves.items():
        line, = ax.plot(*_series(rows, key), marker=".", label=name)
        xs, ys = _series(rows, f"{key}_ema")
        if xs:
            ax.plot(xs, ys, linestyle="--", color=line.get_color())
    ax.set(xlabel="epoch", ylabel="valid sum accuracy", title="runs (solid: raw, dashed: EMA)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_size(rows: list[dict], path: str | Path) -> Path:
    """Final validation accuracy against parameter count, one point per run (raw and EMA)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for key, marker in (("final_acc", "o"), ("final_acc_ema", "^")):
        pts = [(r["params"], r[key], r["name"]) for r in rows if r.get(key) is not None and r.get("params")]
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], marker=marker, label=key.replace("final_acc", "final acc"))
        for x, y, name in pts if key == "final_acc" else []:
            ax.annotate(name, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set(xscale="log", xlabel="parameters", ylabel="valid sum accuracy", title="accuracy vs model size")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


TARGET = 0.9  # the robustness chart's reference line: the accuracy a shifted set should keep


def plot_robustness(rows: list[dict], path: str | Path, title: str = "") -> Path:
    """Sum and digit accuracy per robustness set, grouped by kind of shift, with values on the bars and
    a labelled target line (see `robustness_figure`)."""
    return _save(robustness_figure(rows, title), path)


def robustness_figure(rows: list[dict], title: str = ""):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(13, 4))
    x = np.arange(len(rows))
    for dx, key, label in ((-0.2, "sum_accuracy", "sum accuracy"), (0.2, "digit_accuracy", "digit accuracy")):
        bars = ax.bar(x + dx, [r.get(key, np.nan) for r in rows], 0.4, label=label)
        ax.bar_label(bars, fmt="%.2f", fontsize=6, padding=1)  # NaN bars (no digits known) get no label
    ax.axhline(TARGET, color="grey", linestyle="--", linewidth=1, label=f"target {TARGET:.0%}")
    ax.set_xticks(x, [f"{r['set']}\n({r['group']})" for r in rows], fontsize=7)
    ax.set(ylim=(0, 1.08), ylabel="accuracy", title=title or "robustness")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(alpha=0.3, axis="y")
    return fig
