"""systemd's side of a service, for the tests: the notify socket a manager listens on, reading a
unit file's settings and command lines back, and ``systemd-analyze verify``.

``NotifySocket`` binds a real AF_UNIX datagram socket (a path, or a name in the abstract
namespace), as the manager does, and collects what a service sends to ``$NOTIFY_SOCKET``.
"""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from tests.helpers import lacking


class NotifySocket:
    def __init__(self, abstract: bool = False, folder: Path | None = None):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = f"s3filesfs-test-{uuid.uuid4().hex}"
            self.sock.bind("\0" + name)
            self.address = "@" + name
        else:
            self._folder = Path(folder or tempfile.mkdtemp(dir="/tmp", prefix="s3fn-"))
            self.address = str(self._folder / "notify")
            self.sock.bind(self.address)
        self.messages: list[tuple[float, dict[str, str]]] = []  # (monotonic time, fields)

    def env(self, watchdog_usec: int | None = None) -> dict[str, str]:
        env = {"NOTIFY_SOCKET": self.address}
        if watchdog_usec is not None:
            env["WATCHDOG_USEC"] = str(watchdog_usec)
        return env

    def receive(self, timeout: float) -> dict[str, str] | None:
        """The next message's fields, or None if none comes within ``timeout``."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return None
        fields = dict(line.split("=", 1) for line in data.decode().splitlines())
        self.messages.append((time.monotonic(), fields))
        return fields

    def wait_for(self, key: str, timeout: float) -> dict[str, str]:
        """Receive until a message carries ``key``; AssertionError naming what came instead."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            fields = self.receive(left)
            if fields is not None and key in fields:
                return fields
        raise AssertionError(f"no {key} within {timeout}s; received {[m for _, m in self.messages]}")

    def count(self, key: str, seconds: float) -> int:
        """How many messages carrying ``key`` arrive in the next ``seconds``."""
        deadline = time.monotonic() + seconds
        found = 0
        while (left := deadline - time.monotonic()) > 0:
            fields = self.receive(left)
            if fields is not None and key in fields:
                found += 1
        return found

    def close(self) -> None:
        self.sock.close()
        if not self.address.startswith("@"):
            shutil.rmtree(self._folder, ignore_errors=True)


# --- unit files ------------------------------------------------------------------------------------


def settings(text: str, key: str) -> list[str]:
    """Every value of ``key`` in a unit file's text."""
    return [line.split("=", 1)[1] for line in text.splitlines() if line.startswith(f"{key}=")]


def command(value: str) -> list[str]:
    """A command line setting read back as systemd runs it: prefixes ("-") dropped, quotes removed,
    ``%%`` and ``$$`` made single again (the units we write use no other specifier or variable)."""
    words = shlex.split(value.lstrip("-@:+!"))
    return [word.replace("%%", "%") if i == 0 else word.replace("%%", "%").replace("$$", "$")
            for i, word in enumerate(words)]


def analyze_verify(*paths: Path) -> subprocess.CompletedProcess:
    """``systemd-analyze --user verify`` on unit files. Missing: a skip, but a failure under CI=true."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        lacking("systemd-analyze is missing (Debian package systemd): the units cannot be verified")
    runtime = tempfile.mkdtemp(dir="/tmp", prefix="s3fr-")  # --user needs a runtime folder
    try:
        return subprocess.run([analyze, "--user", "verify", *map(str, paths)], capture_output=True, text=True,
                              timeout=120, env={**os.environ, "XDG_RUNTIME_DIR": runtime})
    finally:
        shutil.rmtree(runtime, ignore_errors=True)
