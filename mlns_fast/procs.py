"""Is that process still alive? One answer for run locks and sweep workers, safe against PID reuse.

A process is recorded as `{"host", "pid", "token"}` (`this_process()`): `host` is the host name
and the kernel's boot id, `token` the kernel's start time of the process. A record is alive while
a process with that PID runs on this machine *and* started at that time: a PID the kernel handed
to a new process after the recorded one died does not count. A low layer: standard library only.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path

UNKNOWN = "?"  # the token where there is no procfs: only "does the PID exist" can be asked


def process_token(pid: int) -> str | None:
    """A live process's kernel start time (`?` without procfs); None if it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    except OSError:  # no procfs (macOS): fall back to "does the pid exist"
        return UNKNOWN if _pid_exists(pid) else None
    state_and_rest = stat.rsplit(")", 1)[1].split()  # the command name in (...) may hold spaces
    return None if state_and_rest[0] in ("Z", "X") else state_and_rest[19]


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True


def this_machine() -> str:
    """Host name and kernel boot id: two machines (or two boots) never share it, even under one host name."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = ""
    return f"{socket.gethostname()}/{boot}"


def this_process() -> dict:
    """The record that names this process for `is_alive`."""
    return {"host": this_machine(), "pid": os.getpid(), "token": process_token(os.getpid())}


def is_alive(record: dict) -> bool:
    """Whether the process a record names may still run. Another machine's process is assumed alive
    (nothing here can ask it); one from an earlier boot of this machine is not. Records without a
    token (run locks written before tokens) are checked by host name and PID alone."""
    pid = record.get("pid")
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        return False  # not a process (kill(0) or kill(-1) would ask about whole groups)
    if "token" not in record:
        return record.get("host") != socket.gethostname() or process_token(pid) is not None
    host, _, boot = str(record.get("host")).partition("/")
    here, _, boot_here = this_machine().partition("/")
    if host != here:
        return True
    if boot != boot_here:
        return False  # the machine restarted since: every process of that boot is gone
    token = process_token(pid)
    return token is not None and (UNKNOWN in (token, record["token"]) or token == record["token"])
