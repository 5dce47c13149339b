"""What a run's wrong digits on battery sets are: misreadings, a slot reading its neighbour, or order.

    python experiments/set_errors.py RUN [--set tight --set sklearn-digits] [--weights raw]

Per set: digit accuracy, wrong digits per position, images by number of wrong digits, the leading
true -> predicted confusions, how many wrong readings equal a neighbour's true digit (a slot pooling
its neighbour's ink; by chance about 15 %: 1.5 neighbours on average, 1 in 9 wrong digits each), and
how many wrong images hold the right digits in another order (the sum then stays right); and the
error rate by how much of a glyph's box its neighbours' boxes cover (the set drawn again with its
boxes: the renderer is deterministic, so the images are the set's own, checked).

    python experiments/set_errors.py RUN --set tight --set thin --tta --ceiling-epochs 90

`--ceiling-epochs N` trains `ceiling.py`'s isolated-digit classifier (N passes) and reads each set's glyphs
alone with it: its error beside the reader's in every coverage bin, and how many of the reader's wrong
digits the classifier reads right alone (the layout's cost) or wrong too (the glyph's). `--context-epochs N`
trains the same classifier on glyphs cut out of whole training rows by their boxes (`ceiling.py --context`:
neighbours' ink included, the box known) and reads each set's glyphs cut from its rows: the in-row ceiling,
what digit labels and the true box get where the overlap lies over a glyph, beside the reader in every bin.
`--beside RUN` (repeatable) reads other runs the same way and puts their wrong digits beside the reader's:
how many of its errors another seed of the same recipe shares (two readers' shared errors against a
classifier's). `--tta` reads the runs through shift TTA, as `mlns-fast robustness` does by default
(without it: the plain network).
"""
from __future__ import annotations

import argparse
import collections
import importlib.util
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mlns_fast.data.render import create_renderer  # noqa: E402
from mlns_fast.errors import MlnsError  # noqa: E402
from mlns_fast.reading import load_trained, predict_outputs  # noqa: E402
from mlns_fast.robustness import BATTERY, N_IMAGES, battery, sklearn_bank  # noqa: E402
from mlns_fast.runs import DEFAULT_RUNS_DIR, resolve_run  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run")
    p.add_argument("--set", action="append", default=[], choices=[s.name for s in BATTERY])
    p.add_argument("--weights", default="raw", choices=["raw", "ema", "best"])
    p.add_argument("--runs-dir", default=DEFAULT_RUNS_DIR)
    p.add_argument("--tta", action="store_true", help="read through shift TTA (robustness's default reading)")
    p.add_argument("--ceiling-epochs", type=int, default=0,
                   help="train the isolated-digit classifier this many passes and put its error beside the reader's")
    p.add_argument("--context-epochs", type=int, default=0,
                   help="train the in-row classifier (glyphs cut from training rows) this many passes and put its "
                        "error on the sets' cut glyphs beside the reader's")
    p.add_argument("--beside", action="append", default=[], metavar="RUN",
                   help="another run, read the same way, whose wrong digits to put beside the reader's (repeatable)")
    a = p.parse_args()
    for flag in ("ceiling_epochs", "context_epochs"):
        if getattr(a, flag) < 0:
            p.exit(2, f"error: --{flag.replace('_', '-')} must be >= 0; got {getattr(a, flag)}\n")
    try:
        model, *others = (load_trained(resolve_run(r, a.runs_dir), a.weights, tta=a.tta)[1].eval()
                          for r in [a.run, *a.beside])
    except MlnsError as e:
        p.exit(2, f"error: {e}\n")
    names = a.set or ["tight", "sklearn-digits"]
    ceiling = _ceiling_script() if a.ceiling_epochs or a.context_epochs else None
    net = ceiling.train_classifier(a.ceiling_epochs) if a.ceiling_epochs else None
    row_net = ceiling.train_classifier(a.context_epochs, context=True) if a.context_epochs else None
    for name, s in battery(names).items():
        if name not in names:
            continue
        pred, true = predict_outputs(model, s.images).argmax(-1).numpy(), s.digits
        wrong = pred != true
        neighbour = np.zeros_like(wrong)
        for k in range(true.shape[1]):
            for j in (k - 1, k + 1):
                if 0 <= j < true.shape[1]:
                    neighbour[:, k] |= pred[:, k] == true[:, j]
        order_only = wrong.any(1) & (np.sort(pred, 1) == np.sort(true, 1)).all(1)
        pairs = collections.Counter(zip(true[wrong].tolist(), pred[wrong].tolist()))
        print(f"{name}: digit accuracy {1 - wrong.mean():.4f}; wrong digits {wrong.sum()} "
              f"(per position {wrong.sum(0).tolist()}); images with 0-4 wrong {np.bincount(wrong.sum(1), minlength=5).tolist()}")
        print(f"  a neighbour's true digit: {(wrong & neighbour).sum()} of {wrong.sum()}; "
              f"right digits in another order: {order_only.sum()} images")
        print("  leading confusions (true -> predicted: count): "
              + ", ".join(f"{t}->{q}: {n}" for (t, q), n in pairs.most_common(8)))
        beside = {}  # other readings' wrong digits on the same glyphs: other runs', the classifiers'
        for run, other in zip(a.beside, others):
            miss = beside[run] = predict_outputs(other, s.images).argmax(-1).numpy() != true
            print(f"  {run}: {shared(wrong, miss)}")
        if ceiling is not None and name != "demo-test" and len(s.images) == N_IMAGES:
            spec = next(x for x in BATTERY if x.name == name)
            drawn = ceiling.set_glyphs(spec)
            for label, clf, view in (("alone", net, "isolated"), ("in-row", row_net, "cut")):
                glyphs, labels = drawn[view]
                if clf is None or not np.array_equal(labels.reshape(true.shape), true):  # same glyphs, same order
                    continue
                miss = beside[label] = ceiling.glyph_predictions(clf, glyphs).reshape(true.shape) != true
                what = ("the isolated-digit classifier, each glyph alone" if view == "isolated" else
                        "the in-row classifier, each glyph's box cut from its row")
                print(f"  {what}: {shared(wrong, miss)}")
        cover = covered(name, s.images) if name != "demo-test" else None
        if cover is not None:
            print("  error by the share of a glyph's box its neighbours cover: "
                  + ", ".join(by_cover(wrong, cover, beside.pop("alone", None), others=beside)))


def shared(wrong: np.ndarray, miss: np.ndarray) -> str:
    """Another reading's wrong digits (`miss`) against the reader's (`wrong`), on the same glyphs."""
    return (f"digit accuracy {1 - miss.mean():.4f}; of the reader's {wrong.sum()} wrong digits it reads "
            f"{(wrong & ~miss).sum()} right and {(wrong & miss).sum()} wrong too; "
            f"the reader reads {(~wrong & miss).sum()} of its {miss.sum()} wrong right")


def by_cover(wrong: np.ndarray, cover: np.ndarray, alone: np.ndarray | None = None,
             bins=(0, 0.2, 0.4, 0.6, 0.8, np.inf), others: dict[str, np.ndarray] | None = None) -> list[str]:
    """`wrong`'s rate in each bin of `cover` (with `alone`'s beside it: the isolated classifier's on the
    same glyphs, then each of `others`' by its name: another run's, the in-row classifier's), one
    "lo-hi: rate / alone rate / NAME rate (n=...)" cell per non-empty bin."""
    beside = {"alone": alone, **(others or {})}
    cells = []
    for lo, hi in zip(bins, bins[1:]):
        m = (cover >= lo) & (cover < hi)
        if m.any():
            rates = "".join(f" / {k} {v[m].mean():.3f}" for k, v in beside.items() if v is not None)
            cells.append(f"{lo:.1f}-{hi:.1f}: {wrong[m].mean():.3f}{rates} (n={m.sum()})")
    return cells


def _ceiling_script():
    """experiments/ceiling.py as a module (a script beside this one, not a package)."""
    spec = importlib.util.spec_from_file_location("ceiling", Path(__file__).with_name("ceiling.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def covered(name: str, images: np.ndarray) -> np.ndarray | None:
    """(N, 4) share of each glyph's box width that its neighbours' boxes overlap; None where the set
    cannot be drawn again identically (a transformed set)."""
    spec = next(x for x in BATTERY if x.name == name)
    if spec.transform:
        return None
    r = create_renderer(spec.render, spec.seed, sklearn_bank() if spec.bank == "sklearn" else "", pool="reserved")
    drawn = [r(i) for i in range(len(images))]
    if not all(np.array_equal(d.image, im) for d, im in zip(drawn, images)):
        return None
    x0, x1 = (np.stack([d.boxes[:, k] for d in drawn]) for k in (0, 2))
    cover = np.zeros(x0.shape)
    cover[:, 1:] += np.clip(x1[:, :-1] - x0[:, 1:], 0, None)  # the left neighbour's box reaching in
    cover[:, :-1] += np.clip(x1[:, :-1] - x0[:, 1:], 0, None)  # the right one's
    return cover / np.maximum(x1 - x0, 1)


if __name__ == "__main__":
    main()
