"""The daemon as a systemd service (Type=notify): a real datagram socket in the abstract namespace
stands in for the user manager.

READY=1 must mean the API socket answers: while the daemon's bucket check is held up by a store
that does not answer, nothing is sent and there is no socket; the moment READY=1 arrives, the socket
answers. Then WATCHDOG=1 at half of WATCHDOG_USEC, and STOPPING=1 on SIGTERM, which exits 0.
"""

import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.daemon.conftest import socket_client
from tests.helpers import wait_for
from tests.silentproxy import SilentProxy
from tests.systemd import NotifySocket

WATCHDOG_USEC = 200_000  # a ping every 0.1 s


def test_ready_only_once_the_socket_answers_then_watchdog_and_stopping(env, s3_server, tmp_path):
    proxy = SilentProxy(s3_server.port)
    world = env(endpoint_url=proxy.endpoint_url, stall_timeout_seconds=3)
    manager = NotifySocket(abstract=True)
    log = open(tmp_path / "daemon.log", "ab")
    process = None
    try:
        proxy.silent = True  # the daemon's first request, the bucket check, gets no answer for now
        process = subprocess.Popen(
            [str(Path(sys.executable).parent / "s3filesfs"), "--config", str(world.config_path), "daemon"],
            env={**os.environ, **manager.env(WATCHDOG_USEC)}, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL)
        wait_for(lambda: proxy.accepted or process.poll() is not None, 30, "the daemon to reach the store")
        assert process.poll() is None, (tmp_path / "daemon.log").read_text()
        assert manager.receive(0.5) is None, "told systemd something before it served"
        assert not world.socket.exists()

        proxy.silent = False
        ready = manager.wait_for("READY", 30)
        with socket_client(world.socket) as client:
            assert client.get("/v1/status").status_code == 200, "READY=1 came before the socket answered"
        assert [fields for _, fields in manager.messages] == [ready]  # the first word it said
        assert ready["STATUS"] == f"watching {world.watch}; API on {world.socket}"

        assert manager.count("WATCHDOG", 1.0) >= 5  # every 0.1 s while the socket answers

        process.send_signal(signal.SIGTERM)
        assert manager.wait_for("STOPPING", 20)["STOPPING"] == "1"
        assert process.wait(30) == 0, (tmp_path / "daemon.log").read_text()
    finally:
        proxy.silent = False
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()
        log.close()
        proxy.close()
        manager.close()

