"""`data preview`: a labelled grid of synthetic, demo or user images."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ..config import layout_config
from .demo import demo_split
from .render import create_renderer, render_samples
from .sources import Samples, load_source


def preview_samples(source: str, n: int, layout: str = "train", glyphs: str = "handwriting", seed: int = 0) -> Samples:
    """The first n images of `source`: synthetic (rendered), demo (train split) or a data path."""
    if source == "synthetic":
        return render_samples(create_renderer(replace(layout_config(layout), glyphs=glyphs), seed), n)
    s = demo_split("train", with_digits=True) if source == "demo" else load_source(source)
    return s.subset(slice(0, n))


def preview(source: str, out: str | Path, n: int = 16, layout: str = "train", glyphs: str = "handwriting",
            seed: int = 0) -> Path:
    """Write a grid PNG with `sum = ... (digits)` over each image."""
    from ..plots import image_grid
    s = preview_samples(source, n, layout, glyphs, seed)
    titles = [f"sum {int(s.sums[i])}" + (f"  ({' '.join(map(str, s.digits[i]))})" if s.digits is not None else "")
              for i in range(len(s))]
    label = f"{source} ({layout}, {glyphs})" if source == "synthetic" else source
    return image_grid(s.images, titles, out, suptitle=label)
