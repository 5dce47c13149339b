"""The C heap's settings (`mlns_fast/heap.py`): where a large tensor's memory comes from, and what it
costs to get it again. Each case runs in a fresh interpreter: glibc's settings hold for the whole process."""
import json
import os
import subprocess
import sys

import pytest

from mlns_fast.heap import malloc_trim

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or malloc_trim() is None, reason="glibc only")

PROBE = r"""
import json, resource, sys
import numpy as np, torch
from mlns_fast import heap

how = sys.argv[1]
if how == "keep":
    answer = heap.keep_large_blocks()
elif how == "predict":  # the reading path every command takes
    from mlns_fast.config import IMAGE_SIZE, ModelConfig
    from mlns_fast.model import create_model
    from mlns_fast.reading import predict_outputs
    net = create_model(ModelConfig(arch="convnet4"), IMAGE_SIZE).eval()
    answer = tuple(predict_outputs(net, np.zeros((3, *IMAGE_SIZE), np.uint8)).shape)
else:
    answer = None


# 64 MiB blocks, each freed before the next: above any mmap threshold glibc adapts to. The first few
# settle where they fit between torch's small allocations; after them a freed block is reused as it is.
warm = [torch.ones(16 << 20).data_ptr() for _ in range(12)]
r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
ptrs = [torch.ones(16 << 20).data_ptr() for _ in range(4)]  # each freed before the next
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0
heap = [[int(a, 16) for a in line.split()[0].split("-")] for line in open("/proc/self/maps")
        if line.rstrip().endswith("[heap]")]
print(json.dumps({"answer": answer, "in_heap": [any(lo <= p < hi for lo, hi in heap) for p in ptrs],
                  "faults": faults}))
"""


def probe(how: str, *args: str, **env) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    p = subprocess.run([sys.executable, "-c", PROBE, how, *args], capture_output=True, text=True,
                       env={**clean, **env}, timeout=300)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_kept_large_blocks_come_from_the_heap_and_are_reused_without_faulting_again():
    """glibc maps each 64 MiB block afresh (16,384 pages faulted in per allocation); kept, the block comes
    from the heap, and the next allocation reuses the freed one: next to no faults."""
    glibc, kept = probe("none"), probe("keep")
    assert glibc["in_heap"] == [False] * 4 and kept["in_heap"] == [True] * 4
    assert kept["answer"] is True
    assert kept["faults"] < 1_000, kept
    assert glibc["faults"] > 4 * kept["faults"] + 100, (glibc, kept)  # >= 4 x 16,384 with 4 KiB pages


def test_predict_outputs_keeps_large_blocks():
    """Reading (evaluate, robustness, predict) switches the process to kept blocks."""
    out = probe("predict")
    assert out["answer"] == [3, 4, 10]
    assert out["in_heap"] == [True] * 4 and out["faults"] < 1_000, out


@pytest.mark.parametrize("env", [{"MLNS_FAST_HEAP_KEEP": "0"}, {"MALLOC_MMAP_MAX_": "65536"},
                                 {"GLIBC_TUNABLES": "glibc.malloc.mmap_max=65536"}])
def test_heap_keep_off_or_the_users_own_glibc_settings_leave_glibcs_policy(env):
    """$MLNS_FAST_HEAP_KEEP=0 reads with glibc's policy as it is; a user who set glibc's malloc through its
    own variables keeps their setting."""
    out = probe("keep", **env)
    assert out["answer"] is False
    assert out["in_heap"] == [False] * 4, out


@pytest.mark.parametrize("value", ["yes", "2", "-1"])
def test_bad_heap_keep_setting_is_a_config_error(value, monkeypatch):
    from mlns_fast.errors import ConfigError
    from mlns_fast.heap import keep_large_blocks
    monkeypatch.setenv("MLNS_FAST_HEAP_KEEP", value)
    with pytest.raises(ConfigError, match=f"MLNS_FAST_HEAP_KEEP={value!r}"):
        keep_large_blocks()
