"""Why the real images' sums add so little: what a trained digit reader makes of them.

    python experiments/real_sums.py --run zoom --run previous-s0

The demo stand-in's real splits are rendered, so their digits are known here (a user's real data
has sums only): that lets this script say, for a run's reader,
  * its per-digit accuracy on the real training images against the synthetic images it trained on
    and the held-out real splits: do the real images carry writers the reader has not learned?
  * the share of real training images whose reading is *sum-consistent* (the four read digits add
    up to the label), and how many of those are still wrong digits: a sum label cannot correct them;
  * the gradient the exact sum marginal gives the digit logits (its mean size against the one a
    synthetic image's digit labels give), and, on the real images it reads wrong, against the one the
    true digit labels would give (cosine, size ratio): how much of what a sum says points at the
    right digits.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mlns_fast.data.demo import demo_split  # noqa: E402
from mlns_fast.data.render import create_renderer, render_samples  # noqa: E402
from mlns_fast.losses import sum_log_probs_from_digits  # noqa: E402
from mlns_fast.reading import load_trained, predict_outputs  # noqa: E402
from mlns_fast.runs import resolve_run  # noqa: E402


def digit_acc(out: torch.Tensor, digits: np.ndarray) -> float:
    return float((out.argmax(-1).numpy() == digits).mean())


def gradients(out: torch.Tensor, sums: np.ndarray, digits: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image, d(-log P(sum)) / d logits and d(mean digit CE) / d logits, each (N, 40)."""
    z = out.detach().clone().requires_grad_(True)
    nll = -sum_log_probs_from_digits(z).gather(1, torch.from_numpy(sums)[:, None]).sum()
    g_sum, = torch.autograd.grad(nll, z)
    z = out.detach().clone().requires_grad_(True)
    ce = F.cross_entropy(z.flatten(0, 1), torch.from_numpy(digits).flatten(), reduction="none").view(len(z), -1)
    g_dig, = torch.autograd.grad(ce.mean(1).sum(), z)
    return g_sum.flatten(1), g_dig.flatten(1)


def report(run_ref: str, runs_dir: str, n: int) -> None:
    rd = resolve_run(run_ref, runs_dir)
    cfg, model = load_trained(rd, "raw")
    if cfg.model.head != "digits":
        sys.exit(f"{run_ref}: a sum head has no digits to read")
    real = demo_split("train", cfg.size, with_digits=True)
    idx = np.random.default_rng(0).permutation(len(real))[:n]
    images, sums, digits = real.images[idx], real.sums[idx], real.digits[idx]
    synth = render_samples(create_renderer(cfg.render, cfg.train.seed + 1, cfg.data.bank), n)
    with torch.no_grad():
        out = predict_outputs(model, images)
        out_syn = predict_outputs(model, synth.images)
        held = {s: demo_split(s, cfg.size, with_digits=True) for s in ("valid", "test")}
        held_acc = {s: digit_acc(predict_outputs(model, h.images), h.digits) for s, h in held.items()}
    read = out.argmax(-1).numpy()
    right = (read == digits).all(1)
    consistent = read.sum(1) == sums
    g_sum, g_dig = gradients(out, sums, digits)
    g_syn = gradients(out_syn, synth.sums, synth.digits)[1]  # what a synthetic image's digit labels give
    nll = float(-sum_log_probs_from_digits(out).gather(1, torch.from_numpy(sums)[:, None]).mean())
    wrong = ~right
    cos = F.cosine_similarity(g_sum[wrong], g_dig[wrong], dim=1) if wrong.any() else torch.tensor([float("nan")])
    ratio = (g_sum[wrong].norm(dim=1) / g_dig[wrong].norm(dim=1).clamp_min(1e-12)) if wrong.any() else cos
    print(f"\n{run_ref} ({rd.path.name}, raw weights; {n} real training images, {n} synthetic of its own layout)")
    print(f"  digit accuracy: real train {digit_acc(out, digits):.4f}, synthetic {digit_acc(out_syn, synth.digits):.4f}, "
          f"real valid {held_acc['valid']:.4f}, real test (reserved glyphs) {held_acc['test']:.4f}")
    print(f"  real train images read entirely right {right.mean():.4f}; sum-consistent {consistent.mean():.4f}; "
          f"sum-consistent but wrong digits {(consistent & wrong).mean():.4f} "
          f"({(consistent & wrong).sum()} of {wrong.sum()} wrong readings: the sum cannot correct them)")
    print(f"  sum NLL on real training images {nll:.4f}; gradient on the logits per image, mean norm: real (sum "
          f"marginal) {g_sum.norm(dim=1).mean():.4f}, synthetic (digit labels) {g_syn.norm(dim=1).mean():.4f}")
    print(f"  on the {wrong.sum()} wrongly read: cosine(sum-NLL gradient, digit-CE gradient) mean {cos.mean():.3f}, "
          f"median {cos.median():.3f}; |sum gradient| / |digit gradient| median {ratio.median():.3f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", action="append", required=True, help="a run (folder or name) with a digits head")
    ap.add_argument("--runs-dir", default="experiments/runs")
    ap.add_argument("-n", type=int, default=4000, help="real training images (and as many synthetic) to read")
    a = ap.parse_args()
    torch.set_num_threads(2)
    for ref in a.run:
        report(ref, a.runs_dir, a.n)


if __name__ == "__main__":
    main()
