"""OpenCV synthetic renderer: four known digits on a black 40x168 canvas.

Each image is a pure function of (seed, *key): the same key gives the same pixels in any
process, so DataLoader workers, epochs and resumed runs reproduce. Glyphs come from a
handwriting bank (MNIST), from OpenCV's Hershey fonts (no data needed), or a mix.
"""
from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from ..config import N_CLASSES, N_DIGITS, RenderConfig, layout_render
from ..errors import ConfigError
from .mnist import Bank, load_bank
from .sources import Samples, save_npz

# Hershey faces, upright and italic: OpenCV's built-in vector fonts.
HERSHEY_FACES = [f | it for f in (cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_PLAIN, cv2.FONT_HERSHEY_DUPLEX,
                                  cv2.FONT_HERSHEY_COMPLEX, cv2.FONT_HERSHEY_TRIPLEX,
                                  cv2.FONT_HERSHEY_COMPLEX_SMALL, cv2.FONT_HERSHEY_SCRIPT_SIMPLEX,
                                  cv2.FONT_HERSHEY_SCRIPT_COMPLEX)
                 for it in (0, cv2.FONT_ITALIC)]
FONT_THICKNESS = (1, 2, 3, 4)
RENDER_VERSION = 3  # bump when the same (config, seed, key) would give other pixels: rebuilds the demo cache


@dataclass
class Rendered:
    """One synthetic image with its ground truth: digits left to right and their boxes (x0, y0, x1, y1)."""
    image: np.ndarray  # (H, W) uint8
    digits: np.ndarray  # (n,) int64
    boxes: np.ndarray  # (n, 4) int64, inside the canvas
    solo: list[np.ndarray] | None = None  # each glyph alone on its canvas, finished alike (Renderer(solo=True))

    @property
    def sum(self) -> int:
        return int(self.digits.sum())


def crop_ink(glyph: np.ndarray, threshold: int = 20) -> np.ndarray:
    """The glyph cut to the bounding box of its ink."""
    ys, xs = np.nonzero(glyph > threshold)
    if len(ys) == 0:
        return glyph
    return np.ascontiguousarray(glyph[ys.min(): ys.max() + 1, xs.min(): xs.max() + 1])


def font_glyphs() -> list[list[np.ndarray]]:
    """Every Hershey face x thickness, rendered once per digit and cropped: [digit] -> glyphs."""
    pools: list[list[np.ndarray]] = [[] for _ in range(10)]
    for face in HERSHEY_FACES:
        for thick in FONT_THICKNESS:
            for d in range(10):
                canvas = np.zeros((80, 80), np.uint8)
                cv2.putText(canvas, str(d), (14, 62), face, 1.6, 255, thick, cv2.LINE_AA)
                pools[d].append(crop_ink(canvas))
    return pools


# matplotlib's TrueType faces with digits (its others are symbol fonts): sans, mono, serif, STIX and
# Computer Modern (cmmi10's digits are old-style), upright, bold and slanted
TTF_FACES = tuple(f"DejaVu{family}{style}" for family in ("Sans", "SansMono")
                  for style in ("", "-Bold", "-Oblique", "-BoldOblique")) + \
    tuple(f"DejaVuSerif{style}" for style in ("", "-Bold", "-Italic", "-BoldItalic")) + \
    tuple(f"STIXGeneral{style}" for style in ("", "Bol", "Italic", "BolIta")) + \
    ("cmr10", "cmb10", "cmss10", "cmtt10", "cmti10", "cmmi10")


@lru_cache(maxsize=1)
def ttf_glyphs() -> tuple[tuple[np.ndarray, ...], ...]:
    """The digits of matplotlib's TrueType faces (`TTF_FACES`: printed shapes that are not the battery's
    Hershey faces), drawn once by Pillow at 48 px and cropped: [digit] -> glyphs."""
    import matplotlib  # its fonts ship with it: no download, the same faces everywhere
    from PIL import Image, ImageDraw, ImageFont
    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    pools: list[list[np.ndarray]] = [[] for _ in range(10)]
    for face in TTF_FACES:
        if not (folder / f"{face}.ttf").is_file():  # another matplotlib may ship fewer
            continue
        font = ImageFont.truetype(str(folder / f"{face}.ttf"), 48)
        for d in range(10):
            canvas = Image.new("L", (96, 96))
            ImageDraw.Draw(canvas).text((48, 48), str(d), fill=255, font=font, anchor="mm")
            pools[d].append(crop_ink(np.asarray(canvas)))
    if not pools[0]:
        raise ConfigError(f"--faces ttf: none of matplotlib's TrueType faces were found in {folder}")
    return tuple(tuple(p) for p in pools)


def printed_glyphs(faces: str) -> Sequence[Sequence[np.ndarray]]:
    """The printed glyphs of `--faces`: [digit] -> glyphs."""
    return font_glyphs() if faces == "hershey" else ttf_glyphs()


def bank_glyphs(bank: Bank, cell: bool = False) -> list[list[np.ndarray]]:
    """The bank's glyphs, cropped to their ink (or whole cells when `cell`): [digit] -> glyphs."""
    return [[bank.images[i] if cell else crop_ink(bank.images[i]) for i in idx] for idx in bank.by_digit()]


class Renderer:
    """Renders `Rendered` images from a layout config; deterministic in (seed, *key)."""

    def __init__(self, cfg: RenderConfig, bank: Bank | None = None, seed: int = 0, solo: bool = False):
        if cfg.glyphs != "fonts" and bank is None:
            raise ConfigError(f"glyphs={cfg.glyphs!r} needs a handwriting bank")
        self.cfg, self.seed, self.solo = cfg, seed, solo
        self.hand = bank_glyphs(bank, cfg.cell) if cfg.glyphs != "fonts" else None
        self.fonts = printed_glyphs(cfg.faces) if cfg.glyphs != "handwriting" else None

    def __call__(self, *key: int) -> Rendered:
        rng = np.random.default_rng([self.seed, *key])
        digits = rng.integers(0, N_CLASSES, N_DIGITS)
        return self.render_digits(digits, rng)

    def render_digits(self, digits: np.ndarray, rng: np.random.Generator) -> Rendered:
        """Render the given digits left to right with a random layout drawn from `rng`."""
        # Plain-float affine math and one vector of uniforms per image: numpy calls on 2x2
        # matrices cost more than the warps themselves at this image size.
        c = self.cfg
        H, W, n = c.height, c.width, len(digits)
        u = rng.random(10 * n + 5)  # 9 per glyph, n - 1 gaps, x offset, 5 for _finish
        crowded = False
        if c.coherence > 0 and rng.random() < c.coherence:  # one size and one gap for the whole image
            shared = rng.random(2)
            u[2:9 * n:9] = 0.75 * shared[0] + 0.25 * u[2:9 * n:9]  # glyph heights
            u[9 * n:10 * n - 1] = 0.75 * shared[1] + 0.25 * u[9 * n:10 * n - 1]  # gaps
            if c.crowded > 0 and rng.random() < c.crowded:  # drawn only when on: default renders keep their pixels
                crowded = True
                u[2:9 * n:9] /= 3  # sizes from the smallest third of the range
                width = c.gap[1] - c.gap[0]  # gaps from the part of the range below 0 (its low end if none)
                u[9 * n:10 * n - 1] *= max(0.0, -c.gap[0]) / width if width > 0 else 1.0
        plans = [self._plan(int(d), u[9 * i: 9 * i + 7], rng) for i, d in enumerate(digits)]
        widths = np.array([p[2] for p in plans])
        gaps = _span(c.gap, u[9 * n: 10 * n - 1])
        # overlaps scale with the narrower neighbour (a "1" is never jumped over), gaps with the mean width
        gaps *= np.where(gaps < 0, np.minimum(widths[:-1], widths[1:]), widths.mean())
        shrink, gaps = _fit_width(widths, gaps, W)
        total = widths.sum() * shrink + gaps.sum()
        x = (W - total) * u[10 * n - 1] + np.concatenate([[0.0], np.cumsum(widths[:-1] * shrink + gaps)])
        canvas = np.zeros((H, W), np.uint8)
        boxes = np.zeros((n, 4), np.int64)
        patches = []
        for i, (glyph, m, _, stroke) in enumerate(plans):
            if c.elastic > 0:
                glyph = _elastic(glyph, c.elastic, rng)
            patch = _stroke(self._warp(glyph, [v * shrink for v in m]), stroke)
            if c.rescan > 0 and rng.random() < c.rescan:  # drawn only when on: default renders keep their pixels
                patch = _rescan(patch, _span(c.rescan_px, rng.random()), rng.random() < 0.5)
            if c.nib > 0 and rng.random() < c.nib:  # drawn only when on: default renders keep their pixels
                reach, angle = rng.random(2)
                patch = _nib(patch, _span(c.nib_len, reach) * patch.shape[0], angle * math.pi, (H, W))
            ph, pw = patch.shape
            y0 = int(round((H - ph) * (0.5 + c.vjitter * (u[9 * i + 7] - 0.5))))
            x0 = min(max(int(round(x[i])), 0), W - pw)
            region = canvas[y0:y0 + ph, x0:x0 + pw]
            np.maximum(region, patch, out=region)
            boxes[i] = (x0, y0, x0 + pw, y0 + ph)
            patches.append(patch)
        clean = crowded and c.crowded_clean  # drawn as inked: no blur, noise or lowered contrast
        solo = self._solo(patches, boxes, u[10 * n:], rng, clean) if self.solo else None
        image = canvas if clean else self._finish(canvas, u[10 * n:], rng)
        return Rendered(image, np.asarray(digits, np.int64), boxes, solo)

    def _solo(self, patches, boxes, u: np.ndarray, rng: np.random.Generator, clean: bool = False) -> list[np.ndarray]:
        """Each glyph alone on a blank canvas, finished with the image's own blur, contrast and noise
        draw (a copy of `rng`, so the image's pixels do not change): what an isolated-digit reader of
        this image's style sees (experiments/ceiling.py)."""
        out = []
        for patch, (x0, y0, x1, y1) in zip(patches, boxes):
            alone = np.zeros((self.cfg.height, self.cfg.width), np.uint8)
            alone[y0:y1, x0:x1] = patch
            out.append(alone if clean else self._finish(alone, u, copy.deepcopy(rng)))
        return out

    def _plan(self, digit: int, u: np.ndarray, rng: np.random.Generator):
        """Pick a glyph of `digit` (bent toward another of its pool when `morph` draws it) and a linear map
        (scale, aspect, shear, rotation) fitting the canvas.

        Returns (glyph, (m00, m01, m10, m11) glyph px -> canvas px, box width, stroke change)."""
        c = self.cfg
        use_font = self.hand is None or (self.fonts is not None and u[0] < c.font_ratio)
        pool = (self.fonts if use_font else self.hand)[digit]
        glyph = pool[int(u[1] * len(pool))]
        if c.morph > 0 and rng.random() < c.morph:  # drawn only when on: default renders keep their pixels
            other, t = rng.random(2)
            glyph = _morph(glyph, pool[int(other * len(pool))], _span(c.morph_mix, t))
        gh, gw = glyph.shape
        h = _span(c.glyph_height, u[2]) * c.height
        sy, sx = h / gh, _span(c.aspect, u[3]) * h / gh
        t, k = math.radians(_span(c.rotation, u[4])), _span(c.shear, u[5])
        co, si = math.cos(t), math.sin(t)
        m = (co * sx, (si - co * k) * sy, -si * sx, (co + si * k) * sy)
        w_box, h_box = _extent(m, gw, gh)
        fit = min(1.0, (c.height - 1) / (h_box + 1), (c.width - 1) / (w_box + 1))
        stroke = c.stroke[0] + int(u[6] * (c.stroke[1] - c.stroke[0] + 1))
        return glyph, tuple(v * fit for v in m), (w_box + 1) * fit, stroke

    def _warp(self, glyph: np.ndarray, m) -> np.ndarray:
        """Warp one glyph by the linear map `m` into its own tight patch."""
        gh, gw = glyph.shape
        xs = (0.0, m[0] * gw, m[1] * gh, m[0] * gw + m[1] * gh)
        ys = (0.0, m[2] * gw, m[3] * gh, m[2] * gw + m[3] * gh)
        pw = min(max(int(math.ceil(max(xs) - min(xs))) + 1, 1), self.cfg.width)
        ph = min(max(int(math.ceil(max(ys) - min(ys))) + 1, 1), self.cfg.height)
        affine = np.array([[m[0], m[1], -min(xs)], [m[2], m[3], -min(ys)]])
        return cv2.warpAffine(glyph, affine, (pw, ph), flags=cv2.INTER_LINEAR, borderValue=0)

    def _finish(self, canvas: np.ndarray, u: np.ndarray, rng) -> np.ndarray:
        """Blur, noise and contrast over the whole canvas."""
        c = self.cfg
        if u[0] < c.blur_p:
            canvas = cv2.GaussianBlur(canvas, (0, 0), _span(c.blur_sigma, u[1]))
        contrast = _span(c.contrast, u[2])
        if u[3] < c.noise_p:
            noise = rng.normal(0.0, _span(c.noise_std, u[4]), canvas.shape)
            return np.clip(canvas * contrast + noise, 0, 255).astype(np.uint8)
        if contrast < 1.0:
            canvas = cv2.convertScaleAbs(canvas, alpha=contrast)
        return canvas


def _morph(glyph: np.ndarray, other: np.ndarray, t: float, pad: int = 4) -> np.ndarray:
    """`glyph` bent part of the way (t: 0 none, 1 all) onto the shape of `other`, a glyph of the same digit
    stretched onto its box: OpenCV's dense optical flow (Farneback) between the two, blurred, gives where
    each of `other`'s pixels lies on `glyph`; sampling `glyph` a fraction t along it moves its strokes
    toward the other writer's without breaking them (a mix of grey levels would draw both glyphs' strokes;
    albumentations has no shape-to-shape warp). Cropped to the ink; where the warp leaves no ink, `glyph`."""
    gh, gw = glyph.shape
    src = cv2.copyMakeBorder(glyph, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
    dst = cv2.copyMakeBorder(cv2.resize(other, (gw, gh), interpolation=cv2.INTER_LINEAR), pad, pad, pad, pad,
                             cv2.BORDER_CONSTANT, value=0)
    flow = cv2.calcOpticalFlowFarneback(cv2.GaussianBlur(dst, (0, 0), 1.5), cv2.GaussianBlur(src, (0, 0), 1.5), None,
                                        0.5, 2, 9, 5, 5, 1.1, 0)
    out = cv2.remap(src, _base_grid(*src.shape) + np.float32(t) * flow, None, cv2.INTER_LINEAR, borderValue=0)
    return crop_ink(out) if out.max() >= 128 else glyph


def _elastic(glyph: np.ndarray, amount: float, rng) -> np.ndarray:
    """Smooth random distortion of a glyph's strokes (the classic MNIST augmentation).

    Displacements are drawn on a 4x4 control grid and upsampled bicubically: as smooth as a
    Gaussian-blurred field, at a fraction of the cost (no full-size noise, no blur)."""
    gh, gw = glyph.shape
    grid = (rng.random((4, 4, 2), dtype=np.float32) * 2 - 1) * (amount * gh)
    disp = cv2.resize(grid, (gw, gh), interpolation=cv2.INTER_CUBIC)  # (gh, gw, 2)
    return cv2.remap(glyph, _base_grid(gh, gw) + disp, None, cv2.INTER_LINEAR, borderValue=0)


@lru_cache(maxsize=4096)
def _base_grid(gh: int, gw: int) -> np.ndarray:
    """Identity sampling map (gh, gw, 2) of x, y pixel coordinates (read-only, shared)."""
    xs, ys = np.meshgrid(np.arange(gw, dtype=np.float32), np.arange(gh, dtype=np.float32))
    grid = np.dstack([xs, ys])
    grid.flags.writeable = False
    return grid


def _span(rng_pair, u):
    """Map uniforms in [0, 1) onto the range (lo, hi)."""
    return rng_pair[0] + (rng_pair[1] - rng_pair[0]) * u


def _extent(m, gw, gh) -> tuple[float, float]:
    """Width and height of a gw x gh box after the linear map m."""
    return abs(m[0]) * gw + abs(m[1]) * gh, abs(m[2]) * gw + abs(m[3]) * gh


def _fit_width(widths: np.ndarray, gaps: np.ndarray, W: float) -> tuple[float, np.ndarray]:
    """Shrink positive gaps, then the glyphs themselves, until the row fits in W pixels."""
    excess = widths.sum() + gaps.sum() - (W - 1)
    if excess <= 0:
        return 1.0, gaps
    pos = np.clip(gaps, 0, None)
    if pos.sum() >= excess:
        return 1.0, gaps - pos * (excess / pos.sum())
    gaps = np.minimum(gaps, 0)
    shrink = (W - 1) / (widths.sum() + gaps.sum())
    return shrink, gaps * shrink


def _rescan(patch: np.ndarray, px: float, cubic: bool) -> np.ndarray:
    """The patch drawn down to `px` pixels tall (area-averaged, as a coarse scanner or camera does) and
    back up to its size, by linear or cubic interpolation; a patch already that small is left alone."""
    ph, pw = patch.shape
    f = px / ph
    if f >= 1.0:
        return patch
    small = cv2.resize(patch, (max(1, round(pw * f)), max(1, round(ph * f))), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (pw, ph), interpolation=cv2.INTER_CUBIC if cubic else cv2.INTER_LINEAR)


_KERNELS = {n: np.ones((n, n), np.uint8) for n in (2, 3, 4)}


def _stroke(patch: np.ndarray, k: int) -> np.ndarray:
    """Dilate (k > 0) or erode (k < 0) strokes by |k| pixels; an erosion that would erase the glyph is skipped."""
    if k > 0:
        return cv2.dilate(patch, _KERNELS[min(k + 1, 4)])
    if k < 0 and min(patch.shape) > 12:
        thin = cv2.erode(patch, _KERNELS[min(1 - k, 4)])
        if thin.max() > 128:
            return thin
    return patch


def _nib(patch: np.ndarray, length: float, angle: float, fit: tuple[int, int]) -> np.ndarray:
    """The glyph as a flat pen draws it: strokes dilated by a line `length` pixels long (rounded; under 2 the
    patch is left alone) at `angle` (radians). A stroke crossing the nib takes its width, one along it keeps
    its own, as a broad nib or a chisel marker draws; a light blur takes out the streaks that a line's
    maximum draws across a stroke's uneven grey. The patch grows by the nib's reach so no stroke is clipped,
    and is drawn down into `fit` (H, W) when it outgrows the canvas. Hand-written: OpenCV has the dilation
    but no pen model."""
    n = int(round(length))
    if n < 2:
        return patch
    half = n // 2 + 1
    kernel = np.zeros((2 * half + 1, 2 * half + 1), np.uint8)
    dx, dy = (n - 1) / 2 * math.cos(angle), -(n - 1) / 2 * math.sin(angle)
    cv2.line(kernel, (round(half - dx), round(half - dy)), (round(half + dx), round(half + dy)), 1, 1)
    wide = cv2.dilate(cv2.copyMakeBorder(patch, half, half, half, half, cv2.BORDER_CONSTANT, value=0), kernel)
    out = crop_ink(cv2.GaussianBlur(wide, (0, 0), 0.6))
    f = min(1.0, fit[0] / out.shape[0], fit[1] / out.shape[1])
    if f < 1.0:
        out = cv2.resize(out, (max(1, int(out.shape[1] * f)), max(1, int(out.shape[0] * f))), interpolation=cv2.INTER_AREA)
    return out


def create_renderer(cfg: RenderConfig, seed: int = 0, bank: str | Bank = "", pool: str = "synth",
                    solo: bool = False) -> Renderer:
    """The one way to build a renderer: a layout, its glyph source's bank (a user bank's path, a
    loaded Bank, or the embedded bank's glyph `pool`: synth for training, real / valid only for the
    demo's real splits, reserved only for test sets) and a seed; `solo` also keeps each glyph alone."""
    if cfg.glyphs == "fonts":
        return Renderer(cfg, None, seed, solo)
    return Renderer(cfg, bank if isinstance(bank, Bank) else load_bank(bank, pool), seed, solo)


def render_samples(renderer: Renderer, n: int, progress: bool = False, source: str = ""):
    """Render images 0..n-1 of a renderer as Samples (digits known)."""
    idx = range(n)
    if progress:
        from rich.progress import track
        idx = track(idx, description="rendering", transient=True)
    out = [renderer(i) for i in idx]
    return Samples(np.stack([o.image for o in out]), np.array([o.sum for o in out], np.int64),
                   np.stack([o.digits for o in out]), source or f"synthetic:seed{renderer.seed}")


def render_npz(n: int, out, layout: str = "train", glyphs: str | None = None, seed: int = 0,
               bank: str = "", progress: bool = False, faces: str | None = None) -> float:
    """Pre-render n images to an .npz (images, labels, digits), written atomically; returns seconds.
    `glyphs` / `faces` None: the layout's own."""
    renderer = create_renderer(layout_render(layout, glyphs=glyphs, faces=faces), seed, bank)
    t0 = time.perf_counter()
    samples = render_samples(renderer, n, progress)
    seconds = time.perf_counter() - t0
    save_npz(samples, out)
    return seconds
