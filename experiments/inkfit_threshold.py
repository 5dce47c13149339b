"""The ink fit's threshold: how much ink its window cuts off, and a run read with other thresholds.

    python experiments/inkfit_threshold.py RUN [RUN ...] [--rel 0.3 --rel 0.15] [--weights raw]

`InkFit` (model.py) finds the ink's box on the 3x3-averaged image at `rel` (`[model] ink_rel`) of its
brightest value and enlarges that box (plus `MARGIN` pixels) to fill the canvas: ink outside the box plus
margin is cut off before the backbone. A one-pixel stroke averages to a third of its value, under the
threshold where the image's brightest point is a thick crossing, so an outer digit's thin end can fall
outside. Per threshold, on 2,000 images of the training renderer (its default ranges, noise off), the valid
split and every battery set (its demo-test: the test split): the share of images with more than 1 % of
their ink (pixels over 0.05) outside the window, the mean horizontal zoom, and each run's sum accuracy read
by default (shift TTA after the fit) with that threshold. The training images' ink cut and the valid split
decide; the battery is a test. On the noise set the share counts noise pixels outside the ink's box.
`--margin PX` (repeatable) sets the pixels added around the box (`InkFit.MARGIN`, 2) instead: a wider window
keeps more of a thin end for less zoom. `--map lines` finds the ink on the largest of four 3-pixel line
averages (vertical, horizontal, both diagonals) instead of the 3x3 average: a one-pixel stroke in any of
those directions keeps its full value, an isolated pixel still a third of it, and a soft edge much the same.
`--digits` also prints each run's per-digit accuracy per setting (a digits head; the battery's ceilings are
per digit).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mlns_fast.config import HANDWRITTEN, RenderConfig  # noqa: E402
from mlns_fast.data.demo import demo_split  # noqa: E402
from mlns_fast.data.render import create_renderer, render_samples  # noqa: E402
from mlns_fast.errors import MlnsError  # noqa: E402
from mlns_fast.model import InkFit  # noqa: E402
from mlns_fast.reading import load_trained, predict_arrays  # noqa: E402
from mlns_fast.robustness import battery  # noqa: E402
from mlns_fast.runs import DEFAULT_RUNS_DIR, resolve_run  # noqa: E402


def ink_cut(fit: InkFit, images: np.ndarray, bs: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """Per image: the share of its ink (pixels over 0.05, weighted by value) outside the window `fit`
    samples, and the window's horizontal zoom."""
    cut, zoom = [], []
    for i in range(0, len(images), bs):
        x = torch.from_numpy(images[i:i + bs, None].astype(np.float32) / 255)
        cx, cy, zx, zy = fit.transform(x)
        # the fit's own pixel centres (normalised): a pixel is inside where the window reaches it
        inside = (((fit.gy - cy[:, None]).abs() <= 1 / zy[:, None])[:, :, None]
                  & ((fit.gx - cx[:, None]).abs() <= 1 / zx[:, None])[:, None, :])
        ink = x[:, 0] * (x[:, 0] > 0.05)
        cut.append(((ink * ~inside).sum((1, 2)) / ink.sum((1, 2)).clamp_min(1e-6)).numpy())
        zoom.append(zx.numpy())
    return np.concatenate(cut), np.concatenate(zoom)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="*", help="run folders or names (none: only the ink cut)")
    p.add_argument("--rel", type=float, action="append", default=[], help="thresholds (default: 0.3, 0.2, 0.15)")
    p.add_argument("--margin", type=float, action="append", default=[],
                   help=f"pixels around the ink's box (default: {InkFit.MARGIN:g}, the fit's)")
    p.add_argument("--map", action="append", default=[], choices=InkFit.MAPS,
                   help="where the ink is before the threshold: box (3x3 average) | lines (3-pixel line averages); "
                        "repeatable (default: each run's own; box for the ink cut)")
    p.add_argument("--digits", action="store_true", help="a second row per run and setting: per-digit accuracy")
    p.add_argument("--zoom", type=float, default=3.0, help="the fit's largest enlargement, for the ink cut")
    p.add_argument("--weights", default="raw", help="best | raw | ema")
    p.add_argument("--runs-dir", default=DEFAULT_RUNS_DIR)
    a = p.parse_args()
    rels = a.rel or [0.3, 0.2, 0.15]
    margins = a.margin or [InkFit.MARGIN]
    if not all(0 < r < 1 for r in rels):
        p.exit(2, f"error: --rel must be in (0, 1); got {rels}\n")
    if not all(0 <= m <= 64 for m in margins):
        p.exit(2, f"error: --margin must be in [0, 64] pixels; got {margins}\n")
    maps = a.map or [None]  # None: the run's own map (the fit's default, box, for the ink cut)
    settings = [(rel, m, k) for rel in rels for m in margins for k in maps]

    def label(rel, margin, kind):
        return (f"{rel}" + ("" if margins == [InkFit.MARGIN] else f", margin {margin:g}")
                + ("" if kind is None else f", {kind}"))
    try:
        # the training renderer's own images (its ranges, seed 0, noise off: noise passes for ink) first: the
        # threshold is chosen where they lose no ink, not on the battery
        synthetic = render_samples(create_renderer(RenderConfig(noise_p=0.0, **HANDWRITTEN), 0), 2000)  # as measured
        sets = {"synthetic": synthetic, "valid": demo_split("valid", with_digits=True), **battery()}  # battery's demo-test: the test split
        print("| threshold | " + " | ".join(sets) + " |\n|---|" + "---|" * len(sets))
        for rel, margin, kind in settings:
            fit = InkFit(a.zoom, next(iter(sets.values())).images.shape[1:], rel, kind=kind or "box")  # both modes
            fit.MARGIN = margin
            cells = [ink_cut(fit, s.images) for s in sets.values()]
            print(f"| {label(rel, margin, kind)}: images > 1 % cut (zoom) | "
                  + " | ".join(f"{(c > 0.01).mean():.3f} ({z.mean():.2f})" for c, z in cells) + " |")
        for r in a.runs:
            run = resolve_run(r, a.runs_dir)
            cfg, net = load_trained(run, a.weights, tta=True)
            own = net.fit.kind
            for rel, margin, kind in settings:  # the run's own fit (taken out before the shifts; eval: `kind` reads)
                net.fit.rel, net.fit.MARGIN, net.fit.kind = rel, margin, kind or own
                read = [(predict_arrays(net, x.images), x) for x in (s.at_size(cfg.size) for s in sets.values())]
                acc = [float((pred["sum"] == x.sums).mean()) for pred, x in read]
                print(f"| {cfg.name}, {label(rel, margin, kind)} | " + " | ".join(f"{v:.4f}" for v in acc) + " |", flush=True)
                if a.digits:
                    print(f"| {cfg.name}, {label(rel, margin, kind)}, per digit | " + " | ".join(
                        "-" if pred["digits"] is None or x.digits is None else f"{(pred['digits'] == x.digits).mean():.4f}"
                        for pred, x in read) + " |", flush=True)
    except MlnsError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
