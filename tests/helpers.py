"""Small helpers every kind of test uses: polling for a condition, unique names, free ports, the
environment variables that would tie a test to the machine it runs on, and what a missing
prerequisite means (a skip here, a failure under CI).

Waits poll a condition against a deadline; no test relies on a fixed sleep being long enough.
"""

import os
import socket
import time
import uuid
from typing import NoReturn

import httpx
import pytest

# Variables that would make a test (or a process it starts) depend on the machine it runs on
# (PG: libpq's PGHOST, PGPASSWORD, PGSSLMODE, ...).
LEAKY_ENV = ("AWS_", "S3_", "S3FILESFS_", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_RUNTIME_DIR", "PG")

# Under CI=true a part the tests need (the FUSE device, PostgreSQL, systemd-analyze) must be there.
UNDER_CI = os.environ.get("CI", "").lower() == "true"


def lacking(reason: str) -> NoReturn:
    """A part the tests need is missing: a skip on a developer's machine, a failure under CI."""
    if UNDER_CI:
        pytest.fail(reason)
    pytest.skip(reason)


# Errors that mean "not yet" while polling: a path or socket not there yet, a daemon still starting.
NOT_YET = (OSError, httpx.TransportError)


def wait_for(predicate, timeout=5.0, what="condition", interval=0.02):
    """Poll ``predicate`` until it returns something truthy and return that; AssertionError naming
    ``what`` (and the last value or error seen) once ``timeout`` seconds have passed.

    The predicate is called at least once, and once more at the deadline.
    """
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            last = predicate()
        except NOT_YET as exc:
            last = exc
        else:
            if last:
                return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")
        time.sleep(interval)


def unique(stem="f", ext=".txt") -> str:
    """A name no other test of a shared mount or store uses."""
    return f"{stem}-{uuid.uuid4().hex[:8]}{ext}"


def free_port() -> int:
    """A TCP port on the loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
