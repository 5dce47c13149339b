import pytest
import torch
from fastai.callback.core import Callback

from mlns_fast.denormals import _runtime, denormals_flushed, flushing
from mlns_fast.training import train

CPU = torch.device("cpu")
needs_gomp = pytest.mark.skipif(_runtime() is None, reason="the per-team setting needs Linux x86-64 with libgomp")


def kept(n=1_000_000) -> int:
    """How many of n denormals survive a multiplication by one, computed by every thread of the team
    (a million elements: torch splits it between its threads). Made from their bits: a flushing
    thread would turn the float 1e-39 into 0 as it fills the tensor."""
    return int(torch.full((n,), 0x000AE398, dtype=torch.int32).view(torch.float32).mul(1.0).count_nonzero())


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # the case where torch's own setting misses half the work
    yield
    torch.set_num_threads(before)


@needs_gomp
def test_flushed_on_every_thread_inside_and_restored_after(two_threads):
    assert kept() == 1_000_000 and not flushing()
    torch.set_flush_denormal(True)  # torch's own setting reaches the calling thread only: half survive
    try:
        assert 0 < kept() < 1_000_000
    finally:
        torch.set_flush_denormal(False)
    with denormals_flushed(CPU) as on:
        assert on and flushing() and kept() == 0
    assert not flushing() and kept() == 1_000_000
    with pytest.raises(ValueError), denormals_flushed(CPU):
        raise ValueError  # restored on the way out of a failing body too
    assert not flushing() and kept() == 1_000_000


@needs_gomp
def test_a_setting_made_outside_is_left_as_it_was(two_threads):
    with denormals_flushed(CPU):
        with denormals_flushed(CPU) as inner:
            assert not inner  # already flushing: nothing to do, nothing to undo
        assert kept() == 0  # the inner block did not restore anything
    assert kept() == 1_000_000
    with denormals_flushed(torch.device("meta")) as on:  # not a CPU run: untouched
        assert not on and kept() == 1_000_000


class RecordFlushing(Callback):
    def before_batch(self):
        if self.training:
            self.seen = (flushing(), kept())


@needs_gomp
def test_train_flushes_while_it_fits_and_leaves_the_process_as_it_found_it(tiny_cfg, tmp_path, two_threads):
    rec = RecordFlushing()
    s = train(tiny_cfg(epochs=1), tmp_path, quiet=True, extra_cbs=[rec])
    assert s["status"] == "finished"
    assert rec.seen == (True, 0)
    assert not flushing() and kept() == 1_000_000
