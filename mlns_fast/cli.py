"""`mlns-fast`: a thin typer layer. Each command parses, calls one library function, prints.

User errors (MlnsError, bad options) end with one line on stderr and exit code 2.
"""
from __future__ import annotations

import inspect
import json
import os
import sys
from dataclasses import fields
from pathlib import Path
from typing import List, Optional, get_type_hints

import typer
from rich.markup import escape as _esc  # help texts are rich markup: `[defaults]` would vanish unescaped

try:  # typer >= 0.22 vendors click as typer._click; older typer uses click itself
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover
    from click import exceptions as click_exceptions

from .config import FLAG_SECTIONS, HANDWRITTEN, LAYOUTS, SECTIONS, RenderConfig, resolve_config
from .errors import ConfigError, MlnsError, one_line
from .logs import configure_logging
from .runs import DEFAULT_RUNS_DIR, DEFAULT_TTA

# rich_markup_mode=None: help texts are plain text, so `[defaults]` or `[[run]]` are shown, not eaten as markup
app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="fastai + timm rapid experiments for four-digit handwritten sums (40x168, label 0..36).")
data_app = typer.Typer(no_args_is_help=True,
                       help="Demo data, pre-rendered synthetic sets, preview grids.")
app.add_typer(data_app, name="data")

RUNS_DIR = typer.Option(DEFAULT_RUNS_DIR, "--runs-dir", help="folder of run folders")
WEIGHTS_FROM = typer.Option("best", "--weights-from",
                            help="best (the set that scored better on validation at the end of the run) | raw | ema")
RAW = typer.Option(False, "--raw", help="shorthand for --weights-from raw")


def _render_option(name: str):
    """A data command's option for a `[render]` field: its flag and help as `train` has them; not given,
    the --layout's own (train: the training default, course / tight: handwriting)."""
    f = next(f for f in fields(RenderConfig) if f.name == name)
    return typer.Option(None, "--" + name.replace("_", "-"), help=f.metadata["help"],
                        show_default=f"the --layout's: train {f.default}, course / tight {HANDWRITTEN[name]}")


GLYPHS_OPTION, FACES_OPTION = _render_option("glyphs"), _render_option("faces")
TTA = typer.Option(DEFAULT_TTA, "--tta/--no-tta", help="shift test-time augmentation: the image and 4 copies shifted by "
                   "2 px, their per-digit log-probabilities averaged (5x the compute; --no-tta: the plain network)")


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version
        try:
            typer.echo(f"mlns-fast {version('mlns-fast')}")
        except PackageNotFoundError:  # a source tree that was never installed
            typer.echo("mlns-fast (not installed)")
        raise typer.Exit()


@app.callback()
def _root(show_version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                           help="print the version and exit")):
    """fastai + timm rapid experiments for four-digit handwritten sums (40x168, label 0..36)."""


def _which(weights_from: str, raw: bool) -> str:
    return "raw" if raw else weights_from
EXIT_INTERRUPTED, EXIT_DIVERGED = 130, 3
WIDE = 5000  # `compare --wide`: every column at its natural width (the lines are not padded)


def _config_parameters() -> list[inspect.Parameter]:
    """One keyword parameter (a CLI flag) per field of the data / model / train config sections."""
    params = []
    for name, section in FLAG_SECTIONS.items():
        f = next(f for f in fields(SECTIONS[section]) if f.name == name)
        typ = get_type_hints(SECTIONS[section])[name]
        flag = "--" + name.replace("_", "-")
        decls = [f"{flag}/--no-{flag[2:]}"] if typ is bool else [flag]
        annotation = Optional[List[str]] if typ is tuple else Optional[typ]
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation,
                                        default=typer.Option(None, *decls, help=_esc(f.metadata["help"]),
                                                             show_default=_shown_default(f.default, flag),
                                                             rich_help_panel=f"{section} options")))
    return params


def _shown_default(value, flag: str) -> str | bool:
    """The config field's default as `--help` shows it: the flags default to None (not given, so a
    config file can set the value), and the value that applies then is the dataclass field's."""
    if value in ((), ""):
        return False  # the help text says what an empty value means (demo data, no file)
    if isinstance(value, bool):
        return flag if value else f"--no-{flag[2:]}"
    return str(value)


def config_options(func):
    """Give `func` a flag per config field (see `_config_parameters`); they arrive in **flags."""
    sig = inspect.signature(func)
    keep = [p for p in sig.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    func.__signature__ = sig.replace(parameters=keep + _config_parameters())
    return func


def _png_out(out: Path, flag: str = "--out") -> Path:
    """A figure's --out: a file name in a place that can be written (checked before any work)."""
    from .outputs import check_output
    return check_output(out, flag)


def _resolve(config: Optional[Path], name: Optional[str], flags: dict):
    flags = {k: tuple(v) if isinstance(v, list) else v for k, v in flags.items()}
    return resolve_config(str(config) if config else None, name=name, **flags)


@app.command()
@config_options
def train(config: Optional[Path] = typer.Option(None, "--config", help="TOML experiment file (CLI flags beat it)"),
          name: Optional[str] = typer.Option(None, "--name", help="run name (folder suffix)"),
          resume: Optional[str] = typer.Option(None, "--resume", help="continue an interrupted run (path, name or latest)"),
          runs_dir: str = RUNS_DIR,
          quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bars or epoch table (= --progress none)"),
          progress: Optional[str] = typer.Option(None, "--progress", show_default="bar on a terminal, else table",
                                                 help="bar (fastai's bars and epoch table) | table (the epoch table "
                                                      "only) | none"),
          print_config: bool = typer.Option(False, "--print-config",
                                            help="print the resolved config as TOML and exit (nothing is trained)"),
          **flags):
    """Train a model (default: the recommended recipe on the embedded demo data)."""
    from .training import PROGRESS, train as run_train
    if progress is not None and progress not in PROGRESS:
        raise ConfigError(f"--progress must be one of {', '.join(PROGRESS)}; got {progress!r}")
    if resume and (config or name or any(v not in (None, []) for v in flags.values())):
        raise ConfigError("--resume takes the run's own config; drop the other options")
    cfg = None if resume else _resolve(config, name, flags)
    if print_config:
        from .config import write_toml
        from .runs import resolve_run
        typer.echo(write_toml(resolve_run(resume, runs_dir).config() if resume else cfg).rstrip("\n"))
        return
    summary = run_train(cfg, runs_dir, quiet=quiet, resume=resume, progress=progress)
    if int(os.environ.get("RANK", 0)) > 0:
        return  # in a distributed launch, rank 0 reports
    run_path = Path(runs_dir) / summary["run"]
    if summary["status"] == "interrupted":
        typer.echo(f"interrupted ({summary.get('message')}); resume with: mlns-fast train --resume {run_path}", err=True)
        raise typer.Exit(EXIT_INTERRUPTED)
    if summary["status"] == "diverged":
        kept = "last good checkpoint kept in" if (run_path / "checkpoint.pt").is_file() else "no checkpoint was written in"
        typer.echo(f"diverged: {summary.get('message')}; {kept} {run_path}", err=True)
        raise typer.Exit(EXIT_DIVERGED)
    acc, acc_ema = summary.get("final_acc"), summary.get("final_acc_ema")
    typer.echo(f"{run_path}: valid sum accuracy {acc:.4f} raw" + (f", {acc_ema:.4f} EMA" if acc_ema is not None else "")
               + f" in {summary['minutes']:.1f} min")


@app.command("lr-find")
@config_options
def lr_find(config: Optional[Path] = typer.Option(None, "--config", help="TOML experiment file"),
            out: Optional[Path] = typer.Option(None, "--out", show_default="RUNS_DIR/lr_find.png",
                                               help="plot PNG (the curve goes beside it as .csv)"),
            num_it: int = typer.Option(100, "--num-it", help="mini-batches to try"),
            warmup: int = typer.Option(0, "--warmup", help="optimizer steps at lr/10 before the sweep (this task's "
                                                           "loss sits on a plateau at first: try 200)"),
            quiet: bool = typer.Option(False, "--quiet", "-q"),
            runs_dir: str = RUNS_DIR,
            **flags):
    """fastai's learning-rate finder on the same data and model options as train."""
    from .training import lr_find as run_lr_find
    if num_it < 20:
        raise ConfigError(f"--num-it must be >= 20 (fastai's suggestions skip the first and last points), got {num_it}")
    if not 0 <= warmup <= 100_000:
        raise ConfigError(f"--warmup must be in [0, 100000], got {warmup}")
    out = out or Path(runs_dir) / "lr_find.png"  # never into the repository's tracked figures
    res = run_lr_find(_resolve(config, None, flags), _png_out(out), quiet=quiet, num_it=num_it, runs_dir=runs_dir,
                      warmup=warmup)
    warnings = res.pop("warnings")
    for k, v in res.items():
        typer.echo(f"{k:>8}: {v:.2e}")
    for w in warnings:
        typer.echo(f"warning: {w}", err=True)
    typer.echo(f"plot: {out}")


def _eval_samples(real, images, labels, npz, folder, layout, size: tuple[int, int]):
    """The labelled images evaluate reads at the run's input `size`: `--real` (the formats train takes;
    repeatable, concatenated), its older spellings --images/--labels, --npz, --dir, or a rendered
    --layout; None: the demo test split."""
    from .data.sources import load_npy_pair, load_sources
    chosen = [x for x in (real, images or labels, npz, folder, layout) if x]
    if len(chosen) > 1:
        raise ConfigError("give one of --real, --images/--labels, --npz, --dir, --layout")
    if images or labels:
        if not (images and labels):
            raise ConfigError("--images and --labels go together (or --real IMAGES.npy:LABELS.npy)")
        return load_npy_pair(images, labels, size)
    if real or npz or folder:
        return load_sources(real or [str(npz or folder)], size)
    if layout:
        from .evaluation import rendered_test_set
        return rendered_test_set(layout, size)
    return None


@app.command()
def evaluate(run: str = typer.Argument(..., help="run folder, name, or latest"),
             real: Optional[List[str]] = typer.Option(None, "--real", help="labelled test images: IMAGES.npy:LABELS.npy, "
                                                      "FILE.npz or DIR (as train's --real; repeatable); default: "
                                                      "the demo test split"),
             images: Optional[Path] = typer.Option(None, "--images", help="IMAGES.npy (with --labels; = --real IMAGES.npy:LABELS.npy)"),
             labels: Optional[Path] = typer.Option(None, "--labels", help="LABELS.npy"),
             npz: Optional[Path] = typer.Option(None, "--npz", help=_esc(".npz with images, labels[, digits] (= --real FILE.npz)")),
             folder: Optional[Path] = typer.Option(None, "--dir", help="folder of images + labels.csv (= --real DIR)"),
             layout: Optional[str] = typer.Option(None, "--layout", help="render a test set from reserved digits with this layout (course, tight, train)"),
             weights_from: str = WEIGHTS_FROM,
             raw: bool = RAW,
             tta: bool = TTA,
             as_json: bool = typer.Option(False, "--json", help="one JSON object on stdout"),
             runs_dir: str = RUNS_DIR):
    """Sum accuracy of a run (default data: the demo test split, reserved digits) + confusion and mistakes PNGs."""
    from .evaluation import evaluate as run_evaluate
    from .runs import resolve_run
    r = resolve_run(run, runs_dir)
    res = run_evaluate(r, _eval_samples(real, images, labels, npz, folder, layout, r.config().size),
                       _which(weights_from, raw), tta)
    if as_json:
        typer.echo(json.dumps(res))
        return
    typer.echo(f"{res['run']} on {res['data']} ({res['weights']} weights{', TTA' if tta else ''}, n={res['n']}): "
               f"sum accuracy {res['sum_accuracy']:.4f}"
               + (f", digit accuracy {res['digit_accuracy']:.4f}" if "digit_accuracy" in res else "")
               + f"; ECE {res['ece']:.4f} at temperature {res['temperature']:.3g}")
    for f in res["files"]:
        typer.echo(f"  {f}")


@app.command()
def robustness(run: str = typer.Argument(..., help="run folder, name, or latest"),
               sets: Optional[List[str]] = typer.Option(None, "--set", help="only these sets (repeatable), added to "
                                                          "the run's earlier battery results; default: all"),
               weights_from: str = WEIGHTS_FROM,
               raw: bool = RAW,
               tta: bool = TTA,
               as_json: bool = typer.Option(False, "--json", help="one JSON object on stdout"),
               runs_dir: str = RUNS_DIR):
    """Score a run on the robustness battery: layout, style and writer shifts, all from unseen handwriting."""
    from .robustness import render_table, robustness as run_robustness
    from .runs import resolve_run
    res = run_robustness(resolve_run(run, runs_dir), _which(weights_from, raw), list(sets or []), tta)
    if as_json:
        typer.echo(json.dumps(res))
        return
    typer.echo(render_table(res).rstrip("\n"))
    typer.echo(f"worst: {res['worst']}; chart: {res['files'][0]}")


@app.command()
def predict(run: str = typer.Argument(..., help="run folder, name, or latest"),
            inputs: List[Path] = typer.Argument(..., help="PNG/JPG files or .npy stacks"),
            as_json: bool = typer.Option(False, "--json", help="one JSON object per line"),
            weights_from: str = WEIGHTS_FROM,
            raw: bool = RAW,
            tta: bool = TTA,
            backend: str = typer.Option("torch", "--backend", help="torch | onnx (exports once, then onnxruntime)"),
            runs_dir: str = RUNS_DIR):
    """Predict the sum (and digits) of images with a trained run."""
    from .evaluation import predict as run_predict
    from .runs import resolve_run
    rows = run_predict(resolve_run(run, runs_dir), [str(p) for p in inputs], _which(weights_from, raw), tta, backend)
    if as_json:
        for row in rows:
            typer.echo(json.dumps(row))
        return
    from rich.console import Console
    from rich.table import Table
    table = Table("input", "sum", "digits", "confidence")
    for row in rows:
        table.add_row(row["input"], str(row["sum"]), "".join(map(str, row["digits"] or [])) or "-",
                      f"{row['confidence']:.3f}")
    Console().print(table)


@app.command()
def compare(sort: Optional[str] = typer.Option(None, "--sort", help="column to sort by (numbers: high first)"),
            top: Optional[int] = typer.Option(None, "--top", help="show only the first N rows"),
            filter: Optional[List[str]] = typer.Option(None, "--filter", help="COLUMN=VALUE (repeatable, all must hold)"),
            columns: Optional[str] = typer.Option(None, "--columns", help="these columns, comma-separated (any summary "
                                                  "figure or config field: lr,bs,wd,mix,seed,real,test_acc,rob_mean...)"),
            group_by: Optional[str] = typer.Option(None, "--group-by", help="FIELD[,FIELD]: mean +- std and n of the "
                                                   "finished runs per group; auto = every differing setting but seed"),
            baseline: Optional[str] = typer.Option(None, "--baseline", help="COLUMN=VALUE[,...]: the group every other "
                                                   "group is set against run for run (same seed, device and "
                                                   "precision): mean +- std of the differences (e.g. render.nib=0; "
                                                   "groups by --group-by, else every differing setting but seed "
                                                   "and machine)"),
            only_changed: bool = typer.Option(False, "--only-changed", help="hide columns equal in every row"),
            wide: bool = typer.Option(False, "--wide", help="every column (default table: those that matter or differ)"),
            fmt: str = typer.Option("table", "--format", help="table | md | csv | json"),
            plot: Optional[Path] = typer.Option(None, "--plot", help="PNG of the selected runs' accuracy curves"),
            runs_dirs: List[str] = typer.Option([DEFAULT_RUNS_DIR], "--runs-dir",
                                                help="folder of run folders (repeatable: all are listed)")):
    """Table of runs: the settings that differ, validation, test and robustness accuracy, minutes, status."""
    from . import comparison as cmp
    if plot:
        _png_out(plot, "--plot")
    rows = cmp.select_rows(runs_dirs, sort=sort, top=top, filters=filter or [])
    if group_by or baseline:
        by = None if group_by in (None, "auto") else cmp.parse_columns(group_by, rows, "--group-by")
        shown, width = cmp.group_figures(columns), WIDE if wide else None
        if baseline:
            groups, keys, figures, base = cmp.paired_rows(rows, cmp.parse_baseline(baseline), by)
            text = cmp.format_paired(groups, keys, figures, base, fmt, width=width, shown=shown)
        else:
            groups, keys, figures = cmp.group_rows(rows, by)
            text = cmp.format_groups(groups, keys, figures, fmt, width=width, shown=shown)
        typer.echo(text.rstrip("\n"))
        return
    cols = cmp.parse_columns(columns, rows)
    if cols is None and only_changed:
        cols = cmp.changed_columns(rows, cmp.wide_columns())
    elif cols is None and fmt == "table" and not wide:
        cols = cmp.default_columns(rows)
    elif cols is None and fmt in ("table", "md"):
        cols = cmp.wide_columns()
    typer.echo(cmp.format_rows(rows, fmt, cols, width=WIDE if wide else None).rstrip("\n"))
    if plot:
        typer.echo(f"plot: {cmp.plot(rows, None, plot)}", err=fmt in ("json", "csv"))


@app.command()
def export(run: str = typer.Argument(..., help="run folder, name, or latest"),
           fmt: str = typer.Option("onnx", "--format", help="onnx | torchscript"),
           out: Optional[Path] = typer.Option(None, "--out", help="output file (default: in the run folder)"),
           weights_from: str = WEIGHTS_FROM,
           raw: bool = RAW,
           tta: bool = typer.Option(DEFAULT_TTA, "--tta/--no-tta", help="the shift TTA graph, model_ema.tta.onnx (5 "
                                    "shifted copies, 5x the compute; what predict reads) | the plain network, model_ema.onnx"),
           runs_dir: str = RUNS_DIR):
    """Export a run's network (its best weights by default) for use outside the toolkit."""
    from .export import export as run_export
    from .runs import resolve_run
    typer.echo(run_export(resolve_run(run, runs_dir), fmt, out, _which(weights_from, raw), tta))


@app.command()
def suite(file: Path = typer.Argument(..., help=_esc("suite TOML: [defaults] and [[run]] tables of overrides")),
          runs_dir: str = RUNS_DIR,
          dry_run: bool = typer.Option(False, "--dry-run", help="list what would run"),
          progress: str = typer.Option("none", "--progress", help="each run's output, as train's --progress: "
                                                                    "bar | table | none")):
    """Run every experiment of a suite file (skipping finished identical ones), then print the comparison."""
    from .suite import run_suite
    from .training import PROGRESS
    if progress not in PROGRESS:
        raise ConfigError(f"--progress must be one of {', '.join(PROGRESS)}; got {progress!r}")
    run_suite(file, runs_dir, dry_run=dry_run, quiet=progress == "none", echo=typer.echo, progress=progress)


@app.command()
def report(suites: List[Path] = typer.Argument(..., help="suite TOML files, one section each"),
           out: Optional[Path] = typer.Option(None, "--out", show_default="RUNS_DIR/report/RESULTS.md",
                                              help="markdown file to write (its figures go to figures/ beside it)"),
           intro: Optional[Path] = typer.Option(None, "--intro", help="markdown placed before the tables"),
           runs_dir: str = RUNS_DIR):
    """Write a results report: per suite, the comparison table of its finished runs and their curves."""
    from .report import write_report
    if intro and not intro.is_file():
        raise ConfigError(f"{intro}: intro file not found")
    out = out or Path(runs_dir) / "report" / "RESULTS.md"  # never over the repository's tracked RESULTS.md
    typer.echo(write_report(suites, runs_dir, out, intro.read_text() if intro else ""))


@app.command()
def sweep(file: Path = typer.Argument(..., help=_esc("sweep TOML: [defaults], [space], [study]")),
          trials: int = typer.Option(20, "--trials", help="trials the study should hold; a rerun resumes up to it"),
          workers: int = typer.Option(1, "--workers", help="worker processes here, at most one per CPU core (the CPU threads are split between them)"),
          storage: Optional[str] = typer.Option(None, "--storage", help="journal file, or database URL (postgresql://, mysql://, sqlite:///); default: RUNS_DIR/sweeps/STUDY/journal.log"),
          timeout: Optional[float] = typer.Option(None, "--timeout", help="seconds (finite, > 0) after which no new trial starts"),
          dry_run: bool = typer.Option(False, "--dry-run", help="print the space and the first suggestions; train nothing"),
          runs_dir: str = RUNS_DIR):
    """Hyperparameter search with Optuna: every trial is a run folder; writes best.toml, trials.csv and plots."""
    from .sweep import run_sweep
    result = run_sweep(file, runs_dir, trials=trials, workers=workers, storage=storage, timeout=timeout,
                       dry_run=dry_run)
    for line in result.lines():
        typer.echo(line)
    if getattr(result, "interrupted", False):
        raise typer.Exit(EXIT_INTERRUPTED)


def _npz_out(out: Path, example: str, *beside: Path) -> None:
    """--out must be a writable .npz path (and each file written `beside` it writable too): else one error line."""
    from .outputs import check_output
    if out.suffix != ".npz":
        raise ConfigError(f"--out must end in .npz, got {out}")
    for p in (out, *beside):
        check_output(p, example=example)


@data_app.command("demo")
def data_demo(out: Path = typer.Option(..., "--out", help="folder for data0..2.npy / lab0..2.npy")):
    """Export the demo stand-in (train / valid / test) as course-format npy pairs."""
    from .data.demo import export_demo
    for p in export_demo(out):
        typer.echo(p)


@data_app.command("synth")
def data_synth(n: int = typer.Option(50_000, "--n", help="images to render"),
               out: Path = typer.Option(..., "--out", help=".npz file (images, labels, digits)"),
               layout: str = typer.Option("train", "--layout", help=f"one of {', '.join(LAYOUTS)}"),
               glyphs: Optional[str] = GLYPHS_OPTION,
               faces: Optional[str] = FACES_OPTION,
               seed: int = typer.Option(0, "--seed", help="renderer seed"),
               bank: str = typer.Option("", "--bank", help="mnist.npz or an MNIST / EMNIST IDX folder (default: embedded, training digits)")):
    """Pre-render synthetic images to an .npz (training loaders can also render on the fly)."""
    from .data.render import render_npz
    if n <= 0:
        raise ConfigError(f"--n must be > 0, got {n}")
    _npz_out(out, "synth.npz")
    seconds = render_npz(n, out, layout, glyphs, seed, bank, progress=True, faces=faces)
    typer.echo(f"{out}: {n} images in {seconds:.1f}s ({n / seconds:.0f} img/s)")


@data_app.command("harvest")
def data_harvest(run: str = typer.Argument(..., help="a run with the digits head: folder, name or latest"),
                 out: Path = typer.Option(..., "--out", help=".npz bank (mnist.npz layout) for train --bank"),
                 min_posterior: float = typer.Option(0.99, "--min-posterior",
                                                     help="keep an image's reading when its probability given the "
                                                          "image's sum is at least this"),
                 share: float = typer.Option(0.5, "--share", help="harvested glyphs make at most this share of the bank"),
                 weights_from: str = WEIGHTS_FROM, raw: bool = RAW, runs_dir: str = RUNS_DIR):
    """Cut labelled digits out of a run's real training images where its reader is sure of them; write
    its bank plus them (and a PNG of some) for train --bank."""
    from .data.harvest import harvest_bank
    from .runs import resolve_run
    _npz_out(out, "bank.npz", out.with_suffix(".png"))  # the preview PNG beside it is checked first too
    c = harvest_bank(resolve_run(run, runs_dir), out, min_posterior, share, _which(weights_from, raw))
    typer.echo(f"{out}: {c['bank']:,} bank glyphs + {c['harvested']:,} harvested (of {c['sure_glyphs']:,} from "
               f"{c['kept']:,} of {c['split_in_four']:,} real training images split in four, {c['images']:,} read); "
               f"per digit {c['per_digit']}")
    if "preview" in c:
        typer.echo(c["preview"])


@data_app.command("cache")
def data_cache(clear: Optional[str] = typer.Option(None, "--clear",
                                                  help="remove the folders of one kind: pool | demo | battery | "
                                                       "unfinished (a stopped build's, once a day old) | all")):
    """List the cache (demo set, battery, synthetic pools: size, last use) or clear part of it."""
    import time
    from .data.cache import POOL_CAP_ENV, cache_root, clear as clear_cache, entries, pool_cap_bytes
    root = cache_root()
    if clear is not None:
        gone = clear_cache(clear)
        typer.echo(f"{root}: removed {len(gone)} folder(s), {sum(e.bytes for e in gone) / 1e9:.2f} GB")
        return
    found = entries()
    pools = sum(e.bytes for e in found if e.kind == "pool")
    typer.echo(f"{root}: {sum(e.bytes for e in found) / 1e9:.2f} GB; pools {pools / 1e9:.2f} GB of "
               f"{pool_cap_bytes() / 1e9:.1f} GB (${POOL_CAP_ENV})")
    for e in found:
        typer.echo(f"  {e.kind:<10} {e.bytes / 1e9:7.2f} GB  {time.strftime('%Y-%m-%d %H:%M', time.localtime(e.used))}"
                   f"  {e.path.name}")


@data_app.command("preview")
def data_preview(source: str = typer.Option("synthetic", "--source", "--real",
                                           help="synthetic | demo | labelled images as --real takes them "
                                                "(IMAGES.npy:LABELS.npy, FILE.npz or DIR)"),
                 out: Optional[Path] = typer.Option(None, "--out", show_default="RUNS_DIR/preview.png", help="grid PNG"),
                 runs_dir: str = RUNS_DIR,
                 n: int = typer.Option(16, "--n", help="images in the grid"),
                 layout: str = typer.Option("train", "--layout", help="synthetic layout"),
                 glyphs: Optional[str] = GLYPHS_OPTION,
                 faces: Optional[str] = FACES_OPTION,
                 seed: int = typer.Option(0, "--seed"),
                 repack: bool = typer.Option(False, "--repack",
                                             help="real images re-laid out crowded, as train --repack draws them"),
                 repack_size: str = typer.Option("small", "--repack-size", help="small | any: as train --repack-size")):
    """A labelled grid PNG (sum and digits over each image)."""
    from .data.preview import preview
    if n <= 0:
        raise ConfigError(f"--n must be > 0, got {n}")
    out = out or Path(runs_dir) / "preview.png"  # never into the repository
    typer.echo(preview(source, _png_out(out), n, layout, glyphs, seed, repack, repack_size, faces))


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app; user errors -> one line on stderr, exit code 2."""
    configure_logging()
    cmd = typer.main.get_command(app)
    try:
        rv = cmd.main(args=argv, prog_name="mlns-fast", standalone_mode=False)
        return rv if isinstance(rv, int) else 0
    except MlnsError as e:
        print(f"error: {one_line(str(e))}", file=sys.stderr)
        return 2
    except typer.Exit as e:
        return e.exit_code
    except typer.Abort:
        print("aborted", file=sys.stderr)
        return 130
    except click_exceptions.NoArgsIsHelpError as e:  # bare `mlns-fast` or `mlns-fast data`: show help
        print(e.format_message())
        return 0
    except click_exceptions.ClickException as e:  # bad option, missing argument, wrong type
        print(f"error: {one_line(e.format_message())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
