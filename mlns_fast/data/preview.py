"""`data preview`: a labelled grid of synthetic, demo or user images."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..config import REPACK_SIZES, layout_config, layout_render
from ..errors import ConfigError
from .demo import demo_split
from .render import create_renderer, render_samples
from .repack import repack as crowd
from .sources import Samples, load_source


def preview_samples(source: str, n: int, layout: str = "train", glyphs: str | None = None, seed: int = 0,
                    repack: bool = False, repack_size: str = "small", faces: str | None = None) -> Samples:
    """The first n images of `source`: synthetic (rendered; `glyphs` / `faces` None: the layout's own),
    demo (train split) or a data path; with `repack`, real images re-laid out crowded in `layout`'s
    ranges, as `train --repack` draws them."""
    if source == "synthetic":
        if repack:
            raise ConfigError("--repack previews real images (--source demo or a data path), not synthetic ones")
        return render_samples(create_renderer(layout_render(layout, glyphs=glyphs, faces=faces), seed), n)
    s = demo_split("train", with_digits=True) if source == "demo" else load_source(source)
    s = s.subset(slice(0, n))
    if repack:
        if repack_size not in REPACK_SIZES:
            raise ConfigError(f"--repack-size must be one of {', '.join(REPACK_SIZES)}; got {repack_size!r}")
        cfg = layout_config(layout)
        s.images = np.stack([crowd(im, cfg, np.random.default_rng([seed, j]), repack_size)
                             for j, im in enumerate(s.images)])
    return s


def preview(source: str, out: str | Path, n: int = 16, layout: str = "train", glyphs: str | None = None,
            seed: int = 0, repack: bool = False, repack_size: str = "small", faces: str | None = None) -> Path:
    """Write a grid PNG with `sum = ... (digits)` over each image."""
    from ..plots import image_grid
    s = preview_samples(source, n, layout, glyphs, seed, repack, repack_size, faces)
    titles = [f"sum {int(s.sums[i])}" + (f"  ({' '.join(map(str, s.digits[i]))})" if s.digits is not None else "")
              for i in range(len(s))]
    if source == "synthetic":
        label = f"{source} ({layout}, {glyph_source(layout_render(layout, glyphs=glyphs, faces=faces))})"
    else:
        label = source + (f" re-laid out crowded ({repack_size})" if repack else "")
    return image_grid(s.images, titles, out, suptitle=label)


def glyph_source(cfg) -> str:
    """Where a layout's glyphs come from, in a few words: `mixed, 0.15 printed (ttf faces)`."""
    if cfg.glyphs == "mixed":
        return f"mixed, {cfg.font_ratio:g} printed ({cfg.faces} faces)"
    if cfg.glyphs == "fonts":
        return f"fonts, {cfg.faces} faces"
    return cfg.glyphs
