"""The mount as a systemd service: a real datagram socket stands in for the user manager.

READY=1 must mean the mountpoint is served: while the mount is still starting (its bucket check
held up by a store that does not answer) nothing is sent; once it comes, the mountpoint answers.
Then WATCHDOG=1 at half of WATCHDOG_USEC, and STOPPING=1 when it is stopped. And the unit
`service install` writes runs as the manager runs it: its ExecStart= with the manager's
environment (no virtualenv on PATH, none of this shell's variables), its ExecStop= to unmount.
"""

import os
import shutil
import signal
import subprocess

import pytest

from s3filesfs.model import PURPOSES
from tests.fs.mounting import Mount, mounted_at
from tests.fs.test_stalls import ProxiedServer, StallMount
from tests.helpers import wait_for
from tests.silentproxy import SilentProxy
from tests.systemd import NotifySocket, command, settings

WATCHDOG_USEC = 200_000  # a ping every 0.1 s
MANAGER_PATH = "/usr/local/bin:/usr/bin:/bin"


@pytest.fixture
def manager():
    sock = NotifySocket()
    yield sock
    sock.close()


def served(mountpoint) -> bool:
    """Mounted, and answering: its purpose folders are listed by the mount process."""
    return mounted_at(mountpoint) and set(PURPOSES) <= set(os.listdir(mountpoint))


def test_ready_only_once_the_mountpoint_is_served_then_watchdog_and_stopping(s3_server, fuse, manager):
    proxy = SilentProxy(s3_server.port)
    m = StallMount("s3", ProxiedServer(s3_server, proxy))
    try:
        m.mountpoint.mkdir(parents=True)
        m.staging.mkdir(parents=True)
        proxy.silent = True  # the mount's first request, the bucket check, gets no answer for now
        with open(m.log_path, "ab") as log:
            m.process = subprocess.Popen(m.command("mount", str(m.mountpoint), "--foreground"),
                                         env={**m.env, **manager.env(WATCHDOG_USEC)}, stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        wait_for(lambda: proxy.accepted or m.process.poll() is not None, 30, "the mount to reach the store")
        assert m.process.poll() is None, m.log_tail()
        assert manager.receive(0.5) is None, "told systemd something before it was mounted"
        assert not mounted_at(m.mountpoint)

        proxy.silent = False
        ready = manager.wait_for("READY", 30)
        assert served(m.mountpoint), "READY=1 came before the mountpoint was served"
        assert [fields for _, fields in manager.messages] == [ready]  # the first word it said
        assert ready["STATUS"].startswith("serving ") and m.bucket in ready["STATUS"]
        assert ready["STATUS"].endswith(f" at {m.mountpoint}")

        assert manager.count("WATCHDOG", 1.0) >= 5  # every 0.1 s while statfs answers

        m.process.send_signal(signal.SIGTERM)
        assert manager.wait_for("STOPPING", 20)["STOPPING"] == "1"
        assert m.process.wait(30) == 0, m.log_tail()
        assert not mounted_at(m.mountpoint)
    finally:
        proxy.silent = False
        m.stop()
        proxy.close()
        shutil.rmtree(m.root, ignore_errors=True)


def test_the_installed_unit_runs_and_stops_as_the_user_manager_runs_it(fuse, manager):
    m = Mount("local")
    try:
        # The global option (--data-dir) and the mount's own (--staging-dir) go into the unit.
        m.cli("service", "install", "--mount", str(m.mountpoint), "--", "--staging-dir", str(m.staging))
        unit = (m.root / "config" / "systemd" / "user" / "s3filesfs-mount.service").read_text()
        [start], [stop] = settings(unit, "ExecStart"), settings(unit, "ExecStop")
        manager_env = {"HOME": str(m.root), "PATH": MANAGER_PATH, "XDG_RUNTIME_DIR": str(m.root / "run"),
                       "LANG": "C.UTF-8", **manager.env(WATCHDOG_USEC)}

        with open(m.log_path, "ab") as log:
            m.process = subprocess.Popen(command(start), env=manager_env, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, cwd="/")
        ready = manager.wait_for("READY", 30)
        assert served(m.mountpoint), f"READY=1 came before the mountpoint was served: {ready}"
        (m.mountpoint / "batch" / "through-the-service.jsonl").write_bytes(b'{"n": 1}\n')
        assert [row["filename"] for row in m.rows().values()] == ["through-the-service.jsonl"]
        assert os.listdir(m.staging), "the unit's --staging-dir was not used"
        assert manager.count("WATCHDOG", 0.6) >= 3

        # ExecStop=: a clean unmount, after which the service's process ends by itself, with 0.
        stopped = subprocess.run(command(stop), env=manager_env, capture_output=True, text=True, timeout=60, cwd="/")
        assert stopped.returncode == 0, stopped.stderr
        assert m.process.wait(30) == 0, m.log_tail()
        assert not mounted_at(m.mountpoint)
        assert manager.wait_for("STOPPING", 5)["STOPPING"] == "1"
    finally:
        m.stop()
        shutil.rmtree(m.root, ignore_errors=True)
