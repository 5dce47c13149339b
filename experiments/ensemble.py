"""Several finished runs read together: do their errors differ enough for an average to fix them?

    python experiments/ensemble.py RUN RUN [RUN ...] [--weights raw] [--out ensemble.json]

Each run is read the way `mlns-fast robustness RUN --raw` reads it (raw weights, shift TTA, its own
input size) on the demo valid split, the battery's 14 shifted sets and the demo test split. Every
subset of the runs is then read as one: the mean of their per-digit log-probabilities (a digits
head; the sum's for a sum head), the rule shift TTA already uses across shifted copies. Prints one
row per subset and, per subset size, the mean over all subsets of that size: how accuracy grows
with the number of models averaged. Reads only; trains nothing. Written here because neither fastai
nor timm averages separately trained Learners' readings over a set (timm's ensembles are of
architectures inside one model).
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mlns_fast.data.demo import demo_split  # noqa: E402
from mlns_fast.errors import ConfigError, MlnsError  # noqa: E402
from mlns_fast.files import atomic_write  # noqa: E402
from mlns_fast.losses import mean_log_probs, sum_accuracy  # noqa: E402
from mlns_fast.reading import load_trained, predict_outputs  # noqa: E402
from mlns_fast.robustness import battery  # noqa: E402
from mlns_fast.runs import DEFAULT_RUNS_DIR, resolve_run  # noqa: E402


def combine(outputs: list[torch.Tensor]) -> torch.Tensor:
    """The mean log-probabilities of several networks' outputs for the same images: (N, 4, 10) digit
    or (N, 37) sum outputs, all of one kind (a digits head and a sum head cannot be averaged per digit)."""
    shapes = {tuple(o.shape) for o in outputs}
    if len(shapes) != 1:
        raise ConfigError(f"runs read differently (outputs {sorted(shapes)}): average runs of one head only")
    return mean_log_probs(outputs)


def by_size(rows: dict[tuple[int, ...], dict[str, float]]) -> dict[int, dict[str, float]]:
    """Per subset size, each set's accuracy averaged over every subset of that size."""
    out: dict[int, dict[str, float]] = {}
    for k in sorted({len(c) for c in rows}):
        group = [r for c, r in rows.items() if len(c) == k]
        out[k] = {s: sum(r[s] for r in group) / len(group) for s in group[0]}
    return out


def shifted_mean(row: dict[str, float]) -> float:
    """The mean over the battery's shifted sets (neither demo split)."""
    shifted = [v for s, v in row.items() if s not in ("valid", "demo-test")]
    return sum(shifted) / len(shifted)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", help="two or more run folders or names")
    p.add_argument("--weights", default="raw", help="best | raw | ema (default raw, as the battery rows)")
    p.add_argument("--runs-dir", default=DEFAULT_RUNS_DIR)
    p.add_argument("--out", default="", help="also write every subset's row here (JSON)")
    a = p.parse_args()
    if len(a.runs) < 2:
        p.exit(2, "error: give two or more runs to average\n")
    if a.out and not Path(a.out).parent.is_dir():
        p.exit(2, f"error: --out: folder {Path(a.out).parent} does not exist\n")
    torch.set_num_threads(2)
    try:
        runs = [resolve_run(r, a.runs_dir) for r in a.runs]
        sets = {"valid": demo_split("valid"), **battery()}
        outs = []
        for run in runs:
            cfg, model = load_trained(run, a.weights, tta=True)
            outs.append({n: predict_outputs(model, s.at_size(cfg.size).images) for n, s in sets.items()})
            print(f"read {run.name}", file=sys.stderr, flush=True)
        rows = {}
        for k in range(1, len(runs) + 1):
            for c in itertools.combinations(range(len(runs)), k):
                rows[c] = {n: float(sum_accuracy(combine([outs[i][n] for i in c]), torch.from_numpy(s.sums)))
                           for n, s in sets.items()}
    except MlnsError as e:
        p.exit(2, f"error: {e}\n")
    names = list(sets)
    head = "| runs | " + " | ".join(names) + " | 14 shifted sets |"
    print(head + "\n" + "|---" * (len(names) + 2) + "|")
    for c, r in rows.items():
        label = " + ".join(a.runs[i] for i in c)  # as given: shorter than the folder names
        print(f"| {label} | " + " | ".join(f"{r[n]:.4f}" for n in names) + f" | {shifted_mean(r):.4f} |")
    print("\nmean over every subset of a size:\n\n" + head.replace("| runs |", "| models |") + "\n"
          + "|---" * (len(names) + 2) + "|")
    for k, r in by_size(rows).items():
        print(f"| {k} | " + " | ".join(f"{r[n]:.4f}" for n in names) + f" | {shifted_mean(r):.4f} |")
    if a.out:
        atomic_write(a.out, json.dumps({"runs": [r.name for r in runs], "weights": a.weights,
                                           "subsets": [{"runs": [runs[i].name for i in c], **r}
                                                       for c, r in rows.items()]}, indent=1) + "\n")


if __name__ == "__main__":
    main()
