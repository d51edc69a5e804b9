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
_failed_before = False


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
        global _failed_before
        # Said once: a manager that went away (or a socket that was never there) is not news twice.
        log.log(logging.DEBUG if _failed_before else logging.WARNING, "could not notify systemd (%s): %s",
                os.environ.get("NOTIFY_SOCKET"), exc)
        _failed_before = True
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
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sd-watchdog", daemon=True)

    def start(self) -> Watchdog:
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)  # a health check that hangs is left behind (a daemon thread)

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
            if healthy and not self._stop.is_set():
                notify("WATCHDOG=1")
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))


class Announcer:
    """What ``ready_when`` started: a thread that waits, then says READY=1 and starts ``watchdog``."""

    def __init__(self, condition: Callable[[], bool], status_text: Callable[[], str],
                 healthy: Callable[[], bool] | None):
        self.condition = condition
        self.status_text = status_text
        self.healthy = healthy
        self.watchdog: Watchdog | None = None
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="sd-ready", daemon=True)

    def _run(self) -> None:
        while not self.condition():
            if self._stop.wait(POLL_SECONDS):
                return
        notify("READY=1", f"STATUS={self.status_text()}")
        interval = watchdog_interval()
        if interval is not None and not self._stop.is_set():
            self.watchdog = Watchdog(interval, self.healthy).start()

    def stop(self) -> None:
        self._stop.set()
        self.thread.join()
        if self.watchdog is not None:
            self.watchdog.stop()


def ready_when(condition: Callable[[], bool], status_text: Callable[[], str],
               healthy: Callable[[], bool] | None = None) -> Announcer | None:
    """Once ``condition()`` holds, send READY=1 with ``status_text()`` and start the watchdog.

    Runs in a thread of its own, so the caller goes on to serve; None when systemd is not
    listening. A condition that never holds sends nothing: systemd's ``TimeoutStartSec=`` then
    fails the start, as it should.
    """
    if not enabled():
        return None
    announcer = Announcer(condition, status_text, healthy)
    announcer.thread.start()
    return announcer
