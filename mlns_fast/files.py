"""Atomic file output: readers see the old file or the new one, never half of either.

The lowest layer of the package (only `errors` below it), so data, runs, training and export
all write through it. One context manager covers both cases: bytes we hold (`atomic_write`) and
files a library writes itself by path (safetensors, ONNX, TorchScript).
"""
from __future__ import annotations

import contextlib
import io
import os
import secrets
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | Path):
    """Yield a temp path beside `path` for the caller to create; on success fsync it and rename it
    over `path`, else remove it. (Not `mkstemp`: its 0600 files would end up beside 0644 PNGs.)"""
    path = Path(path)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
