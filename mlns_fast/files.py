"""Atomic file output: readers see the old file or the new one, never half of either.

The lowest layer of the package (only `errors` below it), so data, runs, training and export
all write through it. One context manager covers both cases: bytes we hold (`atomic_write`) and
files a library writes itself by path (safetensors, ONNX, TorchScript, matplotlib). A write that
the system refuses (no space, read-only, /proc, a file where a folder goes) ends in one
`OutputError` naming the target, with no temp file left behind.
"""
from __future__ import annotations

import contextlib
import io
import os
import secrets
from pathlib import Path

from .errors import OutputError


@contextlib.contextmanager
def atomic_path(path: str | Path):
    """Yield a temp path beside `path` for the caller to create; on success fsync it and rename it
    over `path`, else remove it. The parent folder is created first. (Not `mkstemp`: its 0600 files
    would end up beside 0644 PNGs.)"""
    path = Path(path)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if e.filename is not None and not _about(Path(str(e.filename)), path, tmp):
            raise  # an error reading some other file: not ours to rename
        raise OutputError(f"{path}: cannot write ({e.strerror or type(e).__name__})") from None
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise


def _about(name: Path, path: Path, tmp: Path) -> bool:
    """Whether an OSError's file name is the target, its temp file or one of the target's folders."""
    return name in (path, tmp) or name in path.parents


def atomic_write(path: str | Path, data: bytes | str) -> None:
    """Write bytes or text to `path` atomically."""
    with atomic_path(path) as tmp, open(tmp, "xb") as f:
        f.write(data.encode() if isinstance(data, str) else data)


def csv_text(rows: list[dict], columns: list[str]) -> str:
    """Rows as CSV text with a header: the one CSV writer of run folders, comparisons and sweeps."""
    import csv
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def atomic_torch_save(obj, path: str | Path) -> None:
    """`torch.save` to `path` atomically."""
    import torch
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write(path, buf.getvalue())


def inside(root: str | Path, *parts: str) -> Path:
    """`root / parts...`, refused (OutputError) if any part below `root` is a symbolic link or the
    result would resolve outside `root`: the containment check of every write into a run folder
    (whose files anyone may have copied, hand-edited or replaced by links)."""
    root = Path(root)
    real_root, path = root.resolve(), root
    for part in parts:
        if not part or part in (".", "..") or "/" in part or "\\" in part or "\x00" in part:
            raise OutputError(f"{root}: refused to write {part!r} (not a plain name)")
        path = path / part
        if path.is_symlink():
            raise OutputError(f"{path}: is a symbolic link; refused to write through it")
    if not path.resolve().is_relative_to(real_root):
        raise OutputError(f"{path}: resolves outside {root}; refused")
    return path
