"""The robustness battery: a run scored on fixed test sets that differ from the demo the way real data does.

Every set is rendered from handwriting no run ever trains on: MNIST's *reserved* digits, scikit-learn's
`load_digits` (other writers, 8x8 scans; evaluation-only by this project's rule) or OpenCV's fonts.
Sets are deterministic (fixed seeds), built once and cached. The battery is a test: never train or
tune on its exact settings.

    layout  tight, loose, small, large, vertical, slant   (the battery's base layout, one range pushed out)
    style   thick, thin, blur, lowres, noise, contrast    (base layout, the strokes or the image changed)
    writer  sklearn-digits, fonts                         (base layout, other glyphs)
    demo    demo-test                                     (the demo test split)
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, replace
from functools import lru_cache

import cv2
import numpy as np

from .config import HANDWRITTEN, LAYOUTS, RenderConfig, spec_dict
from .data.cache import cache_root, touch
from .data.demo import demo_split
from .data.mnist import Bank
from .data.render import RENDER_VERSION, create_renderer, render_samples
from .data.sources import Samples, load_npz, save_npz
from .errors import ConfigError
from .evaluation import results_dir, score
from .files import atomic_write
from .heap import keep_large_blocks
from .reading import load_trained
from .runs import DEFAULT_TTA, reading_label, weights_set

log = logging.getLogger(__name__)
N_IMAGES = 1000  # per set: a sum accuracy within about +-1.4 points (95 %) at 90 %
# The battery's own base layout, frozen here (the first demo's `course` layout: ink boxes, clean strokes)
# so that its sets stay the same when the demo stand-in changes; each set pushes one range out of it.
BASE = RenderConfig(glyph_height=(0.5, 0.95), aspect=(0.85, 1.2), rotation=(-10.0, 10.0), shear=(-0.2, 0.2),
                    stroke=(0, 1), elastic=0.0, gap=(-0.3, 1.3), blur_p=0.0, noise_p=0.0, contrast=(1.0, 1.0),
                    coherence=0.0, crowded=0.0, rescan=0.0, crowded_clean=False, **HANDWRITTEN)


@dataclass(frozen=True)
class ShiftSet:
    """One test set of the battery: a layout, a glyph source and an optional image transform."""
    name: str
    group: str
    render: RenderConfig  # its `glyphs` picks handwriting or fonts
    bank: str = "reserved"  # handwriting from: reserved (MNIST's reserved digits) | sklearn (load_digits)
    transform: str = ""  # "" | lowres
    seed: int = 0


BATTERY = [
    ShiftSet("tight", "layout", LAYOUTS["tight"], seed=2001),
    ShiftSet("loose", "layout", replace(BASE, glyph_height=(0.45, 0.65), gap=(1.2, 2.5)), seed=2002),
    ShiftSet("small", "layout", replace(BASE, glyph_height=(0.3, 0.45)), seed=2003),
    ShiftSet("large", "layout", replace(BASE, glyph_height=(0.95, 1.0), aspect=(1.0, 1.4)), seed=2004),
    ShiftSet("vertical", "layout", replace(BASE, glyph_height=(0.4, 0.6), vjitter=1.0), seed=2005),
    ShiftSet("slant", "layout", replace(BASE, rotation=(-25.0, 25.0), shear=(-0.5, 0.5)), seed=2006),
    ShiftSet("thick", "style", replace(BASE, stroke=(2, 3)), seed=2007),
    ShiftSet("thin", "style", replace(BASE, stroke=(-2, -1)), seed=2008),
    ShiftSet("blur", "style", replace(BASE, blur_p=1.0, blur_sigma=(1.2, 1.8)), seed=2009),
    ShiftSet("lowres", "style", BASE, transform="lowres", seed=2010),
    ShiftSet("noise", "style", replace(BASE, noise_p=1.0, noise_std=(20.0, 35.0)), seed=2011),
    ShiftSet("contrast", "style", replace(BASE, contrast=(0.25, 0.45)), seed=2012),
    ShiftSet("sklearn-digits", "writer", BASE, bank="sklearn", seed=2013),
    ShiftSet("fonts", "writer", replace(BASE, glyphs="fonts"), seed=2014),
]
NAMES = [s.name for s in BATTERY] + ["demo-test"]
GROUPS = {s.name: s.group for s in BATTERY} | {"demo-test": "demo"}


@lru_cache(maxsize=1)
def sklearn_bank() -> Bank:
    """scikit-learn's 1,797 digits (other writers, 8x8, 0..16), as 28x28 glyphs. Evaluation only."""
    from sklearn.datasets import load_digits
    d = load_digits()
    glyphs = np.stack([cv2.resize((im * (255 / 16)).astype(np.uint8), (20, 20), interpolation=cv2.INTER_CUBIC)
                       for im in d.images])
    images = np.zeros((len(glyphs), 28, 28), np.uint8)
    images[:, 4:24, 4:24] = glyphs  # MNIST-like: a 20x20 digit in a 28x28 box
    return Bank(images, d.target.astype(np.int64), np.arange(len(glyphs)), "sklearn:load_digits")


def _lowres(images: np.ndarray) -> np.ndarray:
    """Down to 40 % then back up: the blocky look of a low-resolution scan."""
    h, w = images.shape[1:]
    small = [cv2.resize(im, (int(w * 0.4), int(h * 0.4)), interpolation=cv2.INTER_AREA) for im in images]
    return np.stack([cv2.resize(im, (w, h), interpolation=cv2.INTER_LINEAR) for im in small])


def render_set(spec: ShiftSet, n: int | None = None) -> Samples:
    """Render one set of the battery (deterministic): N_IMAGES images unless told."""
    n = n or N_IMAGES
    bank = sklearn_bank() if spec.bank == "sklearn" else ""
    s = render_samples(create_renderer(spec.render, spec.seed, bank, pool="reserved"), n,
                       source=f"battery:{spec.name}")
    if spec.transform == "lowres":
        s.images = _lowres(s.images)
    return s


def _version() -> str:
    spec = json.dumps([[{**asdict(s), "render": spec_dict(s.render)} for s in BATTERY], N_IMAGES, RENDER_VERSION],
                      sort_keys=True, default=str)
    return hashlib.sha1(spec.encode()).hexdigest()[:10]


def battery(names: list[str] | None = None) -> dict[str, Samples]:
    """The battery's sets by name, rendered on first use and cached beside the demo set."""
    root = cache_root() / f"battery-{_version()}"
    touch(root)
    out = {}
    for spec in BATTERY:
        if names and spec.name not in names:
            continue
        path = root / f"{spec.name}.npz"
        if path.is_file():
            out[spec.name] = load_npz(path)
            out[spec.name].source = f"battery:{spec.name}"
        else:
            log.info("rendering robustness set %s", spec.name)
            out[spec.name] = render_set(spec)
            save_npz(out[spec.name], path)
    if not names or "demo-test" in names:
        out["demo-test"] = demo_split("test", with_digits=True)
    return out


def robustness(run, which: str = "best", names: list[str] | None = None, tta: bool = DEFAULT_TTA) -> dict:
    """Score a run on the battery: per set n, sum accuracy, digit accuracy, calibration error; written
    to RUN/robustness/<weights>/result.json with a chart (robustness.png). With `names`, only those
    sets are scored and merged by set name into the results already there (the chart shows all)."""
    unknown = sorted(set(names or []) - set(NAMES))
    if unknown:
        raise ConfigError(f"--set: unknown set {unknown[0]!r} (known: {', '.join(NAMES)})")
    keep_large_blocks()  # a bad $MLNS_FAST_HEAP_KEEP is refused before the results folder is made
    weights = reading_label(weights_set(run, which), tta)
    out_dir = results_dir(run, "robustness", weights, "robustness")
    cfg, model = load_trained(run, which, tta)
    rows = [{"set": name, "group": GROUPS[name], **score(model, samples.at_size(cfg.size))[0]}
            for name, samples in battery(names).items()]
    if names:
        rows = merge_sets(earlier_sets(out_dir / "result.json"), rows)
    result = {"run": run.name, "weights": weights, "tta": tta, "sets": rows,
              "worst": min(rows, key=lambda r: r["sum_accuracy"])["set"]}
    from .plots import plot_robustness
    result["files"] = [str(plot_robustness(rows, out_dir / "robustness.png", f"{run.name} ({reading(result)})"))]
    atomic_write(out_dir / "result.json", json.dumps(result, indent=2) + "\n")
    from .tracking import log_results  # into the run's MLflow run, where it was tracked
    figures = {f"{r['set']}/{k}": r[k] for r in rows for k in ("sum_accuracy", "digit_accuracy", "ece") if k in r}
    figures["mean/sum_accuracy"] = sum(r["sum_accuracy"] for r in rows) / len(rows)
    log_results(run, f"robustness/{weights}", figures, [out_dir / "result.json", *result["files"]])
    return result


def earlier_sets(path) -> list[dict]:
    """The per-set rows of an earlier result.json, read as user input: rows that are not a known set
    with a numeric sum accuracy are dropped, and an unreadable file counts as none (with a note)."""
    try:
        sets = json.loads(path.read_text()).get("sets")
    except FileNotFoundError:
        return []
    except (OSError, ValueError, AttributeError, RecursionError):
        log.info("%s: unreadable; writing the new sets alone", path)
        return []
    ok = lambda r: (isinstance(r, dict) and r.get("set") in NAMES and isinstance(r.get("sum_accuracy"), (int, float))
                    and not isinstance(r.get("sum_accuracy"), bool))
    return [{**r, "group": GROUPS[r["set"]]} for r in sets if ok(r)] if isinstance(sets, list) else []


def merge_sets(old: list[dict], new: list[dict]) -> list[dict]:
    """Rows by set name, the new ones replacing the old, in the battery's order."""
    by_name = {r["set"]: r for r in old} | {r["set"]: r for r in new}
    return [by_name[n] for n in NAMES if n in by_name]


def reading(result: dict) -> str:
    """How a battery result was read, for titles: `raw weights, TTA` (its folder: `raw-tta`)."""
    weights = str(result.get("weights", "?"))
    tta = result.get("tta") is True or weights.endswith("-tta")
    return f"{weights.removesuffix('-tta')} weights{', TTA' if tta else ''}"


def render_table(result: dict) -> str:
    """The battery's figures as a terminal table."""
    import io
    from rich.console import Console
    from rich.table import Table
    t = Table(title=f"{result['run']}: robustness ({reading(result)})")
    for c in ("set", "group", "n", "sum acc", "digit acc", "ECE"):
        t.add_column(c, justify="left" if c in ("set", "group") else "right")
    for r in result["sets"]:
        t.add_row(r["set"], r["group"], str(r.get("n", "-")), f"{r['sum_accuracy']:.4f}",
                  *(f"{r[k]:.4f}" if isinstance(r.get(k), (int, float)) else "-" for k in ("digit_accuracy", "ece")))
    console = Console(record=True, file=io.StringIO(), width=100)
    console.print(t)
    return console.export_text()
