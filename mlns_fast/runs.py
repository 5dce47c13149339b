"""Run folders: creation, atomic writes, metrics, checkpoints, weights, and finding runs again.

    experiments/runs/<YYYYmmdd-HHMMSS>-<name>/
        config.toml        resolved config (CLI > file > defaults)
        summary.json       status, best/final accuracy (raw and EMA), params, time, device, versions
        metrics.csv        one row per epoch
        steps.csv          one row per training step: loss, fastai's smoothed loss, lr
        checkpoint.pt      model + optimizer + EMA + RNG + epoch, for --resume (tensors only)
        model.safetensors  final raw weights;  model_ema.safetensors  final EMA weights
        curves.png         accuracy raw vs EMA, train vs valid loss
"""
from __future__ import annotations

import csv
import json
import logging
import math
import os
import pickle
import platform
import subprocess
import time
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import RunConfig, load_run_config, write_toml
from .errors import ConfigError, MlnsError, RunError
from .files import atomic_path, atomic_torch_save, atomic_write, csv_text
from .procs import is_alive, this_process

log = logging.getLogger(__name__)
DEFAULT_RUNS_DIR = "experiments/runs"
# The run folder's schema, in one place: metrics.csv columns (one row per epoch) ...
METRIC_COLUMNS = ["epoch", "train_loss", "valid_loss", "acc", "valid_loss_ema", "acc_ema", "lr", "seconds"]
STEP_COLUMNS = ["step", "epoch", "loss", "smooth_loss", "lr"]
# Metric names: a per-epoch quantity is named as its metrics.csv column (`acc`, `acc_ema`, `valid_loss`;
# sweep's `metric` takes these names), its value after the last epoch `final_<q>` and its best
# `best_<q>` (summary.json, compare); evaluation results are `test_acc` and `rob_<set>` / `rob_mean`.
# ... and the summary.json keys that `compare` and `report` show.
SUMMARY_COLUMNS = ["name", "arch", "grid", "head", "data", "ema", "epochs", "params", "minutes",
                   "best_acc", "final_acc", "best_acc_ema", "final_acc_ema", "weights", "study", "trial",
                   "status", "run"]
NUMERIC_COLUMNS = {"ema", "epochs", "params", "minutes", "best_acc", "final_acc", "best_acc_ema", "final_acc_ema",
                   "trial"}
REPORT_COLUMNS = ["name", "arch", "grid", "head", "data", "ema", "epochs", "params", "minutes", "final_acc", "final_acc_ema",
                  "best_acc_ema", "status"]


def library_versions() -> dict:
    import fastai
    import timm
    return {"python": platform.python_version(), "torch": torch.__version__, "fastai": fastai.__version__,
            "timm": timm.__version__}


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


@dataclass
class RunDir:
    """One run's folder and the files in it."""
    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    @classmethod
    def create(cls, runs_dir: str | Path, cfg: RunConfig) -> "RunDir":
        """A new `<YYYYmmdd-HHMMSS>-<name>` folder; `-2`, `-3`... when that second is taken (mkdir is atomic)."""
        root = Path(runs_dir)
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RunError(f"{root}: cannot create runs dir ({e.strerror})") from None
        stem = time.strftime("%Y%m%d-%H%M%S") + (f"-{cfg.name}" if cfg.name else "")
        for k in range(1, 1000):
            path = root / (stem if k == 1 else f"{stem}-{k}")
            if path.resolve().parent != root.resolve():  # names are checked already; this is the backstop
                raise RunError(f"run name {cfg.name!r} would leave {root}")
            try:
                path.mkdir()
            except FileExistsError:
                continue
            except OSError as e:
                raise RunError(f"{root}: cannot create a run folder ({e.strerror})") from None
            try:
                atomic_write(path / "config.toml", write_toml(cfg))
            except OSError as e:
                path.rmdir()
                raise RunError(f"{path}: cannot write config.toml ({e.strerror})") from None
            return cls(path)
        raise RunError(f"{root}: could not find a free run folder name for {stem}")

    # --- liveness: a lock file names the process that trains this run --------------------------
    @property
    def lock_path(self) -> Path:
        return self.path / "run.lock"

    def lock(self) -> None:
        """Claim the run for this process (refused while another live process holds it)."""
        pid = self.holder()
        if pid is not None and pid != os.getpid():
            raise RunError(f"{self.path}: is being trained by process {pid}; stop it first")
        atomic_write(self.lock_path, json.dumps(this_process()))

    def unlock(self) -> None:
        self.lock_path.unlink(missing_ok=True)

    def holder(self) -> int | None:
        """The PID of the live process training this run, or None (no lock, or its process is gone,
        even if its PID now names another process)."""
        try:
            info = json.loads(self.lock_path.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(info, dict) or not is_alive(info):
            return None
        return info["pid"]

    def status(self, summary: dict | None = None) -> str:
        """The summary's status (read here unless given), except that a `running` run no live process
        holds is `stale`."""
        try:
            status = (summary if summary is not None else self.summary()).get("status", "unknown")
        except RunError:
            return "unknown"
        return "stale" if status == "running" and self.holder() is None else str(status)

    # --- files -------------------------------------------------------------------------------
    def config(self) -> RunConfig:
        return load_run_config(self.path / "config.toml")

    def summary(self) -> dict:
        p = self.path / "summary.json"
        try:
            s = json.loads(p.read_text())
        except FileNotFoundError:
            raise RunError(f"{self.path}: no summary.json (not a run folder, or it never started)") from None
        except (json.JSONDecodeError, UnicodeDecodeError, OSError):
            raise RunError(f"{p}: corrupt summary.json") from None
        if not isinstance(s, dict):
            raise RunError(f"{p}: corrupt summary.json (not a JSON object)")
        return s

    def write_summary(self, summary: dict) -> None:
        """summary.json, strict JSON: a NaN or inf figure is written as null."""
        atomic_write(self.path / "summary.json", json.dumps(_finite(summary), indent=2, default=str) + "\n")

    def metrics(self) -> list[dict]:
        p = self.path / "metrics.csv"
        if not p.is_file():
            return []
        rows = list(csv.DictReader(p.read_text().splitlines()))
        return [{k: _num(v) for k, v in r.items()} for r in rows if r.get("epoch") not in (None, "")]

    def steps(self) -> list[dict]:
        """steps.csv's rows (empty for runs from before it was written, or an unreadable file)."""
        try:
            rows = list(csv.DictReader(self.steps_path.read_text().splitlines()))
        except (OSError, UnicodeDecodeError, csv.Error):
            return []
        rows = [{k: _num(v) for k, v in r.items() if k in STEP_COLUMNS} for r in rows]
        return [r for r in rows if isinstance(r.get("step"), int) and isinstance(r.get("epoch"), int)]

    @property
    def steps_path(self) -> Path:
        return self.path / "steps.csv"

    def write_steps(self, rows: list[dict]) -> None:
        atomic_write(self.steps_path, csv_text(rows, STEP_COLUMNS))

    def write_metrics(self, rows: list[dict]) -> None:
        cols = METRIC_COLUMNS + sorted({k for r in rows for k in r} - set(METRIC_COLUMNS))
        atomic_write(self.path / "metrics.csv", csv_text(rows, cols))

    @property
    def checkpoint_path(self) -> Path:
        return self.path / "checkpoint.pt"

    def save_checkpoint(self, state: dict) -> None:
        atomic_torch_save(state, self.checkpoint_path)

    def load_checkpoint(self) -> dict | None:
        """The last epoch's checkpoint, or None if the run stopped before finishing one."""
        if not self.checkpoint_path.is_file():
            return None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ckpt = torch.load(self.checkpoint_path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, zipfile.BadZipFile) as e:  # refused or corrupt
            raise RunError(f"{self.checkpoint_path}: cannot be loaded safely ({type(e).__name__})") from None
        problem = _checkpoint_problem(ckpt)
        if problem:
            raise RunError(f"{self.checkpoint_path}: not a usable checkpoint ({problem})")
        return ckpt

    def weights_path(self, ema: bool = True) -> Path:
        return self.path / ("model_ema.safetensors" if ema else "model.safetensors")

    def save_weights(self, module: torch.nn.Module, ema: bool) -> None:
        """A module's state dict as (atomic) safetensors: the run's raw or EMA weights."""
        from safetensors.torch import save_file
        sd = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
        with atomic_path(self.weights_path(ema)) as tmp:
            save_file(sd, str(tmp))

    def write_curves(self, rows: list[dict]) -> None:
        from .plots import plot_curves
        plot_curves(rows, self.path / "curves.png", title=self.name, steps=self.steps())


class NullRun:
    """What a non-zero rank of a distributed run writes: nothing (rank 0 owns the run folder)."""
    name, path = "", Path(os.devnull)

    def summary(self) -> dict:
        return {}

    def metrics(self) -> list[dict]:
        return []

    def write_summary(self, summary: dict) -> None:
        pass

    def write_metrics(self, rows: list[dict]) -> None:
        pass

    def steps(self) -> list[dict]:
        return []

    def write_steps(self, rows: list[dict]) -> None:
        pass

    def save_checkpoint(self, state: dict) -> None:
        pass

    def save_weights(self, module, ema: bool) -> None:
        pass

    def lock(self) -> None:
        pass

    def unlock(self) -> None:
        pass

    def write_curves(self, rows: list[dict]) -> None:
        pass


def _finite(o):
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, list):
        return [_finite(v) for v in o]
    return None if isinstance(o, float) and not math.isfinite(o) else o


def _num(v: str):
    if v is None or v == "":
        return None
    try:
        f = float(v)
        return int(f) if f.is_integer() and "." not in v and "e" not in v.lower() else f
    except ValueError:
        return v


def _checkpoint_problem(ckpt) -> str | None:
    """What is wrong with a loaded checkpoint's structure, if anything."""
    if not isinstance(ckpt, dict):
        return "not a dict"
    for key, typ in (("epoch", int), ("model", dict), ("opt", dict), ("rng_torch", torch.Tensor)):
        if key not in ckpt:
            return f"missing {key!r}"
        if not isinstance(ckpt[key], typ) or isinstance(ckpt[key], bool):
            return f"{key!r} is {type(ckpt[key]).__name__}, expected {typ.__name__}"
    if ckpt["epoch"] < 0:
        return "bad epoch"
    if "hypers" in ckpt["opt"]:  # fastai Adam's layout, written before the switch to torch's fused AdamW
        return "its optimizer state is from fastai's Adam, which this version no longer uses; train it again"
    if not {"state", "param_groups"} <= set(ckpt["opt"]):
        return "bad optimizer state"
    return None


def list_runs(runs_dir: str | Path) -> list[RunDir]:
    """Every folder in `runs_dir` that looks like a run (has a config.toml or summary.json), oldest first."""
    root = Path(runs_dir)
    if not root.is_dir():
        return []
    return [RunDir(p) for p in sorted(root.iterdir())
            if p.is_dir() and ((p / "summary.json").exists() or (p / "config.toml").exists())]


def resolve_run(ref: str, runs_dir: str | Path = DEFAULT_RUNS_DIR) -> RunDir:
    """A run by folder path, by folder name, by config name (newest wins), or `latest`."""
    p = Path(ref)
    if p.is_dir() and (p / "config.toml").exists():
        return RunDir(p)
    if p.is_dir() and any((p / f).exists() for f in ("summary.json", "metrics.csv", "checkpoint.pt")):
        raise RunError(f"{p}: run folder has no config.toml (deleted or never written)")
    runs = list_runs(runs_dir)
    if ref == "latest":
        if not runs:
            raise RunError(f"{runs_dir}: no runs yet")
        return runs[-1]
    for r in reversed(runs):
        if r.name == ref:
            return r
    named = [r for r in runs if _config_name(r) == ref]  # `-2` folders of same-second runs included
    if len(named) > 1:
        log.info("%d runs are named %r; using the newest, %s (give a folder name to pick another)",
                 len(named), ref, named[-1].name)
    if named:
        return named[-1]
    raise RunError(f"unknown run {ref!r} (not a run folder, nor a run name in {runs_dir}; try `mlns-fast compare`)")


def _config_name(run: RunDir) -> str | None:
    try:
        return run.config().name
    except MlnsError:
        return None


WEIGHT_CHOICES = ("best", "raw", "ema")


def weights_set(run: RunDir, which: str = "best") -> str:
    """Which weights a finished run serves for `which`: `raw` or `ema`; `best` = the set that scored
    better on validation at the end of the run (summary.json `weights`); a run without EMA has raw only."""
    if which not in WEIGHT_CHOICES:
        raise ConfigError(f"--weights-from must be one of {', '.join(WEIGHT_CHOICES)}; got {which!r}")
    if which == "best":
        try:
            which = run.summary().get("weights") or "ema"  # runs from before `weights` was recorded: EMA
        except RunError:
            which = "ema"
    if which == "ema" and not run.weights_path(True).is_file():
        which = "raw"
    if run.weights_path(which == "ema").is_file():
        return which
    raise RunError(f"{run.path}: no weights (the run is partial: status "
                   f"{run.status()}); finish or resume it first")


def finished_weights(run: RunDir, which: str = "best") -> Path:
    """The weights file a finished run serves for `which` (see `weights_set`)."""
    return run.weights_path(weights_set(run, which) == "ema")
