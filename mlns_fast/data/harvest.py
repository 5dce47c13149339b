"""Glyphs harvested from the real training images: each digit cut out where a trained reader is sure
of it under the image's sum, added to the handwriting bank the renderer draws from.

Why: the real images bring their writers with a sum label only, and in their own layout. A harvested
glyph carries a digit label, so the renderer can draw those writers in every layout it has, with the
per-digit supervision synthetic images get. Measured (RESULTS.md, issue 20, eighth round): for a run with
no handwriting bank (printed digits only) the harvest as its bank lifted the tight set by 17 points and
other writers by 10; beside the MNIST bank on the demo stand-in, whose real writers are MNIST's too, it
added nothing and cost valid. A tool for hands no bank has, not a default.

What is cut: only images whose ink splits at blank columns into exactly four segments (`repack.ink_segments`,
one digit each), and only where the run's digits head reads four digits that add up to the image's label
with a probability given that sum (the exact posterior: P(digits) / P(sum), both from the four softmaxes)
of at least `min_posterior`. Only the run's real *training* images are read, never its validation ones.
Hand-written: no library cuts labelled glyphs out of a text line by a reader's confidence.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from ..errors import ConfigError, DataError, ModelError
from .mnist import Bank
from .repack import _resize, ink_segments

log = logging.getLogger(__name__)

CELL, BOX = 28, 20  # MNIST's format: the digit's longer side scaled to 20 px, centred in a 28 x 28 cell


@dataclass
class Harvest:
    """Harvested glyphs (N, 28, 28) uint8 with their digits, and what it took: images read, images
    that split into four segments, images whose reading was kept."""
    images: np.ndarray
    labels: np.ndarray
    n_images: int
    n_split: int
    n_kept: int


def to_cell(crop: np.ndarray) -> np.ndarray:
    """An ink crop in MNIST's format: its longer side scaled to 20 px, centred in a 28 x 28 cell."""
    patch = _resize(crop, BOX / max(crop.shape))
    out = np.zeros((CELL, CELL), np.uint8)
    y, x = (CELL - patch.shape[0]) // 2, (CELL - patch.shape[1]) // 2
    out[y:y + patch.shape[0], x:x + patch.shape[1]] = patch
    return out


def sure_readings(logits: torch.Tensor, sums: np.ndarray, min_posterior: float) -> tuple[np.ndarray, np.ndarray]:
    """(kept mask (N,), digits (N, 4)): the digits head's argmax reading, kept where it adds up to the
    image's sum and its posterior given that sum is >= min_posterior. logits (N, 4, 10)."""
    from ..losses import sum_log_probs_from_digits
    logp = torch.log_softmax(logits.float(), -1)
    digits = logp.argmax(-1)  # (N, 4)
    joint = logp.gather(2, digits[..., None]).squeeze(2).sum(1)  # log P(this reading)
    s = torch.as_tensor(sums, dtype=torch.long)
    log_sum = sum_log_probs_from_digits(logits).gather(1, s[:, None]).squeeze(1)  # log P(the image's sum)
    posterior = (joint - log_sum).exp()
    kept = (digits.sum(1) == s) & (posterior >= min_posterior)
    return kept.numpy(), digits.numpy()


def harvest_glyphs(model: torch.nn.Module, images: np.ndarray, sums: np.ndarray,
                   min_posterior: float = 0.99, bs: int = 256) -> Harvest:
    """Cut the digits of the images a digits-head `model` reads surely (module docstring)."""
    from ..reading import predict_outputs
    segs = [ink_segments(im) for im in images]
    four = np.flatnonzero([len(s) == 4 for s in segs])
    if len(four) == 0:
        return Harvest(np.zeros((0, CELL, CELL), np.uint8), np.zeros(0, np.int64), len(images), 0, 0)
    out = predict_outputs(model, images[four], bs)
    if out.ndim != 3:
        raise ModelError("harvesting needs a run with the digits head (--head digits): a sum head reads no digits")
    kept, digits = sure_readings(out, sums[four], min_posterior)
    cells, labels = [], []
    for j in np.flatnonzero(kept):
        img = images[four[j]]
        for (x0, x1, y0, y1), d in zip(segs[four[j]], digits[j]):
            cells.append(to_cell(img[y0:y1, x0:x1]))
            labels.append(int(d))
    cells_arr = np.stack(cells) if cells else np.zeros((0, CELL, CELL), np.uint8)
    return Harvest(cells_arr, np.asarray(labels, np.int64), len(images), len(four), int(kept.sum()))


def merged_bank(bank: Bank, found: Harvest, share: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images, labels, harvested mask) of `bank` plus at most share / (1 - share) x its size of the
    harvested glyphs, drawn at random without replacement: the harvested writers are a `share` of the
    bank at most, however many glyphs a large real set yields (the renderer draws a digit's glyphs
    uniformly, so the share is what it draws)."""
    cap = int(round(share / (1 - share) * len(bank.labels)))
    take = np.random.default_rng(seed).permutation(len(found.labels))[:cap]
    take.sort()
    images = np.concatenate([bank.images, found.images[take]])
    labels = np.concatenate([bank.labels, found.labels[take]])
    mask = np.concatenate([np.zeros(len(bank.labels), bool), np.ones(len(take), bool)])
    return images, labels, mask


def harvest_bank(run, out, min_posterior: float = 0.99, share: float = 0.5, which: str = "best",
                 preview: bool = True) -> dict:
    """`data harvest`: the run's handwriting bank plus the glyphs its reader harvests from its own real
    training images (the harvest alone where the run rendered printed digits only, `--glyphs fonts`),
    written to `out` in keras' mnist.npz layout (x_train, y_train; `harvested` marks the new glyphs,
    `harvested_by` and `min_posterior` say how), ready for `train --bank out`; with `preview`, a grid
    of harvested glyphs beside it (`out` with .png). Returns the counts."""
    from ..files import atomic_path
    from ..reading import load_trained
    from .loaders import resolve_real
    from .mnist import load_bank
    if not 0 < min_posterior <= 1:
        raise ConfigError(f"--min-posterior must be in (0, 1], got {min_posterior}")
    if not 0 < share < 1:
        raise ConfigError(f"--share must be in (0, 1), got {share}")
    cfg, model = load_trained(run, which)
    if cfg.model.head != "digits":
        raise ModelError(f"{run.name}: harvesting needs a run with the digits head (this one has --head {cfg.model.head})")
    bank = load_bank(cfg.data.bank) if cfg.render.glyphs != "fonts" else None
    train, _ = resolve_real(cfg)  # the run's real training split only: its validation images are never read
    log.info("reading %d real training images with %s", len(train), run.name)
    found = harvest_glyphs(model, train.images, train.sums, min_posterior)
    images, labels, mask = _with_bank(bank, found, share, run.name)
    with atomic_path(out) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, x_train=images, y_train=labels, harvested=mask, harvested_by=np.array(run.name),
                                min_posterior=np.array(min_posterior))
    counts = {"bank": int((~mask).sum()), "harvested": int(mask.sum()), "sure_glyphs": len(found.labels),
              "images": found.n_images, "split_in_four": found.n_split, "kept": found.n_kept,
              "per_digit": np.bincount(labels[mask], minlength=10).tolist()}
    if preview and mask.any():
        from ..plots import image_grid
        idx = np.flatnonzero(mask)[np.random.default_rng(0).permutation(int(mask.sum()))[:48]]
        counts["preview"] = str(image_grid(images[idx], [str(int(labels[i])) for i in idx],
                                           Path(out).with_suffix(".png"), cols=12, cell=(0.8, 1.0),
                                           suptitle=f"harvested by {run.name} (posterior >= {min_posterior})"))
    return counts


def _with_bank(bank: Bank | None, found: Harvest, share: float, name: str):
    """`merged_bank`, or the harvest alone where there is no handwriting bank (it must then hold all ten
    digits); harvested cells resized to a user bank's own cell size where it differs."""
    if bank is None:
        missing = sorted(set(range(10)) - set(found.labels.tolist()))
        if missing:
            raise DataError(f"{name}: no sure reading gave a glyph of digit(s) {missing}, and a bank needs all ten "
                            "(lower --min-posterior, or harvest with a run that reads its real images better)")
        return found.images, found.labels, np.ones(len(found.labels), bool)
    h, w = bank.images.shape[1:]
    if found.images.shape[1:] != (h, w):
        cells = [cv2.resize(c, (w, h), interpolation=cv2.INTER_AREA) for c in found.images]
        found.images = np.stack(cells) if cells else np.zeros((0, h, w), np.uint8)
    return merged_bank(bank, found, share)
