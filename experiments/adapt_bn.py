"""Test-time BatchNorm re-estimation (AdaBN) on each battery set: does a shifted set read better when the
network's BatchNorm statistics are recomputed on that set's own images?

    python experiments/adapt_bn.py RUN [RUN ...] [--weights raw] [--plain-tta]

For each run and each set (the demo valid split, the battery's 14 shifted sets, the demo test split),
the network is read twice the way `mlns-fast robustness RUN --raw` reads it (raw weights, shift TTA):
as trained, and after every BatchNorm layer's running mean and variance were reset and re-estimated
over that set's images (one pass, cumulative average, no labels). Unsupervised and label-free, but
it needs a whole set of images from one source at once, which `predict` on a few files does not have.
Written here because neither fastai nor timm re-estimates BatchNorm on unlabelled test data.
Prints one row per set and run, then each set's mean change.
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mlns_fast.data.demo import demo_split  # noqa: E402
from mlns_fast.errors import MlnsError  # noqa: E402
from mlns_fast.reading import batches, load_trained, predict_arrays  # noqa: E402
from mlns_fast.robustness import battery  # noqa: E402
from mlns_fast.runs import DEFAULT_RUNS_DIR, resolve_run  # noqa: E402


@torch.no_grad()
def adapted(model: torch.nn.Module, images, bs: int = 256) -> torch.nn.Module:
    """A copy of `model` whose BatchNorm statistics are those of `images` (uint8 (N, H, W))."""
    m = copy.deepcopy(model)
    norms = [b for b in m.modules() if isinstance(b, torch.nn.modules.batchnorm._BatchNorm)]
    for b in norms:
        b.reset_running_stats()
        b.momentum = None  # cumulative average over the pass
        b.train()
    for x in batches(images, bs):
        m(torch.from_numpy(x))
    for b in norms:
        b.eval()
    return m


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", help="run folders or names")
    p.add_argument("--weights", default="raw", help="best | raw | ema (default raw, as the battery rows)")
    p.add_argument("--plain-tta", action="store_true", help="read without shift TTA")
    p.add_argument("--runs-dir", default=DEFAULT_RUNS_DIR)
    a = p.parse_args()
    torch.set_num_threads(2)
    try:
        runs = [resolve_run(r, a.runs_dir) for r in a.runs]
        sets = {"valid": demo_split("valid"), **battery()}
        deltas: dict[str, list[float]] = {}
        print("| run | set | as trained | BatchNorm re-estimated on the set | change |\n|---|---|---|---|---|")
        for run in runs:
            cfg, model = load_trained(run, a.weights, tta=not a.plain_tta)
            for name, samples in sets.items():
                s = samples.at_size(cfg.size)
                before = float((predict_arrays(model, s.images)["sum"] == s.sums).mean())
                after = float((predict_arrays(adapted(model, s.images), s.images)["sum"] == s.sums).mean())
                deltas.setdefault(name, []).append(after - before)
                print(f"| {run.name} | {name} | {before:.4f} | {after:.4f} | {after - before:+.4f} |", flush=True)
    except MlnsError as e:
        p.exit(2, f"error: {e}\n")
    print("\n| set | mean change |\n|---|---|")
    for name, d in deltas.items():
        print(f"| {name} | {sum(d) / len(d):+.4f} |")


if __name__ == "__main__":
    main()
