"""Screen a suite's runs on a short-lived machine: train each, then score it on the battery and the
demo test, inside one time budget, one JSON line per run as soon as it is scored.

    python experiments/screen.py experiments/round3.toml --out OUT/screen.jsonl --budget 540 --workers 14 \
        [--only queries-s0 --only crowded50-s0 ...]   # these runs, in this order (default: the file's)

Made for a lent GPU (a lease of minutes, where `mlns-fast suite` would train everything before any
run is scored): a run that would start with under `--min-left` seconds left is skipped, each command
runs under the budget that is left, and what finished is on disk whatever happens after. `--workers`
only sets the loader (not part of a run's digest). Rows: `name, seconds (training wall), valid,
test, rob_<set>...`.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mlns_fast.config import write_toml  # noqa: E402
from mlns_fast.errors import MlnsError  # noqa: E402
from mlns_fast.suite import load_suite  # noqa: E402

CLI = [sys.executable, "-m", "mlns_fast"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("suite")
    p.add_argument("--out", required=True, help="JSON lines, one per scored run")
    p.add_argument("--runs-dir", default="experiments/runs")
    p.add_argument("--budget", type=float, default=540.0, help="seconds for everything")
    p.add_argument("--min-left", type=float, default=60.0, help="start no run with less left")
    p.add_argument("--workers", type=int, default=-1)
    p.add_argument("--set", action="append", default=[], help="battery set, repeatable (default: all)")
    p.add_argument("--only", action="append", default=[], help="run name (NAME-sSEED), repeatable, in order")
    a = p.parse_args()
    t0 = time.time()
    try:
        cfgs = {c.name: c for c in load_suite(a.suite)}
    except MlnsError as e:
        p.exit(2, f"error: {e}\n")
    names = a.only or list(cfgs)
    missing = [n for n in names if n not in cfgs]
    if missing:
        p.exit(2, f"error: {a.suite} has no run {missing[0]!r} (runs: {', '.join(cfgs)})\n")
    if not Path(a.out).resolve().parent.is_dir():
        p.exit(2, f"error: --out: folder {Path(a.out).parent} does not exist\n")
    left = lambda: a.budget - (time.time() - t0)  # noqa: E731
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            if left() < a.min_left:
                print(f"=== skip {name}: {left():.0f} s left", flush=True)
                continue
            toml = Path(tmp) / f"{name}.toml"
            toml.write_text(write_toml(cfgs[name]))
            print(f"=== {name} ({left():.0f} s left)", flush=True)
            t = time.time()
            try:
                rc = subprocess.run([*CLI, "train", "--quiet", "--config", str(toml), "--workers", str(a.workers),
                                     "--runs-dir", a.runs_dir], timeout=max(left(), 1)).returncode
            except subprocess.TimeoutExpired:
                rc = "timeout"
            row = {"name": name, "train_rc": rc, "seconds": round(time.time() - t, 1)}
            sets = [x for s in a.set for x in ("--set", s)]
            if rc == 0:
                for cmd, key in ((["robustness", name, "--raw", *sets], "battery"), (["evaluate", name], "test")):
                    try:
                        r = subprocess.run([*CLI, *cmd, "--json", "--runs-dir", a.runs_dir], capture_output=True,
                                           text=True, timeout=max(left(), 1))
                        row[key] = json.loads(r.stdout) if r.returncode == 0 else f"rc {r.returncode}: {r.stderr[-300:]}"
                    except (subprocess.TimeoutExpired, json.JSONDecodeError) as e:
                        row[key] = f"{type(e).__name__}"
            with open(a.out, "a") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps(row)[:2000], flush=True)


if __name__ == "__main__":
    main()
