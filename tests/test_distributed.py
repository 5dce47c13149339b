"""Two processes on the CPU (gloo), launched like `accelerate launch` / torchrun would."""
import json
import os
import socket
import subprocess
import sys

import pytest

from mlns_fast.config import resolve_config
from mlns_fast.data.loaders import build_dataloaders

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


def test_two_processes_with_a_minus_one_pool_render_it_once_and_train(tmp_path, tiny_data):
    """`--synth-pool -1` under a real two-process launch: the ranks wait on one lock, one renders the pool
    (sized by both ranks' draws), the other reads it, and the run finishes."""
    args = flag_args(tiny_flags(tiny_data, epochs=2, bs=8, synth_pool=-1))
    runs, cache = tmp_path / "runs", tmp_path / "cache"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "MLNS_FAST_CACHE": str(cache)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "mlns_fast", "train", "--quiet", "--name", "ddp-pool",
           "--runs-dir", str(runs), *args]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stderr.count("rendering a synthetic pool") == 1, out.stderr[-3000:]  # one rank built it
    pools = [p for p in cache.iterdir() if p.name.startswith("pool-")]
    assert len(pools) == 1, sorted(p.name for p in cache.iterdir())
    n = int(out.stderr.split("rendering a synthetic pool of ")[1].split()[0])
    flags = tiny_flags(tiny_data, epochs=2, bs=8, synth_pool=-1)
    sized = build_dataloaders(resolve_config(**flags), rank=0, world=2).train.dataset.pool  # in one process
    assert n == len(sized) > 0  # both ranks' draws over the run, as the in-process sizing says
    summary = json.loads((next(runs.iterdir()) / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["epochs_done"] == 2


def _ema_sync_rank(rank: int, init: str, out: str) -> None:
    """One of two real gloo processes: an EMA whose BatchNorm statistics differ by rank, then `sync_ranks`."""
    import torch
    import torch.distributed as dist
    from timm.utils import ModelEmaV3
    from mlns_fast.callbacks import EMACallback
    os.environ.update(WORLD_SIZE="2", RANK=str(rank))  # what the launcher sets, and what fastai reads
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    torch.manual_seed(0)  # the same weights on both ranks, as DDP keeps them
    cb = EMACallback(0.9)
    cb.model_ema = ModelEmaV3(torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3), torch.nn.BatchNorm2d(3)), decay=0.9)
    bn = cb.model_ema.module[1]
    bn.running_mean.fill_(float(rank))
    bn.running_var.fill_(1.0 + 2.0 * rank)
    weight = cb.model_ema.module[0].weight.detach().clone()
    cb.sync_ranks()
    torch.save({"mean": bn.running_mean, "var": bn.running_var,
                "weight_kept": bool(torch.equal(weight, cb.model_ema.module[0].weight))}, f"{out}/{rank}.pt")
    dist.destroy_process_group()


def test_the_ema_of_every_rank_validates_with_the_mean_batchnorm_statistics(tmp_path):
    """Without SyncBatchNorm (the CPU), each rank's EMA averages in its own BN buffers; before the EMA is
    validated (and rank 0 saves it) the ranks' statistics become their mean, the weights untouched."""
    import torch
    import torch.multiprocessing as mp
    mp.spawn(_ema_sync_rank, args=(f"file://{tmp_path / 'store'}", str(tmp_path)), nprocs=2, join=True)
    got = [torch.load(tmp_path / f"{r}.pt") for r in (0, 1)]
    for g in got:
        assert torch.equal(g["mean"], torch.full((3,), 0.5)) and torch.equal(g["var"], torch.full((3,), 2.0))
        assert g["weight_kept"]
