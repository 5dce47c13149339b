"""`procs`: one "is that process alive" answer for run locks and sweep workers, safe against PID reuse."""
import os
import socket

import pytest

from mlns_fast.procs import is_alive, process_token, this_machine, this_process

from .conftest import dead_pid


def test_this_process_is_alive_and_a_dead_one_is_not():
    assert is_alive(this_process())
    assert process_token(dead_pid()) is None and not is_alive({**this_process(), "pid": dead_pid()})


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="start times need procfs")
def test_a_reused_pid_is_dead():
    """The PID runs, but it started at another time than the recorded process: someone else's now."""
    assert not is_alive({**this_process(), "token": str(int(process_token(os.getpid())) + 1)})


def test_a_process_of_an_earlier_boot_is_dead_and_another_machine_is_assumed_alive():
    host, _, boot = this_machine().partition("/")
    assert not is_alive({**this_process(), "host": f"{host}/{boot}-before-a-reboot"})
    assert is_alive({**this_process(), "host": f"{host}-elsewhere/{boot}", "pid": dead_pid()})


def test_records_without_a_token_are_checked_by_host_and_pid():
    """Run locks written before tokens: `{"pid", "host"}`, read as they always were."""
    assert is_alive({"pid": os.getpid(), "host": socket.gethostname()})
    assert not is_alive({"pid": dead_pid(), "host": socket.gethostname()})
    assert is_alive({"pid": dead_pid(), "host": "another-machine"})


@pytest.mark.parametrize("pid", [0, -1, True, "123", None, 2**80])
def test_a_record_that_names_no_process_is_dead(pid):
    assert not is_alive({**this_process(), "pid": pid})
    assert not is_alive({"pid": pid, "host": socket.gethostname()})
