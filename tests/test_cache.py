"""The on-disk cache: its listing, the pools' size cap (least recently used go first), clearing, a full disk."""
import os
import subprocess
import sys
import time
from dataclasses import replace

import numpy as np
import pytest

from mlns_fast.cli import main
from mlns_fast.config import layout_config
from mlns_fast.data import cache
from mlns_fast.data import pool as pool_mod
from mlns_fast.data.pool import pool_bytes, synthetic_pool
from mlns_fast.data.render import create_renderer
from mlns_fast.errors import ConfigError, DataError

from .conftest import flag_args, tiny_flags


@pytest.fixture
def root(tmp_path, monkeypatch):
    """A cache of its own, with three pools of 1, 2 and 3 kB used in that order, a demo and a battery folder
    used before them all, and files that are not the cache's."""
    monkeypatch.setenv("MLNS_FAST_CACHE", str(tmp_path))
    monkeypatch.delenv(cache.POOL_CAP_ENV, raising=False)
    now = time.time()
    for k, (name, kb) in enumerate([("demo-0a1b", 4), ("battery-2c3d", 4), ("pool-aa", 1), ("pool-bb", 2),
                                    ("pool-cc", 3)]):
        (tmp_path / name).mkdir()
        (tmp_path / name / "images.npy").write_bytes(os.urandom(kb * 4096))
        os.utime(tmp_path / name, (now - 1000 + 100 * k, now - 1000 + 100 * k))
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "pool-not-hex").mkdir()
    return tmp_path


def _names(entries):
    return [e.path.name for e in entries]


def test_entries_list_the_caches_folders_least_recently_used_first(root):
    found = cache.entries()
    assert _names(found) == ["demo-0a1b", "battery-2c3d", "pool-aa", "pool-bb", "pool-cc"]
    assert [e.kind for e in found] == ["demo", "battery", "pool", "pool", "pool"]
    assert [e.bytes // 4096 for e in found] == [4, 4, 1, 2, 3]  # blocks on disk, not names or guesses
    cache.touch(root / "pool-aa")  # a read makes it the most recent
    assert _names(cache.entries())[-1] == "pool-aa"


def test_making_room_removes_the_least_recently_used_pools_down_to_the_cap(root, monkeypatch):
    monkeypatch.setenv(cache.POOL_CAP_ENV, str(7 * 4096 / 1e9))  # 7 blocks for the pools, the new one included
    removed = cache.make_room(2 * 4096)  # 6 held + 2 > 7: the oldest pool goes, 5 + 2 fit
    assert _names(removed) == ["pool-aa"]
    assert sorted(p.name for p in root.iterdir()) == ["battery-2c3d", "demo-0a1b", "notes.txt", "pool-bb",
                                                       "pool-cc", "pool-not-hex"]
    # the pool a caller keeps is never removed; demo and battery never are, whatever the cap
    monkeypatch.setenv(cache.POOL_CAP_ENV, "0")
    assert _names(cache.make_room(4096, keep=root / "pool-bb")) == ["pool-cc"]
    assert (root / "pool-bb").is_dir() and (root / "demo-0a1b").is_dir() and (root / "battery-2c3d").is_dir()
    # no cap: nothing goes
    monkeypatch.setenv(cache.POOL_CAP_ENV, "inf")
    assert cache.make_room(10 ** 6) == [] and (root / "pool-bb").is_dir()


def test_a_pool_the_disk_cannot_hold_is_refused_after_the_old_pools_went(root):
    with pytest.raises(DataError, match="free, a synthetic pool needs .* give a smaller --synth-pool"):
        cache.make_room(10 ** 18)  # an exabyte: no disk here holds it
    assert not list(root.glob("pool-??"))  # the pools made what room they could
    assert (root / "demo-0a1b").is_dir()


@pytest.mark.parametrize("value", ["x", "-1", "nan", "1e", " "])
def test_a_bad_cap_is_a_config_error(monkeypatch, value):
    monkeypatch.setenv(cache.POOL_CAP_ENV, value)
    if value.strip():
        with pytest.raises(ConfigError, match=cache.POOL_CAP_ENV):
            cache.pool_cap_bytes()
    else:  # set but blank: the default
        assert cache.pool_cap_bytes() == cache.POOL_CAP_GB * 1e9


def test_building_a_pool_past_the_cap_removes_the_oldest_and_a_cached_read_marks_its_use(tmp_path, monkeypatch):
    monkeypatch.setenv("MLNS_FAST_CACHE", str(tmp_path))
    r = create_renderer(replace(layout_config("train"), noise_p=0.0), 5)
    one = pool_bytes(r, 30)
    monkeypatch.setenv(cache.POOL_CAP_ENV, str(2.5 * one / 1e9))  # room for two pools of 30
    folders = {}
    for n in (30, 31):
        synthetic_pool(r, n, processes=1)
        folders[n] = tmp_path / f"pool-{pool_mod.pool_key(r, n)}"
        os.utime(folders[n], (time.time() - 3600 + n, time.time() - 3600 + n))
    synthetic_pool(r, 30, processes=1)  # read from the cache: now the most recently used
    assert folders[30].stat().st_mtime > time.time() - 60
    third = synthetic_pool(r, 29, processes=1)  # 3 pools > the cap: the least recently used (31) goes
    assert not folders[31].exists() and folders[30].is_dir()
    assert (tmp_path / f"pool-{pool_mod.pool_key(r, 29)}").is_dir() and len(third) == 29
    assert np.array_equal(third.images[3], r(0, 3).image)
    assert sorted(e.kind for e in cache.entries()) == ["pool", "pool"]


def test_a_full_disk_is_one_error_line_before_rendering(tmp_path, tiny_data):
    """A file size limit (RLIMIT_FSIZE) stands in for a full disk: a real one, no mock. Without the pool's
    blocks given up front, the memory-mapped writes would die of SIGBUS / SIGXFSZ mid-build."""
    code = ("import resource, signal, sys\n"
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))\n"
            "from mlns_fast.cli import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
    env = {**os.environ, "MLNS_FAST_CACHE": str(tmp_path / "cache")}
    out = subprocess.run([sys.executable, "-c", code, "train", "--runs-dir", str(tmp_path / "runs"), "--name", "full",
                          *flag_args(tiny_flags(tiny_data, synth_pool=3000))],
                         env=env, capture_output=True, text=True, timeout=600)
    err = [line for line in out.stderr.splitlines() if not line.startswith("note:")]
    assert out.returncode == 2, out.stderr
    assert len(err) == 1 and err[0].startswith("error: ") and "no room for a synthetic pool of 20 MB (file too large)" in err[0]
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["pools.lock"]  # no half pool, no temp folder
    assert not list((tmp_path / "runs").glob("*full*"))  # and no run folder


def test_the_data_cache_command_lists_and_clears(root, capsys):
    assert main(["data", "cache"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{root}: ") and "of 10.0 GB ($MLNS_FAST_POOL_CACHE_GB)" in out[0]
    assert [line.split()[0] for line in out[1:]] == ["demo", "battery", "pool", "pool", "pool"]
    assert out[-1].endswith("pool-cc")
    assert main(["data", "cache", "--clear", "pool"]) == 0
    assert "removed 3 folder(s)" in capsys.readouterr().out
    assert _names(cache.entries()) == ["demo-0a1b", "battery-2c3d"]
    # a stopped build's temp folder goes once it is a day old, not while a build may still be writing it
    (root / ".pool-young").mkdir()
    (root / ".pool-old").mkdir()
    old = time.time() - 2 * cache.STALE_S
    os.utime(root / ".pool-old", (old, old))
    assert _names(cache.clear("unfinished")) == [".pool-old"]
    assert (root / ".pool-young").is_dir()
    assert main(["data", "cache", "--clear", "all"]) == 0
    assert _names(cache.entries()) == [".pool-young"]
    assert (root / "notes.txt").is_file() and (root / "pool-not-hex").is_dir()  # not the cache's


@pytest.mark.parametrize("argv, env", [(["data", "cache", "--clear", "pools"], None),
                                       (["data", "cache"], "lots")])
def test_data_cache_user_errors_are_one_line(root, capsys, monkeypatch, argv, env):
    if env:
        monkeypatch.setenv(cache.POOL_CAP_ENV, env)
    before = sorted(p.name for p in root.iterdir())
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    assert sorted(p.name for p in root.iterdir()) == before


def test_two_processes_wanting_one_pool_build_it_once(tmp_path):
    """DDP ranks, or two runs of a seed side by side: the pool lock lets one build; the other waits and reads."""
    code = ("import logging, sys, numpy as np\n"
            "logging.basicConfig(level=logging.INFO, format='%(message)s')\n"
            "from dataclasses import replace\n"
            "from mlns_fast.config import layout_config\n"
            "from mlns_fast.data.pool import synthetic_pool\n"
            "from mlns_fast.data.render import create_renderer\n"
            "p = synthetic_pool(create_renderer(replace(layout_config('train'), noise_p=0.0), 9), 3000, processes=1)\n"
            "print(int(np.asarray(p.images, np.int64).sum()), p.digits.sum())\n")
    env = {**os.environ, "MLNS_FAST_CACHE": str(tmp_path)}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert sum("rendering a synthetic pool" in err for _, err in outs) == 1  # one built, one read
    assert outs[0][0] == outs[1][0] and int(outs[0][0].split()[0]) > 0  # the same pixels and digits
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "pools.lock") == [
        e.path.name for e in cache.entries(tmp_path)] and len(cache.entries(tmp_path)) == 1


def test_a_run_keeps_reading_a_pool_the_cap_removed(tmp_path, monkeypatch):
    monkeypatch.setenv("MLNS_FAST_CACHE", str(tmp_path))
    r = create_renderer(replace(layout_config("train"), noise_p=0.0), 6)
    p = synthetic_pool(r, 40, processes=1)
    before = [np.array(p.item(1, j)[0]) for j in range(40)]
    assert [e.kind for e in cache.clear("pool")] == ["pool"] and not cache.entries()
    assert all(np.array_equal(p.item(1, j)[0], b) for j, b in enumerate(before))  # the mapping outlives the files
