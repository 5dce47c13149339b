"""Two processes on the CPU (gloo), launched like `accelerate launch` / torchrun would."""
import json
import os

import pytest
import socket
import subprocess
import sys

from .conftest import flag_args, tiny_flags


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_training_writes_one_complete_run(tmp_path, tiny_data):
    args = flag_args(tiny_flags(tiny_data, epochs=2, bs=8))
    runs = tmp_path / "runs"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "mlns_fast", "train", "--quiet", "--name", "ddp",
           "--runs-dir", str(runs), *args]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    folders = list(runs.iterdir())
    assert len(folders) == 1, folders  # only rank 0 writes
    summary = json.loads((folders[0] / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["epochs_done"] == 2
    rows = (folders[0] / "metrics.csv").read_text().splitlines()
    assert len(rows) == 3  # header + one row per epoch, written once (by rank 0)
    for acc in (summary["final_acc"], summary["final_acc_ema"]):  # a share of the 48 valid images (not sharded)
        assert float(acc * 48) == pytest.approx(round(acc * 48), abs=1e-6)
    assert (folders[0] / "model_ema.safetensors").is_file()
    assert out.stdout.count("valid sum accuracy") == 1  # one report line, from rank 0
