"""Run folders: creation, atomic writes, metrics, checkpoints, weights, and finding runs again.

    experiments/runs/<YYYYmmdd-HHMMSS>-<name>/
        config.toml        resolved config (CLI > file > defaults)
        summary.json       status, best/final accuracy (raw and EMA), params, time, device, versions
        metrics.csv        one row per epoch
        steps.csv          one row per training step: loss, fastai's smoothed loss, lr
        checkpoint.pt      model + optimizer + EMA + RNG + epoch, for --resume (tensors only)
        model.safetensors  final raw weights;  model_ema.safetensors  final EMA weights
        curves.png         accuracy raw vs EMA, train vs valid loss
        run.lock           {"pid": ..., "host": ...} of the process training it, while it trains
        eval/ robustness/  evaluation results; model*.onnx / model*.pt exports

A run folder is user input once it exists (runs are copied, shared and hand-edited): each file kind
has one reader here that checks sizes, nesting, types, ranges and allowed values and turns anything
off into one `RunError` naming the file; every write goes through `RunDir.file` (no symbolic links,
nothing resolving outside the folder).
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

from .config import RunConfig, load_run_config, parse_bounded, write_toml
from .errors import ConfigError, MlnsError, OutputError, RunError
from .files import atomic_path, atomic_torch_save, atomic_write, csv_text, inside
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
SUMMARY_COLUMNS = ["name", "arch", "grid", "head", "data", "ema", "epochs", "params", "minutes", "device", "precision",
                   "best_acc", "final_acc", "best_acc_ema", "final_acc_ema", "weights", "study", "trial",
                   "status", "run"]
NUMERIC_COLUMNS = {"ema", "epochs", "params", "minutes", "best_acc", "final_acc", "best_acc_ema", "final_acc_ema",
                   "trial"}
STATUSES = ("running", "finished", "interrupted", "failed", "diverged", "pruned")
WEIGHT_SETS = ("raw", "ema")
# How a finished run is read unless told otherwise (evaluate, robustness, predict, export; `--no-tta`
# for the plain network): through shift TTA. Measured on the default's three seeds (RESULTS.md, issue
# 20, thirteenth round): the demo valid split +0.53, the battery's shifted sets +0.37 on their mean with
# no set lower by more than 0.3, for 5x the inference compute.
DEFAULT_TTA = True


def reading_label(weights: str, tta: bool) -> str:
    """How results folders name a reading: `ema`, or `ema-tta` through shift TTA."""
    return f"{weights}-tta" if tta else weights


# What a run folder's own files are: no command's output may replace them (see outputs.check_output).
RUN_FILES = ("config.toml", "summary.json", "metrics.csv", "checkpoint.pt", "run.lock", "model.safetensors",
             "model_ema.safetensors", "curves.png")
MAX_SMALL_FILE = 1 << 20  # bytes: config.toml, summary.json, run.lock (ours are a few KB)
MAX_METRICS_FILE = 16 << 20  # bytes: metrics.csv (one short row per epoch; 10,000 epochs is ~1 MB)
MAX_STEPS_FILE = 256 << 20  # bytes: steps.csv (one ~60-byte row per step: millions of steps)
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
            except OutputError as e:
                path.rmdir()
                raise RunError(str(e)) from None
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
        atomic_write(self.file("run.lock"), json.dumps(this_process()))

    def unlock(self) -> None:
        self.lock_path.unlink(missing_ok=True)

    def lock_info(self) -> dict | None:
        """run.lock's content ({pid, host, token}: `procs.this_process`), None if there is none; RunError if it is malformed (a
        pid of 0 or -1 would make `os.kill(pid, 0)` probe a whole process group)."""
        if not self.lock_path.exists() and not self.lock_path.is_symlink():
            return None
        info = _read_json(self.lock_path, MAX_SMALL_FILE)
        pid, host = (info.get("pid"), info.get("host")) if isinstance(info, dict) else (None, None)
        token = info.get("token") if isinstance(info, dict) else None  # procs.this_process(): start time
        if type(pid) is not int or not 0 < pid < 1 << 22 or not isinstance(host, str) or \
                not isinstance(token, (str, type(None))):
            raise RunError(f"{self.lock_path}: malformed lock (expected {{\"pid\": N, \"host\": NAME, \"token\": ...}}); "
                           "delete it if no process trains this run")
        return info

    def holder(self) -> int | None:
        """The PID of the live process training this run, or None (no lock, or its process is gone,
        even if its PID now names another process)."""
        info = self.lock_info()
        if info is None or not is_alive(info):
            return None
        return info["pid"]

    def status(self, summary: dict | None = None) -> str:
        """The summary's status (read here unless given), except that a `running` run no live process
        holds is `stale`."""
        try:
            status = (summary if summary is not None else self.summary()).get("status", "unknown")
            return "stale" if status == "running" and self.holder() is None else str(status)
        except RunError:
            return "unknown"

    # --- files -------------------------------------------------------------------------------
    def config(self) -> RunConfig:
        return load_run_config(self.path / "config.toml")

    def file(self, *parts: str) -> Path:
        """The path of a file (or folder) to write in this run folder, checked: no symbolic link on
        the way, nothing resolving outside the folder (OutputError otherwise)."""
        return inside(self.path, *parts)

    def summary(self) -> dict:
        """summary.json, validated (`summary_problem`); RunError naming the file if anything is off."""
        p = self.path / "summary.json"
        if not p.exists():
            raise RunError(f"{self.path}: no summary.json (not a run folder, or it never started)")
        s = _read_json(p, MAX_SMALL_FILE)
        problem = summary_problem(s)
        if problem:
            raise RunError(f"{p}: corrupt summary.json ({problem})")
        return s

    def write_summary(self, summary: dict) -> None:
        """summary.json, strict JSON: a NaN or inf figure is written as null."""
        atomic_write(self.file("summary.json"), json.dumps(_finite(summary), indent=2, default=str) + "\n")

    def metrics(self) -> list[dict]:
        """metrics.csv's rows, validated: epochs 0, 1, 2... in order, every value a number or empty."""
        p = self.path / "metrics.csv"
        if not p.exists():
            return []
        try:
            rows = list(csv.DictReader(_read_text(p, MAX_METRICS_FILE).splitlines()))
        except csv.Error as e:
            raise RunError(f"{p}: corrupt metrics.csv ({e})") from None
        rows = [{k: _num(v) for k, v in r.items()} for r in rows if any(v not in (None, "") for v in r.values())]
        for i, r in enumerate(rows):
            problem = _metrics_problem(r, i)
            if problem:
                raise RunError(f"{p}: corrupt metrics.csv (row {i + 1}: {problem})")
        return rows

    def steps(self) -> list[dict]:
        """steps.csv's rows (empty for runs from before it was written, or an unreadable file)."""
        try:
            rows = list(csv.DictReader(_read_text(self.steps_path, MAX_STEPS_FILE).splitlines()))
        except (MlnsError, OSError, UnicodeDecodeError, csv.Error):
            return []
        rows = [{k: _num(v) for k, v in r.items() if k in STEP_COLUMNS} for r in rows]
        return [r for r in rows if isinstance(r.get("step"), int) and isinstance(r.get("epoch"), int)]

    @property
    def steps_path(self) -> Path:
        return self.path / "steps.csv"

    def write_steps(self, rows: list[dict]) -> None:
        atomic_write(self.file("steps.csv"), csv_text(rows, STEP_COLUMNS))

    def write_metrics(self, rows: list[dict]) -> None:
        cols = METRIC_COLUMNS + sorted({k for r in rows for k in r} - set(METRIC_COLUMNS))
        atomic_write(self.file("metrics.csv"), csv_text(rows, cols))

    @property
    def checkpoint_path(self) -> Path:
        return self.path / "checkpoint.pt"

    def save_checkpoint(self, state: dict) -> None:
        atomic_torch_save(state, self.file("checkpoint.pt"))

    def load_checkpoint(self) -> dict | None:
        """The last epoch's checkpoint, or None if the run stopped before finishing one. Its structure
        is checked here; whether it fits the model and optimizer, where the learner loads it."""
        if not self.checkpoint_path.exists():
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
        with atomic_path(self.file(self.weights_path(ema).name)) as tmp:
            save_file(sd, str(tmp))

    def write_curves(self, rows: list[dict]) -> None:
        from .plots import plot_curves
        plot_curves(rows, self.file("curves.png"), title=self.name, steps=self.steps())


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
    """What is wrong with a loaded checkpoint's structure, if anything. Whether its model and EMA
    dicts fit the model and its optimizer state the optimizer is checked where they are loaded."""
    if not isinstance(ckpt, dict):
        return "not a dict"
    for key, typ in (("epoch", int), ("model", dict), ("opt", dict), ("rng_torch", torch.Tensor)):
        if key not in ckpt:
            return f"missing {key!r}"
        if not isinstance(ckpt[key], typ) or isinstance(ckpt[key], bool):
            return f"{key!r} is {type(ckpt[key]).__name__}, expected {typ.__name__}"
    if not 0 <= ckpt["epoch"] < 100_000:
        return f"epoch {ckpt['epoch']} out of range"
    if "hypers" in ckpt["opt"]:  # fastai Adam's layout, written before the switch to torch's fused AdamW
        return "its optimizer state is from fastai's Adam, which this version no longer uses; train it again"
    if not {"state", "param_groups"} <= set(ckpt["opt"]):
        return "bad optimizer state"
    rng, ref = ckpt["rng_torch"], torch.get_rng_state()
    if rng.dtype != ref.dtype or rng.shape != ref.shape:
        return f"'rng_torch' is a {rng.dtype} tensor of shape {tuple(rng.shape)}, expected {ref.dtype} {tuple(ref.shape)}"
    for key in ("model", "ema"):
        if key in ckpt and not (isinstance(ckpt[key], dict) and all(isinstance(v, torch.Tensor) for v in ckpt[key].values())):
            return f"{key!r} is not a dict of tensors"
    if type(ckpt.get("ema_updates", 0)) is not int or ckpt.get("ema_updates", 0) < 0:
        return "'ema_updates' is not a count"
    sl = ckpt.get("smooth_loss")
    if sl is not None and not (isinstance(sl, dict) and type(sl.get("count")) is int and _is_num(sl.get("val"))):
        return "'smooth_loss' is not {count, val}"
    return None


def state_dict_problem(sd: dict, module: torch.nn.Module) -> str | None:
    """How a state dict fails to fit `module` (missing / unexpected keys, other shapes), if it does."""
    own = module.state_dict()
    missing, extra = sorted(set(own) - set(sd)), sorted(set(sd) - set(own))
    if missing or extra:
        return f"{len(missing)} key(s) missing (e.g. {missing[:1]}), {len(extra)} unexpected (e.g. {extra[:1]})"
    bad = [k for k in own if tuple(own[k].shape) != tuple(sd[k].shape)]
    return f"{bad[0]} has shape {tuple(sd[bad[0]].shape)}, the model's is {tuple(own[bad[0]].shape)}" if bad else None


def _is_num(v) -> bool:
    if isinstance(v, torch.Tensor):
        return v.numel() == 1 and v.is_floating_point()
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _read_text(p: Path, limit: int) -> str:
    """A run file's text: a regular file of at most `limit` bytes, UTF-8; RunError naming it otherwise."""
    try:
        if not p.is_file():
            raise RunError(f"{p}: not a regular file")
        if p.stat().st_size > limit:
            raise RunError(f"{p}: {p.stat().st_size:,} bytes, over the {limit:,} a run file may hold")
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise RunError(f"{p}: not UTF-8 text") from None
    except OSError as e:
        raise RunError(f"{p}: unreadable ({e.strerror or type(e).__name__})") from None


def _read_json(p: Path, limit: int):
    """A run file's JSON, at most MAX_DEPTH levels deep (a hand-edited `[[[[...` is refused, not a
    RecursionError in the parser or in the code that walks it)."""
    return parse_bounded(json.loads, _read_text(p, limit), p, "JSON", RunError)


_TEXT_KEYS = ("name", "run", "arch", "grid", "head", "data", "study", "message", "started", "device", "precision",
              "git_commit", "config_digest")
_COUNT_KEYS = ("epochs", "epochs_done", "params", "trial", "threads")
_SCORE_KEYS = ("best_acc", "final_acc", "best_acc_ema", "final_acc_ema")


def summary_problem(s) -> str | None:
    """What is wrong with a summary.json's content, if anything: the keys the toolkit reads must have
    their types, ranges and allowed values (others are kept as they are)."""
    if not isinstance(s, dict):
        return "not a JSON object"
    if s.get("status") is not None and s["status"] not in STATUSES:
        return f"status must be one of {', '.join(STATUSES)}, got {_short(s['status'])}"
    if s.get("weights") is not None and s["weights"] not in WEIGHT_SETS:
        return f"weights must be raw or ema, got {_short(s['weights'])}"
    for key in _TEXT_KEYS:
        if s.get(key) is not None and not isinstance(s[key], str):
            return f"{key} must be text, got {_short(s[key])}"
    for key in _COUNT_KEYS + _SCORE_KEYS + ("ema", "minutes", "train_seconds"):
        v = s.get(key)
        if v is not None and not (_is_num(v) and v >= 0 and (key not in _COUNT_KEYS or isinstance(v, int))
                                  and (key not in _SCORE_KEYS or v <= 1)):
            return f"{key} must be {'a count' if key in _COUNT_KEYS else 'a number'} in range, got {_short(v)}"
    t = s.get("temperature")
    if t is not None and not (isinstance(t, dict) and set(t) <= set(WEIGHT_SETS)
                              and all(_is_num(v) and 0.01 <= v <= 100 for v in t.values())):
        return f"temperature must map raw / ema to a number in [0.01, 100], got {_short(t)}"
    return None


def _metrics_problem(row: dict, i: int) -> str | None:
    """What is wrong with metrics.csv's i-th row (epochs are 0, 1, 2... in order; values numbers)."""
    if row.get("epoch") != i or type(row.get("epoch")) is not int:
        return f"epoch must be {i}, got {_short(row.get('epoch'))}"
    if None in row:
        return "more fields than the header names"
    bad = [k for k, v in row.items() if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)))]
    return f"{_short(bad[0])} is not a number" if bad else None


def _short(v) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


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
    if which == "best":  # runs from before `weights` was recorded, or without a summary: EMA
        which = (run.summary().get("weights") if (run.path / "summary.json").exists() else None) or "ema"
    if which == "ema" and not run.weights_path(True).is_file():
        which = "raw"
    if run.weights_path(which == "ema").is_file():
        return which
    raise RunError(f"{run.path}: no weights (the run is partial: status "
                   f"{run.status()}); finish or resume it first")


def finished_weights(run: RunDir, which: str = "best") -> Path:
    """The weights file a finished run serves for `which` (see `weights_set`)."""
    return run.weights_path(weights_set(run, which) == "ema")
