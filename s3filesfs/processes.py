"""Names for hosts and for processes that outlive them: who started an upload, and whether it still runs.

A host is named by its host id: the ``host_id`` setting, the machine's hostname unless configured.
Everything a process leaves in the shared store for itself alone carries that id (its uploads under
way, the daemon's journal entries, the mount's staging records), so that hosts sharing one database
and one bucket never take each other's work. Two processes on one machine configured with different
host ids are two hosts to each other: neither can tell whether the other runs.

An owner is ``host:pid:start``, where ``start`` is the process's start time in clock ticks since
boot (``/proc/PID/stat``), so a pid that the kernel has given to a new process does not look like
the old owner still running. Whether an owner on another host runs cannot be told from here.
"""

from __future__ import annotations

import functools
import os
import socket

HOST_ID_MAX = 255  # a hostname's own limit; more is surely a mistake


@functools.cache
def default_host() -> str:
    """This machine's hostname: the host id unless one is configured."""
    return socket.gethostname()


def host_id_problem(value: str) -> str | None:
    """What is wrong with ``value`` as a host id, or None. It goes into ``host:pid:start`` owner
    names (split at ':') and into messages about staging records and journal entries."""
    if not value:
        return "must not be empty"
    if ":" in value or "/" in value:
        return "must not contain ':' or '/'"
    if len(value) > HOST_ID_MAX:
        return f"must be at most {HOST_ID_MAX} characters"
    if not value.isprintable() or value != value.strip():
        return "must be printable, without leading or trailing spaces"
    return None


def _start_ticks(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if len(fields) <= 19 or fields[0] in (b"Z", b"X"):  # a zombie has ended, reaped or not
        return None
    return fields[19].decode()  # field 22 of the line: starttime


def this_process(host: str | None = None) -> str:
    """This process's owner name on ``host`` (default: this machine's hostname); recomputed after
    a fork, whose pid differs."""
    pid = os.getpid()
    return f"{host or default_host()}:{pid}:{_start_ticks(pid) or 0}"


def is_running(owner: str, host: str | None = None) -> bool | None:
    """True while the named process runs, False once it has ended; None if it is not on ``host``
    (default: this machine's hostname), where nothing can be told about it."""
    try:
        owner_host, pid_text, start = owner.rsplit(":", 2)
        pid = int(pid_text)
    except ValueError:
        return False  # not a name we wrote: nobody can still be using it
    if owner_host != (host or default_host()):
        return None
    return _start_ticks(pid) == start
