"""Real data: the course's numpy pairs, .npz files and image folders, loaded and validated.

Every loader returns `Samples` (uint8 images N x H x W, sums, optional digits) or raises
`DataError` with one line naming the file and the problem. Arrays are loaded with
`allow_pickle=False` always.
"""
from __future__ import annotations

import csv
import hashlib
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..config import N_CLASSES, N_DIGITS, N_SUMS
from ..errors import DataError
from . import arrays

log = logging.getLogger(__name__)

MAX_SUM = N_SUMS - 1
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


@dataclass
class Samples:
    """Images with their labels: images (N, H, W) uint8, sums (N,) int64, digits (N, 4) int64 or None."""
    images: np.ndarray
    sums: np.ndarray
    digits: np.ndarray | None = None
    source: str = ""

    def __len__(self) -> int:
        return len(self.sums)

    def at_size(self, size: tuple[int, int]) -> "Samples":
        """These samples with images at `size` (H, W): itself when they already are, else resized copies."""
        if self.images.shape[1:] == tuple(size):
            return self
        return Samples(resize_stack(self.images, size, self.source), self.sums, self.digits, self.source)

    def subset(self, idx) -> "Samples":
        digits = None if self.digits is None else self.digits[idx]
        return Samples(self.images[idx], self.sums[idx], digits, self.source)


def content_hash(samples: Samples) -> str:
    """SHA-1 (12 hex digits) of the images and labels themselves: one data set under another path or
    format hashes the same, an edited file under the same path does not."""
    h = hashlib.sha1()
    for a in (samples.images, samples.sums, samples.digits):
        if a is not None:
            a = np.ascontiguousarray(a)
            h.update(f"{a.dtype.str}{a.shape}".encode())
            h.update(a.tobytes())
    return h.hexdigest()[:12]


def concat(parts: list[Samples]) -> Samples:
    """Concatenate several sources (e.g. data0..data2); digits are kept only if all parts have them."""
    if len(parts) == 1:
        return parts[0]
    digits = None
    if all(p.digits is not None for p in parts):
        digits = np.concatenate([p.digits for p in parts])
    return Samples(np.concatenate([p.images for p in parts]), np.concatenate([p.sums for p in parts]),
                   digits, "+".join(p.source for p in parts))


def _load_array(path: Path, npz: tuple[tuple[str, ...], tuple[str, ...]] | None = None):
    """An .npy array, or with `npz=(required, optional)` the named arrays of an .npz; sizes are
    checked before anything is read (`arrays`)."""
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.is_dir():
        raise DataError(f"{path}: is a folder, expected a numpy file")
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic.startswith(b"PK") and npz is not None:
        return arrays.load_npz(path, *npz)
    if magic != b"\x93NUMPY":
        kind = ".npz" if npz is not None else ".npy"
        raise DataError(f"{path}: unreadable numpy file (not in {kind} format)")
    if npz is not None:
        raise DataError(f"{path}: an .npy file where an .npz (images, labels) is expected")
    return arrays.load_npy(path)


def to_uint8_images(arr: np.ndarray, where: str, size: tuple[int, int] | None = None) -> np.ndarray:
    """Validate an image stack and return it as uint8 (N, H, W) at `size` (None: as stored), gray, 0..255."""
    if arr.dtype == object or arr.dtype.kind not in "iuf":  # bool images would become near-black 0/1 pixels
        raise DataError(f"{where}: images must be numeric (uint8, int or float), got dtype {arr.dtype}")
    if arr.ndim == 4 and arr.shape[-1] in (1, 3, 4):
        arr = _to_gray(arr)
    if arr.ndim != 3:
        raise DataError(f"{where}: images must have shape N x H x W, got {arr.shape}")
    if len(arr) == 0:
        raise DataError(f"{where}: no images")
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            raise DataError(f"{where}: images contain NaN or inf pixels")
        lo, hi = float(arr.min()), float(arr.max())
        if lo < 0 or hi > 255:  # never clipped silently: a wrong scale or offset is the user's to fix
            raise DataError(f"{where}: float pixels must be in 0..1 or 0..255, found {lo:g}..{hi:g}")
        arr = (arr * (255.0 if hi <= 1.0 else 1.0)).round().astype(np.uint8)
    elif arr.dtype != np.uint8:
        if arr.min() < 0 or arr.max() > 255:
            raise DataError(f"{where}: integer pixels must be in 0..255")
        arr = arr.astype(np.uint8)
    return resize_stack(arr, size, where)


def _to_gray(arr: np.ndarray) -> np.ndarray:
    if arr.shape[-1] == 1:
        return arr[..., 0]
    rgb = arr[..., :3].astype(np.float32)
    return rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def resize_stack(arr: np.ndarray, size: tuple[int, int], where: str) -> np.ndarray:
    """Resize every image to (H, W) = size with area interpolation, logging that it happened
    (size None: kept as they are)."""
    h, w = arr.shape[1:]
    if size is None or (h, w) == tuple(size):
        return np.ascontiguousarray(arr)
    if h < size[0] / 4 or w < size[1] / 4:
        raise DataError(f"{where}: images of {h}x{w} are too small to resize sensibly to {size[0]}x{size[1]}")
    log.info("%s: resizing %d images from %dx%d to %dx%d", where, len(arr), h, w, *size)
    return np.stack([resize_image(im, size) for im in arr])


def resize_image(im: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """One image to (H, W) = size, area interpolation (the right filter for shrinking)."""
    return im if im.shape == tuple(size) else cv2.resize(im, (size[1], size[0]), interpolation=cv2.INTER_AREA)


def check_labels(sums: np.ndarray, where: str, n: int) -> np.ndarray:
    """Sums must be n integers in 0..36 (float arrays holding whole numbers are accepted)."""
    sums = np.asarray(sums)
    if sums.dtype == object or sums.dtype.kind not in "iuf":  # bool labels would become sums 0 / 1
        raise DataError(f"{where}: labels must be integers, got dtype {sums.dtype}")
    sums = sums.reshape(-1) if sums.ndim == 2 and 1 in sums.shape else sums
    if sums.ndim != 1:
        raise DataError(f"{where}: labels must be one number per image, got shape {sums.shape}")
    if len(sums) != n:
        raise DataError(f"{where}: {n} images but {len(sums)} labels")
    if sums.dtype.kind == "f" and not (np.isfinite(sums).all() and (sums == np.round(sums)).all()):
        raise DataError(f"{where}: labels must be whole numbers")
    if sums.min() < 0 or sums.max() > MAX_SUM:
        raise DataError(f"{where}: labels must be in 0..{MAX_SUM}, found {sums.min()}..{sums.max()}")
    return sums.astype(np.int64)


def check_digits(digits: np.ndarray, sums: np.ndarray, where: str) -> np.ndarray:
    """Digits must be N x 4 integers in 0..9 whose row sums equal the labels."""
    if digits.dtype.kind not in "iu" or digits.shape != (len(sums), N_DIGITS):
        raise DataError(f"{where}: digits must be an integer array of shape {len(sums)} x {N_DIGITS}, "
                        f"got {digits.dtype} {digits.shape}")
    if digits.min() < 0 or digits.max() > N_CLASSES - 1:
        raise DataError(f"{where}: digits must be in 0..{N_CLASSES - 1}")
    bad = np.flatnonzero(digits.sum(1) != sums)
    if len(bad):
        raise DataError(f"{where}: digits of row {bad[0]} sum to {digits[bad[0]].sum()}, label says {sums[bad[0]]}")
    return digits.astype(np.int64)


def load_npy_pair(images: str | Path, labels: str | Path, size: tuple[int, int] | None = None) -> Samples:
    """The course format: an image stack IMAGES.npy and its sums LABELS.npy."""
    images, labels = Path(images), Path(labels)
    imgs = to_uint8_images(_load_array(images), str(images), size)
    sums = check_labels(_load_array(labels), f"{labels}", len(imgs))
    return Samples(imgs, sums, None, str(images))


def load_npz(path: str | Path, size: tuple[int, int] | None = None) -> Samples:
    """An .npz with `images`, `labels` and optional `digits` (N x 4)."""
    path = Path(path)
    z = _load_array(path, (("images", "labels"), ("digits",)))
    raw_images, labels, raw_digits = z["images"], z["labels"], z.get("digits")
    imgs = to_uint8_images(raw_images, str(path), size)
    sums = check_labels(labels, str(path), len(imgs))
    digits = None if raw_digits is None else check_digits(raw_digits, sums, str(path))
    return Samples(imgs, sums, digits, str(path))


def load_folder(path: str | Path, size: tuple[int, int] | None = None) -> Samples:
    """A folder of PNG/JPG files plus labels.csv: `filename,sum[,d1,d2,d3,d4]` (a header row is optional).

    Every file must lie inside the folder (no `..`, no absolute paths, no links out) and appear once."""
    path = Path(path)
    table = path / "labels.csv"
    rows = _read_table(table, path)
    images, sums, digits, seen, pixels = [], [], [], {}, 0
    for i, row in rows:
        where = f"{table} row {i}"
        file = _inside(path, row[0].strip(), where)
        if file in seen:  # a duplicate could land in both train and valid
            raise DataError(f"{where}: {row[0].strip()} is listed again (first at row {seen[file]})")
        seen[file] = i
        cells = [c for c in row[1:] if c.strip()]
        nums = [_whole(c, where, MAX_SUM if k == 0 else N_CLASSES - 1) for k, c in enumerate(cells)]
        if len(nums) not in (1, 1 + N_DIGITS):
            raise DataError(f"{where}: expected sum or sum,d1,d2,d3,d4; got {len(nums)} numbers")
        images.append(_read_image(file, where))  # each one checked before decoding; the total as it grows
        pixels += images[-1].size
        if pixels > arrays.MAX_ARRAY_BYTES:
            raise DataError(f"{path}: images of over {arrays.MAX_ARRAY_BYTES:,} pixels in all; split the folder")
        sums.append(nums[0])
        digits.append(nums[1:])
    shapes = sorted({im.shape for im in images})
    if len(shapes) > 1 and size is None:
        raise DataError(f"{path}: images of {len(shapes)} sizes ({shapes[0][0]}x{shapes[0][1]}, "
                        f"{shapes[1][0]}x{shapes[1][1]}, ...); give one size to resize them to")
    if len(shapes) > 1:  # one size is resized (and noted) below with the whole stack
        log.info("%s: resizing %d images of %d different sizes to %dx%d", path, len(images), len(shapes), *size)
    stack = np.stack([resize_image(im, size) for im in images]) if len(shapes) > 1 else np.stack(images)
    imgs = to_uint8_images(stack, str(path), size)
    sums_a = check_labels(np.array(sums), str(table), len(imgs))
    dig = None
    if all(len(d) == N_DIGITS for d in digits):
        dig = check_digits(np.array(digits), sums_a, str(table))
    return Samples(imgs, sums_a, dig, str(path))


MAX_TABLE_BYTES = 64 << 20  # labels.csv (a million rows is ~30 MB)


def _read_table(table: Path, folder: Path) -> list[tuple[int, list[str]]]:
    """labels.csv's (row number, cells) pairs (UTF-8, a BOM allowed), blank lines and the header
    skipped; every row `file,number...`. The first row is a header only if its label cell is not a
    number at all (`sum`, `label`): `+10`, `1e1`, `nan` or `1e400` are data, parsed or refused by name."""
    if not table.is_file():
        raise DataError(f"{folder}: folder has no labels.csv (expected filename,sum[,d1,d2,d3,d4])")
    if table.stat().st_size > MAX_TABLE_BYTES:
        raise DataError(f"{table}: {table.stat().st_size:,} bytes, over the limit of {MAX_TABLE_BYTES:,}")
    try:
        text = table.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(f"{table}: not UTF-8 text") from None
    lines = text.splitlines()
    reader = csv.reader(lines)
    rows = []
    try:
        for r in reader:
            if any(c.strip() for c in r):
                rows.append((reader.line_num, r))
    except csv.Error as e:  # e.g. a field over csv's limit of 131,072 characters
        raise DataError(f"{table} row {reader.line_num}: unreadable CSV ({e})") from None
    for i, r in rows:
        if len(r) < 2:
            raise DataError(f"{table} row {i}: expected filename,sum[,d1,d2,d3,d4]; got {','.join(r)[:60]!r}")
        if any("\x00" in c for c in r):
            raise DataError(f"{table} row {i}: holds a NUL byte")
    label = rows[0][1][1].strip() if rows else ""
    if label and not _is_number(label) and label.isprintable():
        rows = rows[1:]  # header
    if not rows:
        raise DataError(f"{table}: no rows")
    return rows


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _inside(folder: Path, name: str, where: str) -> Path:
    """`folder / name` resolved, if it stays inside the folder; one message for every other case, so
    the error never tells whether some outside path exists."""
    root = folder.resolve()
    p = (folder / name).resolve()
    if not name or not p.is_relative_to(root) or not p.is_file():
        raise DataError(f"{where}: image {name!r} not found in {folder}")
    return p


def _whole(cell: str, where: str, hi: int) -> int:
    """A label cell as an integer in 0..hi: `3`, `+3`, `3.0` or `3e0`, never a truncated `3.7`, nor
    `nan`, `inf` or `1e400`; a refusal names the cell."""
    shown = cell.strip()[:40]
    try:
        v = float(cell)
    except ValueError:
        raise DataError(f"{where}: labels must be integers, got {shown!r}") from None
    if not math.isfinite(v):  # `1e400` or 5,000 digits are out of range; `nan`, `inf` are not numbers here
        words = any(c.isalpha() and c not in "eE" for c in cell)
        raise DataError(f"{where}: labels must be " + ("finite numbers" if words else f"in 0..{hi}") + f", got {shown!r}")
    if not v.is_integer():
        raise DataError(f"{where}: labels must be whole numbers, got {shown!r}")
    if not 0 <= v <= hi:
        raise DataError(f"{where}: labels must be in 0..{hi}, got {shown!r}")
    return int(v)


def _read_image(p: Path, where: str) -> np.ndarray:
    """One image file as gray uint8; transparency is honoured (see `_flatten_alpha`). Its size is read
    from its header and checked (`arrays.image_size`) before OpenCV decodes it."""
    if not p.is_file():
        raise DataError(f"{where}: image {p} not found")
    arrays.image_size(p, where)
    im = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
    if im is None:
        raise DataError(f"{where}: {p.name} is not a readable image")
    if im.dtype != np.uint8:  # 16-bit PNGs
        im = (im / (65535.0 if im.dtype == np.uint16 else max(float(im.max()), 1.0)) * 255).round().astype(np.uint8)
    if im.ndim == 3 and im.shape[2] == 4:
        return _flatten_alpha(im)
    return cv2.cvtColor(im, cv2.COLOR_BGR2GRAY) if im.ndim == 3 else im


def _flatten_alpha(bgra: np.ndarray) -> np.ndarray:
    """An RGBA image on this task's black background. Where the colour carries no picture (flat)
    and the alpha does, the ink *is* the alpha channel (a common export of drawn digits); otherwise
    the colour is composited over black."""
    gray = cv2.cvtColor(bgra[..., :3], cv2.COLOR_BGR2GRAY)
    alpha = bgra[..., 3]
    if int(gray.max()) - int(gray.min()) < 16 and int(alpha.max()) - int(alpha.min()) >= 16:
        return alpha.copy()
    return (gray.astype(np.float32) * (alpha / 255.0)).round().astype(np.uint8)


def load_source(spec: str, size: tuple[int, int] | None = None) -> Samples:
    """One data source by its spec: `IMAGES.npy:LABELS.npy`, `FILE.npz` or `DIR` (with labels.csv), its
    images at `size` (H, W) -- a run's input size, resized where they differ -- or as stored (None)."""
    if ":" in spec and not Path(spec).exists():
        images, labels = spec.split(":", 1)
        return load_npy_pair(images, labels, size)
    p = Path(spec)
    if p.is_dir():
        return load_folder(p, size)
    if p.suffix == ".npz":
        return load_npz(p, size)
    if p.suffix == ".npy":
        raise DataError(f"{spec}: a .npy image stack needs its labels too: {spec}:LABELS.npy")
    if not p.exists():
        raise DataError(f"{spec}: file not found")
    raise DataError(f"{spec}: unknown data format (use IMAGES.npy:LABELS.npy, FILE.npz or a folder with labels.csv)")


def load_sources(specs, size: tuple[int, int] | None = None) -> Samples:
    """Several sources concatenated (the course ships data0..data2)."""
    return concat([load_source(s, size) for s in specs])


def load_images(paths, size: tuple[int, int] | None = None) -> tuple[np.ndarray, list[str]]:
    """Inputs for prediction: PNG/JPG files and/or .npy stacks, as uint8 (N, H, W) plus a name per image."""
    parts, names = [], []
    for spec in paths:
        p = Path(spec)
        if not p.is_file():
            raise DataError(f"{p}: file not found")
        if p.suffix == ".npy":
            arr = _load_array(p)
            arr = to_uint8_images(arr[None] if arr.ndim == 2 else arr, str(p), size)
            names += [f"{p}[{i}]" for i in range(len(arr))]
        elif p.suffix.lower() in IMAGE_SUFFIXES:
            arr = to_uint8_images(_read_image(p, str(p))[None], str(p), size)
            names.append(str(p))
        else:
            raise DataError(f"{p}: predict takes PNG/JPG images or an .npy stack")
        parts.append(arr)
    if not parts:
        raise DataError("no input images given")
    return np.concatenate(parts), names


def save_npz(samples: Samples, path: str | Path) -> Path:
    """Write Samples as an .npz (images, labels[, digits]) atomically."""
    import io
    from ..files import atomic_write
    path = Path(path)
    named = {"images": samples.images, "labels": samples.sums}
    if samples.digits is not None:
        named["digits"] = samples.digits
    buf = io.BytesIO()
    np.savez_compressed(buf, **named)
    atomic_write(path, buf.getvalue())  # (creates the folder; a refused write is one OutputError)
    return path
