"""The on-disk cache: folders `<kind>-<key>` under $MLNS_FAST_CACHE (else the platform's user cache dir).

  demo-<version>     the embedded demo stand-in (91 MB), built on first use
  battery-<version>  the robustness battery's sets (29 MB)
  pool-<key>         a `--synth-pool` pool: 1.8 GB for the default recipe's `-1`, one per seed and recipe

Everything here can be rebuilt, and pools pile up (a new seed, layout or bank makes a new one), so
before a pool is built the cache makes room for it: it removes the pools used least recently until the
pools, the new one included, fit under $MLNS_FAST_POOL_CACHE_GB (default 10) and the disk has the new
pool's bytes free. A folder's mtime is its last use: each read touches it. Pools are built one at a
time, under `pools.lock` (data/pool.py). `mlns-fast data cache` lists the folders and clears them.

Hand-written: platformdirs gives the folder, but no library keeps a size-capped cache of memory-mapped
folders (diskcache and joblib.Memory store values they serialise themselves).
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError, DataError

log = logging.getLogger(__name__)

CACHE_ENV = "MLNS_FAST_CACHE"
POOL_CAP_ENV = "MLNS_FAST_POOL_CACHE_GB"
POOL_CAP_GB = 10.0  # five `-1` pools of the default recipe
KINDS = ("demo", "battery", "pool")
_FOLDER = re.compile(rf"({'|'.join(KINDS)})-[0-9a-f]+")
_UNFINISHED = re.compile(rf"\.({'|'.join(KINDS)})-.+")  # a build's temp folder (tempfile.mkdtemp's prefix)
STALE_S = 24 * 3600  # an unfinished build this old was stopped (a kill leaves its temp folder behind)


def size_text(n: float) -> str:
    """Bytes as a person reads them: 1.8 GB, 195 MB, 12 kB."""
    if n >= 1e9:
        return f"{n / 1e9:.1f} GB"
    for unit, scale in (("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.0f} {unit}"
    return f"{n:.0f} B"


def cache_root() -> Path:
    """$MLNS_FAST_CACHE, else the platform's user cache dir."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env)
    from platformdirs import user_cache_dir
    return Path(user_cache_dir("mlns-fast"))


@dataclass
class Entry:
    path: Path
    kind: str  # demo | battery | pool; `unfinished` for a build's temp folder
    bytes: int  # on disk (allocated blocks where the platform tells)
    used: float  # last use, seconds since the epoch (the folder's mtime)


def _size(folder: Path) -> int:
    total = 0
    for f in folder.rglob("*"):
        try:
            st = f.lstat()
        except OSError:  # removed meanwhile
            continue
        if stat.S_ISREG(st.st_mode):
            blocks = getattr(st, "st_blocks", None)
            total += blocks * 512 if blocks is not None else st.st_size
    return total


def entries(root: Path | None = None) -> list[Entry]:
    """The cache's folders, least recently used first; other files in it are not ours and not listed."""
    root = root or cache_root()
    out = []
    for p in root.iterdir() if root.is_dir() else ():
        kind = (m.group(1) if (m := _FOLDER.fullmatch(p.name))
                else "unfinished" if _UNFINISHED.fullmatch(p.name) else None)
        if kind is None or not p.is_dir():
            continue
        try:
            used = p.stat().st_mtime
        except OSError:
            continue
        out.append(Entry(p, kind, _size(p), used))
    return sorted(out, key=lambda e: e.used)


def touch(folder: Path) -> None:
    """Mark `folder` used now (a read-only cache stays as it is)."""
    try:
        os.utime(folder)
    except OSError:
        pass


def pool_cap_bytes() -> float:
    """$MLNS_FAST_POOL_CACHE_GB in bytes: a number >= 0 (inf: no cap); else one ConfigError line."""
    v = os.environ.get(POOL_CAP_ENV, "").strip()
    try:
        gb = float(v) if v else POOL_CAP_GB
    except ValueError:
        gb = -1.0
    if not gb >= 0:  # also NaN
        raise ConfigError(f"${POOL_CAP_ENV}={v!r}: give the gigabytes the synthetic pools may keep on disk "
                          f"(a number >= 0, or inf)")
    return gb * 1e9


def remove(entry: Entry) -> None:
    """Delete a cache folder. A run that has its arrays mapped keeps reading them (POSIX frees the
    blocks when the last mapping goes); a run about to read it renders it again."""
    shutil.rmtree(entry.path, ignore_errors=True)


def make_room(need: int, root: Path | None = None, keep: Path | None = None) -> list[Entry]:
    """Before a pool of `need` bytes is built in `root`: remove the least recently used pools (never
    `keep`) until the pools and the new one fit under the cap and the disk has `need` bytes free.
    Returns what it removed. Raises DataError when the disk cannot hold the pool even then."""
    root = root or cache_root()
    cap = pool_cap_bytes()
    pools = [e for e in entries(root) if e.kind == "pool" and e.path != keep]
    removed = []
    held = sum(e.bytes for e in pools)
    while pools and (held + need > cap or shutil.disk_usage(root).free < need):
        e = pools.pop(0)
        remove(e)
        removed.append(e)
        held -= e.bytes
        log.info("removed the synthetic pool %s (%s, last used %s) to make room", e.path.name, size_text(e.bytes),
                 time.strftime("%Y-%m-%d %H:%M", time.localtime(e.used)))
    free = shutil.disk_usage(root).free
    if free < need:
        raise DataError(f"{root}: {size_text(free)} free, a synthetic pool needs {size_text(need)}; free some "
                        f"disk, point ${CACHE_ENV} at a larger one, or give a smaller --synth-pool")
    if need > cap:
        log.warning("a synthetic pool of %s is larger than $%s (%s): it is built, and kept alone",
                    size_text(need), POOL_CAP_ENV, size_text(cap))
    return removed


def clear(kind: str, root: Path | None = None) -> list[Entry]:
    """Remove the cache's folders of `kind` (demo | battery | pool | unfinished | all); a build's temp
    folder only once it is a day old (younger ones may be a build going on now)."""
    if kind not in (*KINDS, "unfinished", "all"):
        raise ConfigError(f"--clear: unknown kind {kind!r} (known: {', '.join((*KINDS, 'unfinished', 'all'))})")
    now = time.time()
    gone = [e for e in entries(root) if kind in (e.kind, "all")
            and (e.kind != "unfinished" or now - e.used > STALE_S)]
    for e in gone:
        remove(e)
    return gone
