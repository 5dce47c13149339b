"""Crowded views of real images: their ink re-laid out small and overlapping, the sum kept.

A real training image brings writers the synthetic bank lacks, but only in its own layout, which a
run learns early (RESULTS.md, issue 20: 99.9 % of them read right by the end, their sum gradient
13-17x smaller than a synthetic image's). `repack` gives those writers the renderer's crowded
layout: it splits the image at its blank columns into ink segments (one digit each, or two where
digits touch), scales them all by one factor so the tallest is drawn from the smallest third of
the training `glyph_height` range, and places them left to right, order kept, with gaps from the
overlapping part of the training `gap` range and the training vertical jitter. The digits and so
the sum do not change, and neither does their order, so any digit labels still hold. The ranges
are the run's own `[render]` ranges, as the renderer's `crowded` layouts use them: never a test set's.
Hand-written: albumentations' and OpenCV's transforms move the image as one piece, and no
library re-spaces a text line's characters.
"""
from __future__ import annotations

import cv2
import numpy as np

from ..config import REPACK_SIZES, RenderConfig
from .render import _fit_width, _span

INK = 40  # grey level above which a pixel is ink, for finding blank columns (real images are finished: noisy)
MERGE = 2  # ink runs this close (blank columns between them) are one segment: a broken stroke is not a digit


def ink_segments(img: np.ndarray) -> list[tuple[int, int, int, int]]:
    """(x0, x1, y0, y1) ink boxes of the runs of inked columns, left to right; runs at most MERGE blank
    columns apart are merged."""
    ink = img > INK
    cols = np.flatnonzero(ink.any(0))
    if len(cols) == 0:
        return []
    breaks = np.flatnonzero(np.diff(cols) > MERGE + 1)
    starts = np.concatenate([[cols[0]], cols[breaks + 1]])
    ends = np.concatenate([cols[breaks], [cols[-1]]]) + 1
    out = []
    for x0, x1 in zip(starts, ends):
        rows = np.flatnonzero(ink[:, x0:x1].any(1))
        out.append((int(x0), int(x1), int(rows[0]), int(rows[-1]) + 1))
    return out


SIZES = dict(zip(REPACK_SIZES, (3, 1)))  # the tallest is drawn from the 1/n of glyph_height at its low end


def repack(img: np.ndarray, cfg: RenderConfig, rng: np.random.Generator, size: str = "small") -> np.ndarray:
    """`img` (H, W) uint8 re-laid out crowded (module docstring); returned unchanged when it has no ink.
    `size` "any" draws the tallest segment from the whole glyph_height range instead of its smallest third."""
    segs = ink_segments(img)
    if not segs:
        return img
    H, W = img.shape
    lo, hi = cfg.glyph_height
    target = H * (lo + (hi - lo) * rng.random() / SIZES[size])  # the tallest segment's height
    tallest = max(y1 - y0 for _, _, y0, y1 in segs)
    f = target / tallest
    crops = [img[y0:y1, x0:x1] for x0, x1, y0, y1 in segs]
    patches = [_resize(c, f) for c in crops]
    widths = np.array([p.shape[1] for p in patches], float)
    g0, g1 = cfg.gap
    neg = min(0.0, g1) if g0 < 0 else g0  # the overlapping part of the gap range (its low end if none)
    gaps = _span((g0, neg), rng.random(len(patches) - 1)) * np.minimum(widths[:-1], widths[1:])
    shrink, gaps = _fit_width(widths, gaps, W)  # the renderer's fit: a row too wide even overlapping shrinks
    if shrink < 1:  # drawn again from the image, not resampled twice
        patches = [_resize(c, f * shrink) for c in crops]
        widths = np.array([p.shape[1] for p in patches], float)
    total = widths.sum() + gaps.sum()
    x = (W - total) * rng.random() + np.concatenate([[0.0], np.cumsum(widths[:-1] + gaps)])
    canvas = np.zeros_like(img)
    for p, xi in zip(patches, x):
        ph, pw = p.shape
        y0 = int(round((H - ph) * (0.5 + cfg.vjitter * (rng.random() - 0.5))))
        x0 = min(max(int(round(xi)), 0), W - pw)
        region = canvas[y0:y0 + ph, x0:x0 + pw]
        np.maximum(region, p, out=region)
    return canvas


def _resize(patch: np.ndarray, f: float) -> np.ndarray:
    h, w = patch.shape
    size = (max(1, int(round(w * f))), max(1, int(round(h * f))))
    return cv2.resize(patch, size, interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR)
