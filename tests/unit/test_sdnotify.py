"""sd_notify without libsystemd (``s3filesfs/sdnotify.py``), against a real datagram socket bound
as a service manager binds it: by path and in the abstract namespace. The mount and the daemon
sending their READY=1 at the right moment: tests/fs/test_service.py, tests/daemon/test_notify.py.
"""

import logging
import os
import threading

import pytest

from s3filesfs import sdnotify
from tests.systemd import NotifySocket


@pytest.fixture(params=["path", "abstract"])
def manager(request, monkeypatch):
    sock = NotifySocket(abstract=request.param == "abstract")
    monkeypatch.setenv("NOTIFY_SOCKET", sock.address)
    for name in ("WATCHDOG_USEC", "WATCHDOG_PID"):
        monkeypatch.delenv(name, raising=False)
    yield sock
    sock.close()


def test_without_notify_socket_nothing_is_sent_and_no_thread_started(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.setenv("WATCHDOG_USEC", "100000")
    threads = threading.active_count()
    assert sdnotify.notify("READY=1") is False
    assert sdnotify.stopping() is False
    assert sdnotify.ready_when(lambda: True, lambda: "up") is None
    assert threading.active_count() == threads


def test_a_message_reaches_the_manager_as_one_datagram(manager):
    assert sdnotify.notify("READY=1", "STATUS=serving\nat /mnt")
    assert manager.receive(2) == {"READY": "1", "STATUS": "serving at /mnt"}  # a newline would split a field
    assert sdnotify.stopping("stopping: waiting for 2 file(s)")
    assert manager.receive(2) == {"STOPPING": "1", "STATUS": "stopping: waiting for 2 file(s)"}


def test_ready_waits_for_the_condition_and_no_watchdog_runs_unless_asked(manager):
    up = threading.Event()
    announcer = sdnotify.ready_when(up.is_set, lambda: "up now")
    assert announcer is not None
    try:
        assert manager.receive(0.3) is None
        up.set()
        assert manager.receive(2) == {"READY": "1", "STATUS": "up now"}
        assert manager.count("WATCHDOG", 0.5) == 0  # no WATCHDOG_USEC: no pings
        assert announcer.watchdog is None
    finally:
        announcer.stop()


def test_watchdog_pings_at_half_the_interval_while_healthy(manager, monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "100000")  # pings every 50 ms
    healthy: list[bool | None] = [True]  # None: the check raises

    def check() -> bool:
        if healthy[0] is None:
            raise OSError("the mountpoint does not answer")
        return healthy[0]

    announcer = sdnotify.ready_when(lambda: True, lambda: "up", healthy=check)
    assert announcer is not None
    try:
        assert "READY" in manager.wait_for("READY", 2)
        assert 5 <= manager.count("WATCHDOG", 0.5) <= 12  # 10 expected
        healthy[0] = False
        manager.count("WATCHDOG", 0.1)  # a ping already under way
        assert manager.count("WATCHDOG", 0.4) == 0
        healthy[0] = None  # a check that fails counts as unhealthy
        assert manager.count("WATCHDOG", 0.4) == 0
        healthy[0] = True
        assert manager.count("WATCHDOG", 0.5) >= 5
    finally:
        announcer.stop()
    manager.count("WATCHDOG", 0.1)
    assert manager.count("WATCHDOG", 0.3) == 0  # stopped


def test_watchdog_pid_names_the_process_the_watchdog_is_for(monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert sdnotify.watchdog_interval() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))  # a child that inherited the variables
    assert sdnotify.watchdog_interval() is None
    monkeypatch.delenv("WATCHDOG_PID")
    for value in ("0", "soon", ""):
        monkeypatch.setenv("WATCHDOG_USEC", value)
        assert sdnotify.watchdog_interval() is None


def test_a_manager_that_is_not_listening_is_logged_never_raised(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody"))
    monkeypatch.setattr(sdnotify, "_failed_before", False)  # said once per process: this is the first
    with caplog.at_level(logging.WARNING, logger="s3filesfs.sdnotify"):
        assert sdnotify.notify("READY=1") is False
    assert "could not notify systemd" in caplog.text
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")  # a kind of address we do not speak
    assert sdnotify.notify("READY=1") is False
