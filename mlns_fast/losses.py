"""Losses, the exact sum distribution of the digits head, predictions and metrics.

The digits head learns from two kinds of label in one batch:
  * digits known (synthetic): cross-entropy per position;
  * only the sum known (real): -log P(sum), where P(sum) is the exact distribution of the sum of
    four independent digits, i.e. the four per-position softmaxes convolved (in log space).
"""
from __future__ import annotations

from functools import partial

import numpy as np
import torch
import torch.nn.functional as F


def _log_conv(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Log of the convolution of two distributions given as log-probs: (B, m), (B, n) -> (B, m + n - 1)."""
    n = b.shape[1]
    terms = a.unsqueeze(1) + b.unsqueeze(2)  # (B, n, m): term[k, i] = a_i + b_k, lands at sum i + k
    shifted = [F.pad(terms[:, k], (k, n - 1 - k), value=float("-inf")) for k in range(n)]  # each (B, m + n - 1)
    return torch.logsumexp(torch.stack(shifted, 1), dim=1)


def sum_log_probs_from_digits(logits: torch.Tensor) -> torch.Tensor:
    """(B, P, 10) digit logits -> (B, 9P + 1) log-probabilities of the sum, stable for any logits."""
    logp = F.log_softmax(logits.float(), dim=-1)
    out = logp[:, 0]
    for pos in range(1, logp.shape[1]):
        out = _log_conv(out, logp[:, pos])
    return out


def sum_log_probs(out: torch.Tensor) -> torch.Tensor:
    """Either head's output -> (B, 37) log-probabilities of the sum."""
    if out.ndim == 3:
        return sum_log_probs_from_digits(out)
    return F.log_softmax(out.float(), dim=-1)


def mean_log_probs(outputs: list[torch.Tensor]) -> torch.Tensor:
    """Several readings of the same images read as one: the mean of their log-probabilities, per digit
    ((N, 4, 10) digit logits) or per sum ((N, 37)). Shift TTA averages its shifted copies this way and
    experiments/ensemble.py its runs; the result is read like logits (argmax, `sum_log_probs`)."""
    return torch.stack([o.float().log_softmax(-1) for o in outputs]).mean(0)


def sum_loss(out, sums, digits=None, known=None, label_smoothing: float = 0.0):
    """`sum` head: cross-entropy over the 37 sums (label-smoothed by `label_smoothing`). out (B, 37), sums (B,)."""
    return F.cross_entropy(out.float(), sums, label_smoothing=label_smoothing)


def smoothed_nll(log_probs: torch.Tensor, target: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """Per-item NLL against the target mixed with the uniform distribution: (1 - eps) * -log p[y]
    + eps * mean_k -log p[k], torch's `label_smoothing` definition, for log-probs that come from the
    sum marginal rather than from logits. log_probs (B, K), target (B,) -> (B,)."""
    nll = -log_probs.gather(1, target[:, None]).squeeze(1)
    return nll if not eps else (1 - eps) * nll - eps * log_probs.mean(1)


def digit_loss(out, sums, digits, known, digit_weight: float = 1.0, sum_weight: float = 1.0,
               label_smoothing: float = 0.0):
    """`digits` head: per-digit CE where digits are known, sum-marginal NLL where only the sum is;
    both label-smoothed by `label_smoothing` (digits over 10 classes, sums over 37).

    out (B, 4, 10), sums (B,), digits (B, 4), known (B,) bool. Each item contributes one term;
    the batch mean is taken over all items so the two kinds weigh by their share of the batch.
    """
    B, P, _ = out.shape
    ce = F.cross_entropy(out.float().flatten(0, 1), digits.flatten(), reduction="none",
                         label_smoothing=label_smoothing).view(B, P).mean(1)  # (B,)
    nll = smoothed_nll(sum_log_probs_from_digits(out), sums, label_smoothing)  # (B,)
    # both terms for every item, the applicable one picked per item: `if known.any()` or indexing
    # with the mask would read it on the host, a device sync every batch
    return torch.where(known.bool(), digit_weight * ce, sum_weight * nll).mean()


def column_targets(xs: torch.Tensor, spans: torch.Tensor, digits: torch.Tensor) -> torch.Tensor:
    """Which digits' boxes cover each feature-map column: xs (B, w) the input x each column's centre reads,
    spans (B, 4, 2) each digit's [x0, x1) in pixels, digits (B, 4) -> (B, w, 10) multi-hot (0 where no box)."""
    inside = (xs[:, :, None] >= spans[:, None, :, 0]) & (xs[:, :, None] < spans[:, None, :, 1])  # (B, w, 4)
    onehot = F.one_hot(digits, 10).float()  # (B, 4, 10)
    return torch.einsum("bwk,bkc->bwc", inside.float(), onehot).clamp_max(1.0)


def box_loss(cols: torch.Tensor, xs: torch.Tensor, spans: torch.Tensor, digits: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of `cols` (B, w, 10) logits against `column_targets`, summed over the 10 classes
    (a column's multi-label term, as large as one digit's cross-entropy) and averaged over the columns and
    the items whose spans are known (the renderer's; real images have -1); 0 if none."""
    known = (spans[:, :, 1] > 0).all(1).float()  # (B,)
    bce = F.binary_cross_entropy_with_logits(cols.float(), column_targets(xs.float(), spans, digits),
                                             reduction="none").sum(2).mean(1)  # (B,)
    return (bce * known).sum() / known.sum().clamp_min(1.0)  # no host sync: never reads `known` back


def make_loss(head: str, digit_weight: float = 1.0, sum_weight: float = 1.0, label_smoothing: float = 0.0):
    """The loss function of a head."""
    if head == "sum":
        return partial(sum_loss, label_smoothing=label_smoothing) if label_smoothing else sum_loss
    return partial(digit_loss, digit_weight=digit_weight, sum_weight=sum_weight, label_smoothing=label_smoothing)


def sum_accuracy(out, sums, *_):
    """Fraction of images whose predicted sum is right (fastai metric signature)."""
    return (sum_log_probs(out).argmax(1) == sums).float().mean()


def acc(out, sums, *_):
    """The training metric, named as its metrics.csv column: sum accuracy."""
    return sum_accuracy(out, sums)


def digit_accuracy(out, sums, digits, known):
    """Per-digit accuracy over the images whose digits are known (NaN if none, or a sum head)."""
    known = known.bool()
    if out.ndim != 3 or not known.any():
        return torch.tensor(float("nan"))
    return (out[known].argmax(-1) == digits[known]).float().mean()


def fit_temperature(out: torch.Tensor, sums: torch.Tensor) -> float:
    """Temperature scaling (Guo et al. 2017): the T > 0 that minimises the sum NLL of `out / T` on
    held-out outputs (either head), found by scipy's bounded scalar search over log T."""
    from scipy.optimize import minimize_scalar
    out = out.detach().float()

    def nll(log_t: float) -> float:
        return float(-sum_log_probs(out / float(np.exp(log_t))).gather(1, sums[:, None]).mean())

    res = minimize_scalar(nll, bounds=(-3.0, 3.0), method="bounded", options={"xatol": 1e-3})
    return float(np.exp(res.x))
