"""systemd's notification protocol for ``Type=notify`` services: readiness, status and watchdog.

The protocol is small enough to speak without libsystemd: one datagram per message, made of
``KEY=value`` lines, sent to the AF_UNIX socket named by ``$NOTIFY_SOCKET`` (a path, or ``@name``
for the abstract namespace). Without ``NOTIFY_SOCKET`` (not started by systemd, or not as
``Type=notify``) every call here does nothing and no thread is started.

``ready_when`` is what the mount and the daemon call: a thread waits until their condition holds
(the mountpoint is served, the socket accepts), says ``READY=1``, and from then on pings
``WATCHDOG=1`` at half of ``$WATCHDOG_USEC`` (``WatchdogSec=``) for as long as their health check
passes. A process that hangs stops pinging, and systemd restarts it.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

POLL_SECONDS = 0.02  # how often ready_when looks at its condition


def _address() -> str | None:
    """``$NOTIFY_SOCKET`` as a socket address: abstract names ("@name") start with a NUL byte."""
    name = os.environ.get("NOTIFY_SOCKET")
    if not name or name[0] not in "/@":  # systemd also knows vsock: addresses, which we never get
        return None
    return "\0" + name[1:] if name[0] == "@" else name


def enabled() -> bool:
    return _address() is not None


def notify(*fields: str) -> bool:
    """Send ``fields`` ("READY=1", "STATUS=...") as one message; True if it was sent.

    A failure is logged, never raised: a service must not stop because its manager did not listen.
    """
    address = _address()
    if address is None:
        return False
    message = "\n".join(field.replace("\n", " ") for field in fields).encode("utf-8", "replace")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message)
    except OSError as exc:
        log.warning("could not notify systemd (%s): %s", os.environ.get("NOTIFY_SOCKET"), exc)
        return False
    return True


def status(text: str) -> bool:
    return notify(f"STATUS={text}")


def stopping(text: str = "stopping") -> bool:
    return notify("STOPPING=1", f"STATUS={text}")


def watchdog_interval() -> float | None:
    """Seconds between pings (half of ``$WATCHDOG_USEC``), or None when no watchdog is asked for
    this process (``$WATCHDOG_PID``, when set, names the process systemd watches)."""
    owner = os.environ.get("WATCHDOG_PID")
    if owner and owner != str(os.getpid()):
        return None
    try:
        usec = int(os.environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 2_000_000 if usec > 0 else None


class Watchdog:
    """A thread that sends ``WATCHDOG=1`` every ``interval`` seconds while ``healthy()`` is true.

    ``healthy`` may block (a mount that hangs does not answer statfs): then no ping is sent, which
    is the point. Its exceptions count as unhealthy.
    """

    def __init__(self, interval: float, healthy: Callable[[], bool] | None = None):
        self.interval = interval
        self.healthy = healthy or (lambda: True)
        self.pings = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sd-watchdog", daemon=True)

    def start(self) -> Watchdog:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        was_healthy = True
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                healthy = bool(self.healthy())
            except Exception as exc:  # any failure of the check means "not healthy"
                log.debug("watchdog health check failed: %r", exc)
                healthy = False
            if healthy != was_healthy:
                if healthy:
                    log.info("health check passes again; watchdog pings resumed")
                else:
                    log.warning("health check failed: no watchdog ping (systemd restarts a service that "
                                "misses them for WatchdogSec)")
                was_healthy = healthy
            if healthy and not self._stop.is_set() and notify("WATCHDOG=1"):
                self.pings += 1
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))


def ready_when(condition: Callable[[], bool], status_text: Callable[[], str],
               healthy: Callable[[], bool] | None = None) -> threading.Thread | None:
    """Once ``condition()`` holds, send READY=1 with ``status_text()`` and start the watchdog.

    Runs in a thread of its own (returned), so the caller goes on to serve; None when systemd is
    not listening. A condition that never holds sends nothing: systemd's ``TimeoutStartSec=`` then
    fails the start, as it should.
    """
    if not enabled():
        return None

    def wait_then_announce() -> None:
        while not condition():
            time.sleep(POLL_SECONDS)
        notify("READY=1", f"STATUS={status_text()}")
        interval = watchdog_interval()
        if interval is not None:
            Watchdog(interval, healthy).start()

    thread = threading.Thread(target=wait_then_announce, name="sd-ready", daemon=True)
    thread.start()
    return thread
