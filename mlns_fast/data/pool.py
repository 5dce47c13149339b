"""A pool of pre-rendered synthetic images, cached on disk and drawn from afresh each epoch.

Rendering costs ~85 % of a synthetic item (benchmarks/README.md): beside a GPU, the loader
workers cannot render as fast as the model trains, and on a 2-core CPU the loader's workers
render on the cores the trainer's threads need (at idle priority: while the trainer waits).
`--synth-pool N` renders N images once, on every core, into `<cache>/pool-<key>/` (the key hashes the layout, the bank's glyphs, the seed and N, so a
later run of the same data reuses the files: an lr sweep or an arch comparison renders nothing; the
least recently used pools make way under a cap, data/cache.py);
`--synth-pool -1` makes N what the run draws. The run then draws its synthetic images from the pool
in one order over all its epochs, so a pool as large as the run draws shows each image once:

  item (epoch, j) -> pool image perm(seed, g // N)[g % N], g = epoch * per_epoch + j,
                     rolled by a fresh (dx, dy)

The roll moves the whole row to a fresh place inside the canvas (its glyphs never leave it; noise,
and a blur's faint halo past the glyph boxes, may wrap with it), as the renderer's x offset and
vertical jitter place it; it is a pure function of (seed, epoch, j), so the same seed gives the
same batches in any worker. Pool image i is the renderer's image (0, i): the fresh stream's first epoch.

The arrays are memory-mapped: forked loader workers share one copy.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import signal
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from filelock import FileLock

from ..config import spec_dict
from ..errors import DataError
from .cache import cache_root, make_room, size_text, touch
from .render import RENDER_VERSION, Renderer

log = logging.getLogger(__name__)
_M64 = (1 << 64) - 1


@dataclass
class Pool:
    """Pre-rendered images with their digits and the bounding box of all their ink."""
    images: np.ndarray  # (N, H, W) uint8, memory-mapped
    digits: np.ndarray  # (N, 4) int64
    ink: np.ndarray  # (N, 4) int64: x0, y0, x1, y1 over every glyph box
    seed: int
    per_epoch: int = 0  # synthetic images an epoch draws, every rank's together (0: an epoch starts a lap)

    def __len__(self) -> int:
        return len(self.images)

    def item(self, epoch: int, j: int) -> tuple[np.ndarray, np.ndarray]:
        """Synthetic image j of `epoch`: the next pool image in the run's order, rolled afresh."""
        n = len(self.images)
        g = epoch * (self.per_epoch or n) + j  # the item's place in the whole run's stream
        i = int(_order(self.seed, g // n, n)[g % n])
        x0, y0, x1, y1 = (int(v) for v in self.ink[i])
        _, h, w = self.images.shape
        r = _mix(self.seed, epoch, j)
        dx = -x0 + r % (w - x1 + x0 + 1)
        dy = -y0 + (r >> 32) % (h - y1 + y0 + 1)
        return np.roll(self.images[i], (dy, dx), axis=(0, 1)), self.digits[i]


@lru_cache(maxsize=4)
def _order(seed: int, lap: int, n: int) -> np.ndarray:
    """The pool's order in one lap through it (a run drawing more than N images takes several)."""
    return np.random.default_rng([seed, lap, 17]).permutation(n)


def _mix(*values: int) -> int:
    """A 64-bit hash of small non-negative ints (splitmix64 steps). Hand-written: a numpy Generator
    per item costs ~20 us, more than the roll it would draw for."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ v) * 0xBF58476D1CE4E5B9 & _M64
        h = (h ^ (h >> 27)) * 0x94D049BB133111EB & _M64
        h ^= h >> 31
    return h


def pool_key(renderer: Renderer, n: int) -> str:
    """What the pool's pixels depend on: layout, glyphs (hashed), seed, N, the renderer's version."""
    h = hashlib.sha1(json.dumps([spec_dict(renderer.cfg), renderer.seed, n, RENDER_VERSION], sort_keys=True,
                                default=str).encode())
    for pool in (renderer.hand, renderer.fonts):
        for glyphs in pool or ():
            for g in glyphs:
                h.update(np.asarray(g.shape, np.int64).tobytes())
                h.update(g.tobytes())
    return h.hexdigest()[:16]


_RENDERER: Renderer | None = None  # the renderer a forked pool process inherits


def _render_range(span: tuple[int, int]):
    lo, hi = span
    out = [_RENDERER(0, i) for i in range(lo, hi)]
    boxes = np.stack([o.boxes for o in out])
    ink = np.concatenate([boxes[:, :, :2].min(1), boxes[:, :, 2:].max(1)], axis=1)
    return lo, np.stack([o.image for o in out]), np.stack([o.digits for o in out]), ink


def _build(renderer: Renderer, n: int, folder: Path, processes: int, progress: bool) -> None:
    """Render images 0..n-1 into images.npy / digits.npy / ink.npy in `folder`, on `processes` forked processes."""
    global _RENDERER
    h, w = renderer.cfg.height, renderer.cfg.width
    images = _open_images(folder / "images.npy", (n, h, w))
    digits = np.zeros((n, 4), np.int64)
    ink = np.zeros((n, 4), np.int64)
    chunk = 2048
    spans = [(lo, min(lo + chunk, n)) for lo in range(0, n, chunk)]
    _RENDERER = renderer
    try:
        with contextlib.ExitStack() as stack:
            if processes > 1 and os.name == "posix":  # forked: each process inherits the renderer
                # Ctrl-C is this process's to handle (the pool's processes would print a traceback each);
                # SIGTERM stays theirs: it is how the pool ends them
                workers = stack.enter_context(multiprocessing.get_context("fork").Pool(
                    processes, initializer=signal.signal, initargs=(signal.SIGINT, signal.SIG_IGN)))
                done = workers.imap_unordered(_render_range, spans)
            else:
                done = map(_render_range, spans)
            if progress:
                from rich.progress import track
                done = track(done, total=len(spans), description=f"rendering a pool of {n:,} images",
                             transient=True)
            for lo, im, dg, bx in done:
                images[lo:lo + len(im)], digits[lo:lo + len(im)], ink[lo:lo + len(im)] = im, dg, bx
    finally:
        _RENDERER = None
    images.flush()
    del images
    np.save(folder / "digits.npy", digits)
    np.save(folder / "ink.npy", ink)


_NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # a full disk, a quota, a file size limit


def _open_images(path: Path, shape: tuple[int, int, int]) -> np.memmap:
    """The pool's image file, memory-mapped, with its disk blocks given now: a sparse file on a disk
    that fills up kills the process with SIGBUS at the first page it cannot write; here a full disk,
    a quota or a file size limit is one error line, before any rendering."""
    try:
        images = np.lib.format.open_memmap(path, "w+", np.uint8, shape)
        _reserve(path)
    except OSError as e:
        if e.errno not in _NO_ROOM:
            raise
        raise DataError(f"{path.parent.parent}: no room for a synthetic pool of {size_text(np.prod(shape))} "
                        f"({os.strerror(e.errno).lower()}); free some disk, point $MLNS_FAST_CACHE elsewhere, "
                        f"or give a smaller --synth-pool") from None
    return images


def _reserve(path: Path) -> None:
    """posix_fallocate over the whole file, where the platform has it (not macOS or Windows); a file
    system without it leaves the file sparse, a lack of room raises."""
    if not hasattr(os, "posix_fallocate"):
        return
    with open(path, "r+b") as f:
        try:
            os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
        except OSError as e:
            if e.errno in _NO_ROOM:
                raise


def pool_bytes(renderer: Renderer, n: int) -> int:
    """The disk a pool of `n` images takes: its pixels, digits and ink boxes (the .npy headers aside)."""
    return n * (renderer.cfg.height * renderer.cfg.width + 2 * 4 * 8)


def _read(folder: Path, renderer: Renderer, n: int) -> Pool | None:
    """The cached pool in `folder` if it is whole and fits (a cache is a file anyone can edit or
    truncate: checked like any input), else None."""
    h, w = renderer.cfg.height, renderer.cfg.width
    try:
        images = np.load(folder / "images.npy", mmap_mode="r", allow_pickle=False)
        digits = np.load(folder / "digits.npy", allow_pickle=False)
        ink = np.load(folder / "ink.npy", allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    if (images.shape != (n, h, w) or images.dtype != np.uint8 or digits.shape != (n, 4) or ink.shape != (n, 4)
            or not np.issubdtype(digits.dtype, np.integer) or not np.issubdtype(ink.dtype, np.integer)):
        return None
    if n and (digits.min() < 0 or digits.max() > 9 or (ink[:, :2] < 0).any() or (ink[:, 2] > w).any()
              or (ink[:, 3] > h).any() or (ink[:, 2:] <= ink[:, :2]).any()):
        return None
    return Pool(images, digits.astype(np.int64), ink.astype(np.int64), renderer.seed)


def _cached(final: Path, renderer: Renderer, n: int) -> Pool | None:
    """The pool in `final` (marked used), or None; a folder that does not read back whole is removed."""
    if not final.exists():
        return None
    pool = _read(final, renderer, n)
    if pool is not None:
        touch(final)
        return pool
    log.warning("%s: an incomplete or altered synthetic pool; rendering it again", final)
    shutil.rmtree(final, ignore_errors=True)
    return None


def synthetic_pool(renderer: Renderer, n: int, progress: bool = False, processes: int | None = None) -> Pool:
    """The pool of `n` images of `renderer`, from the cache, or rendered now (on every core) and cached.

    Built in a temp folder and renamed, under the cache's lock file: a stopped build leaves no half
    pool, and of two runs (or DDP ranks) wanting the same pool one builds it and the other reads it."""
    final = cache_root() / f"pool-{pool_key(renderer, n)}"
    pool = _cached(final, renderer, n)
    if pool is not None:
        return pool
    final.parent.mkdir(parents=True, exist_ok=True)
    # one build at a time, in one lock file for all pools: of DDP ranks or runs side by side wanting the
    # same pool, one builds it and the others read it; other pools wait (each build takes every core)
    with FileLock(final.parent / "pools.lock"):
        pool = _cached(final, renderer, n)
        if pool is not None:
            return pool
        make_room(pool_bytes(renderer, n), final.parent)
        tmp = Path(tempfile.mkdtemp(prefix=".pool-", dir=final.parent))
        log.info("rendering a synthetic pool of %d images into %s", n, final)
        try:
            _build(renderer, n, tmp, processes or os.cpu_count() or 1, progress)
            # read back before the rename: a pool that does not read back never lands in the cache
            pool = _read(tmp, renderer, n)
            if pool is None:
                raise DataError(f"{final}: the synthetic pool just rendered does not read back")
            os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return pool
