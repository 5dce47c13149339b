"""Shared fixtures: an isolated cache, tiny real data files, and a tiny run config."""
from __future__ import annotations

import subprocess
import sys

import signal

import numpy as np
import pytest
import torch
from fastai.callback.core import Callback

from mlns_fast.config import resolve_config
from mlns_fast.data.demo import demo_split
from mlns_fast.data.sources import Samples, save_npz


@pytest.fixture(scope="session", autouse=True)
def _cache(tmp_path_factory):
    """Every test session builds the demo set once, in its own cache dir."""
    mp = pytest.MonkeyPatch()
    mp.setenv("MLNS_FAST_CACHE", str(tmp_path_factory.mktemp("cache")))
    yield
    mp.undo()


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> dict:
    """Small course-format files cut from the demo set: train 96 images (npz), valid 48 (npy pair)."""
    root = tmp_path_factory.mktemp("tiny")
    train = demo_split("train").subset(slice(0, 96))
    valid = demo_split("valid").subset(slice(0, 48))
    save_npz(train, root / "train.npz")
    np.save(root / "vx.npy", valid.images)
    np.save(root / "vy.npy", valid.sums)
    return {"train": str(root / "train.npz"), "valid": f"{root / 'vx.npy'}:{root / 'vy.npy'}", "root": root}


def dead_pid() -> int:
    """The PID of a process that has exited and been reaped."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def tiny_flags(tiny_data, **overrides) -> dict:
    """Flags of a run that takes seconds on CPU: 3 batches of 16 per epoch, tiny validation."""
    flags = dict(real=(tiny_data["train"],), valid=(tiny_data["valid"],), bs=16, workers=0,
                 synthetic_per_epoch=48, epochs=2, mix=0.5, data="mixed", precision="fp32", channels_last=False)
    flags.update(overrides)
    return flags


def flag_args(flags: dict) -> list[str]:
    """The command-line spelling of config flags (tuples repeat the flag, bools use --no-)."""
    args = []
    for k, v in flags.items():
        name = "--" + k.replace("_", "-")
        if isinstance(v, bool):
            args.append(name if v else f"--no-{name[2:]}")
        elif isinstance(v, tuple):
            for item in v:
                args += [name, str(item)]
        else:
            args += [name, str(v)]
    return args


@pytest.fixture
def tiny_cfg(tiny_data):
    def make(**overrides):
        return resolve_config(**tiny_flags(tiny_data, **overrides))
    return make


def make_samples(n=8, digits=True) -> Samples:
    rng = np.random.default_rng(0)
    d = rng.integers(0, 10, (n, 4))
    imgs = rng.integers(0, 256, (n, 40, 168), dtype=np.uint8)
    return Samples(imgs, d.sum(1), d if digits else None, "fixture")


def run_cli(capsys, *args):
    """Run the CLI in-process: (exit code, stdout, stderr)."""
    from mlns_fast.cli import main
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_user_error(code, err, msg=""):
    """The README's contract for user errors: exit 2, one `error:` line, no traceback."""
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert msg in err, err


@pytest.fixture
def one_thread():
    """Toy runs on one thread each: on oversubscribed cores two-thread OpenMP runs of tiny models
    crawl (tests/test_sweep.py measured 95 s vs 5 s)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class SigintAfter(Callback):
    """Sends this process SIGINT (as Ctrl-C would) after epoch `n` ends (n = -1: during the first
    epoch, after its first batch)."""

    def __init__(self, n):
        self.n = n

    def after_batch(self):
        if self.n < 0 and self.training and self.iter == 0 and self.epoch == 0:
            signal.raise_signal(signal.SIGINT)

    def after_epoch(self):
        if self.epoch == self.n:
            signal.raise_signal(signal.SIGINT)
