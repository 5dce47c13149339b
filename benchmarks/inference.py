"""Inference speed on CPU: PyTorch eager vs ONNX Runtime, batch 1 and 256 (images/s and ms per batch).

    python benchmarks/inference.py --run latest
    python benchmarks/inference.py --arch mlns_cnn        # untrained weights: same speed
    python benchmarks/inference.py --tta                  # and the shift-TTA graph beside it (export --tta)
"""
from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import machine  # noqa: E402

from mlns_fast.config import resolve_config  # noqa: E402
from mlns_fast.export import OnnxPredictor, write_onnx  # noqa: E402
from mlns_fast.model import create_model  # noqa: E402
from mlns_fast.reading import predict_arrays, shift_tta  # noqa: E402


def timed(fn, images, bs, reps):
    fn(images[:bs])
    t0 = time.perf_counter()
    for _ in range(reps):
        fn(images[:bs])
    dt = (time.perf_counter() - t0) / reps
    return bs / dt, dt * 1000


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="mlns_cnn")
    ap.add_argument("--head", default="digits")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--tta", action="store_true",
                    help="also the shift-TTA model (5 shifted copies, as load_trained builds it), timed beside the plain one")
    a = ap.parse_args()
    cfg = resolve_config(arch=a.arch, head=a.head)
    torch.manual_seed(0)
    model = create_model(cfg.model, cfg.size).eval()
    variants = {"plain": model}
    if a.tta:  # the same weights, read through five shifted copies
        variants["tta"] = shift_tta(copy.deepcopy(model)).eval()
    images = np.random.default_rng(0).integers(0, 256, (256, 40, 168), dtype=np.uint8)
    print(f"machine: {machine()}")
    print(f"arch {a.arch}, head {a.head}")
    rates = {}
    with tempfile.TemporaryDirectory() as d:
        for kind, net in variants.items():
            onnx = OnnxPredictor(write_onnx(net, Path(d) / f"{kind}.onnx", a.head, cfg.size))
            for bs in (1, 256):
                for name, fn in (("torch eager", lambda x: predict_arrays(net, x, bs=256)),
                                 ("onnxruntime", lambda x: onnx(x, bs=256))):
                    rate, ms = timed(fn, images, bs, a.reps if bs > 1 else a.reps * 10)
                    rates[kind, name, bs] = rate
                    print(f"{kind:5s} {name:12s} batch {bs:3d}: {rate:8.0f} img/s, {ms:7.2f} ms/batch")
            t = predict_arrays(net, images)["probs"]
            print(f"{kind:5s} max |p_torch - p_onnx| = {np.abs(t - onnx(images)['probs']).max():.2e}")
    if a.tta:
        for name, bs in sorted({(n, b) for _, n, b in rates}):
            print(f"tta / plain, {name} batch {bs}: {rates['tta', name, bs] / rates['plain', name, bs]:.3f}x the rate")


if __name__ == "__main__":
    main()
