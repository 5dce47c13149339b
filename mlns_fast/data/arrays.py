"""Size-checked readers of user files: .npy / .npz arrays, image files and gzip streams.

Nothing is allocated or decoded on a file's word alone: an .npy header's shape is checked against
the file's size (or, in an .npz, against the member's uncompressed size in the zip directory)
and against the limits below before the data is read; an image's dimensions are read from its
header (PIL opens lazily) before OpenCV decodes it; a gzip stream is inflated up to a bound.
Every refusal is one DataError naming the file. The limits (also in the README):
"""
from __future__ import annotations

import math
import re
import zipfile
from pathlib import Path

import numpy as np

from ..errors import DataError

MAX_ARRAY_BYTES = 2 << 30  # one array in memory (2 GiB: ~300,000 course images as uint8)
MAX_IMAGE_PIXELS = 1 << 24  # one image (16.8 M pixels, e.g. 4096 x 4096); course images are 40 x 168
MAX_INFLATED_BYTES = 512 << 20  # a gzip-compressed handwriting bank, unpacked (full MNIST: 47 MB)


def _header(f, where: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran order, dtype) from an open .npy stream positioned at its start."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = fmt.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = fmt.read_array_header_2_0(f)
        else:  # 3.0 (utf-8 field names): numpy has no public reader for its header
            shape, fortran, dtype = fmt._read_array_header(f, version)
    except (ValueError, OSError, EOFError, SyntaxError) as e:
        raise DataError(f"{where}: unreadable numpy file ({e})") from None
    if dtype.hasobject:
        raise DataError(f"{where}: holds pickled objects; only plain numeric arrays are accepted")
    return shape, fortran, dtype


def _check_size(shape, dtype: np.dtype, available: int, where: str) -> None:
    """An array's claimed size against the bytes that hold it and MAX_ARRAY_BYTES, and its images
    (the last two axes of a stack) against MAX_IMAGE_PIXELS; before anything is allocated."""
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes > available:
        raise DataError(f"{where}: header says shape {shape} of {dtype} ({nbytes:,} bytes) but the file holds "
                        f"{available:,}; truncated or forged")
    if nbytes > MAX_ARRAY_BYTES:
        raise DataError(f"{where}: {nbytes:,} bytes of {dtype} {shape}, over the limit of {MAX_ARRAY_BYTES:,} "
                        "per array; split it into several files")
    image = shape[1:3] if len(shape) >= 3 else shape if len(shape) == 2 and min(shape) > 1 else ()
    if math.prod(image) > MAX_IMAGE_PIXELS:
        raise DataError(f"{where}: images of {'x'.join(map(str, image))} pixels, over the limit of "
                        f"{MAX_IMAGE_PIXELS:,} per image")


def load_npy(path: Path) -> np.ndarray:
    """An .npy file (no pickles), its header checked before the data is read."""
    try:
        with open(path, "rb") as f:
            shape, _, dtype = _header(f, str(path))
            available = path.stat().st_size - f.tell()
    except OSError as e:
        raise DataError(f"{path}: unreadable ({e.strerror or type(e).__name__})") from None
    _check_size(shape, dtype, available, str(path))
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise DataError(f"{path}: unreadable numpy file ({e})") from None


def load_npz(path: Path, required: tuple[str, ...], optional: tuple[str, ...] = (), hint: str = "") -> dict:
    """Named arrays of an .npz (no pickles): each member's header checked against its uncompressed
    size in the zip directory and the limits before it is inflated; `required` ones must be there."""
    try:
        with zipfile.ZipFile(path) as z:
            members = {n[:-4]: z.getinfo(n) for n in z.namelist() if n.endswith(".npy")}
            missing = [n for n in required if n not in members]
            if missing:
                raise DataError(f"{path}: missing array(s) {', '.join(missing)} "
                                f"(has: {', '.join(sorted(members)) or 'none'}){hint}")
            out, total = {}, 0
            for name in [n for n in (*required, *optional) if n in members]:
                info, where = members[name], f"{path} [{name}]"
                with z.open(info) as f:
                    shape, _, dtype = _header(f, where)
                    _check_size(shape, dtype, info.file_size - f.tell(), where)
                total += math.prod(shape) * dtype.itemsize
                if total > MAX_ARRAY_BYTES:
                    raise DataError(f"{path}: arrays of {total:,} bytes, over the limit of {MAX_ARRAY_BYTES:,}")
                with z.open(info) as f:
                    out[name] = np.lib.format.read_array(f, allow_pickle=False)
            return out
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as e:
        raise DataError(f"{path}: unreadable numpy file ({type(e).__name__}: {e})") from None


def image_size(path: Path, where: str) -> tuple[int, int]:
    """(width, height) of an image file from its header, refused over MAX_IMAGE_PIXELS; nothing decoded."""
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as im:  # lazy: reads the header only
            w, h = im.size
    except Image.DecompressionBombError as e:  # PIL's own guard, far above ours: the size is in its message
        n = re.search(r"\((\d+) pixels\)", str(e))
        raise DataError(f"{where}: {path.name} is over the limit of {MAX_IMAGE_PIXELS:,} pixels per image"
                        + (f" ({int(n.group(1)):,} pixels)" if n else "")) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise DataError(f"{where}: {path.name} is not a readable image") from None
    if w * h > MAX_IMAGE_PIXELS:
        raise DataError(f"{where}: {path.name} is {w}x{h} pixels, over the limit of {MAX_IMAGE_PIXELS:,} per image")
    return w, h


def inflate(path: Path, limit: int | None = None) -> bytes:
    """A gzip file's content, refused once it passes `limit` (default MAX_INFLATED_BYTES) bytes."""
    import gzip
    parts, size, limit = [], 0, limit or MAX_INFLATED_BYTES
    try:
        with gzip.open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                size += len(chunk)
                if size > limit:
                    raise DataError(f"{path}: unpacks to over {limit:,} bytes; refused")
                parts.append(chunk)
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: not a readable gzip file ({type(e).__name__})") from None
    return b"".join(parts)
