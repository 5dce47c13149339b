"""The one check of every command's output path, made before any work starts.

An output may not replace a run's own files (`runs.RUN_FILES` in a run folder), a file must not be
a folder nor a folder a file, and the place must be writable: the nearest existing folder is probed
with a temporary file that is removed at once (this is what catches /proc, /sys, read-only mounts
and missing permissions the same way on every system). Nothing is created on refusal; the parent
folders are created when the file is written (`files.atomic_path`).
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from .errors import OutputError
from .runs import RUN_FILES


def check_output(path: str | Path, flag: str = "--out", folder: bool = False, example: str = "figure.png") -> Path:
    """`path` if a command may write its output there (a file, or a folder with `folder=True`);
    else one OutputError naming the flag and the path."""
    p = Path(path)
    if "\x00" in str(p) or not str(p).strip():
        raise OutputError(f"{flag} {str(p)!r}: not a usable path")
    if folder and p.exists() and not p.is_dir():
        raise OutputError(f"{flag} {p}: is a file; give a folder")
    if not folder and p.is_dir():
        raise OutputError(f"{flag} {p}: is a folder; give a file name (e.g. {p / example})")
    if not folder and is_run_file(p):
        raise OutputError(f"{flag} {p}: is a run's own {p.resolve().name}; refused (choose another file name)")
    base = p if folder and p.is_dir() else _existing_parent(p, flag)
    try:
        with tempfile.TemporaryFile(dir=base):  # created and removed: nothing is left behind
            pass
    except OSError as e:
        raise OutputError(f"{flag} {p}: cannot write in {base} ({e.strerror or type(e).__name__})") from None
    return p


def is_run_file(p: Path) -> bool:
    """Whether `p` (links followed) is one of a run folder's own files."""
    real = p.resolve()
    return real.name in RUN_FILES and any((real.parent / f).is_file() for f in ("config.toml", "summary.json"))


def _existing_parent(p: Path, flag: str) -> Path:
    """The nearest folder above `p` that exists (where its missing folders would be created)."""
    for parent in p.absolute().parents:
        if parent.is_dir():
            return parent
        if parent.exists() or parent.is_symlink():
            raise OutputError(f"{flag} {p}: {parent} is not a folder")
    raise OutputError(f"{flag} {p}: no existing folder above it")
