"""Names for processes that outlive them: who started an upload, and whether it still runs.

An owner is ``host:pid:start``, where ``start`` is the process's start time in clock ticks since
boot (``/proc/PID/stat``), so a pid that the kernel has given to a new process does not look like
the old owner still running. Whether an owner on another host runs cannot be told from here.
"""

from __future__ import annotations

import functools
import os
import socket


def _start_ticks(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if len(fields) <= 19 or fields[0] in (b"Z", b"X"):  # a zombie has ended, reaped or not
        return None
    return fields[19].decode()  # field 22 of the line: starttime


@functools.cache
def _host() -> str:
    return socket.gethostname()


def this_process() -> str:
    """This process's owner name (recomputed after a fork: the pid differs)."""
    pid = os.getpid()
    return f"{_host()}:{pid}:{_start_ticks(pid) or 0}"


def is_running(owner: str) -> bool | None:
    """True while the named process runs, False once it has ended; None if it is on another host."""
    try:
        host, pid_text, start = owner.rsplit(":", 2)
        pid = int(pid_text)
    except ValueError:
        return False  # not a name we wrote: nobody can still be using it
    if host != _host():
        return None
    return _start_ticks(pid) == start
