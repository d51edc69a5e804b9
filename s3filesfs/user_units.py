"""systemd user units for the mount and the daemon: what they run, where they are written, and the
``systemctl --user`` calls that load, start, stop and describe them.

A unit runs this very installation by absolute path: the ``s3filesfs`` script beside the Python
running now (a virtualenv's ``bin/s3filesfs``) when that script runs with this Python, else this
Python with ``-m s3filesfs``. So it works whatever ``PATH`` the user manager has, and a virtualenv
needs no activating. Both units are ``Type=notify``: systemd counts them as started once the
mountpoint is served or the socket answers (``sdnotify.py``), and restarts one that stops pinging
its watchdog.

``mount_unit`` and ``daemon_unit`` are pure functions of paths, so the examples in ``packaging/``
are the same text written for example paths (a test keeps them identical). Units this command wrote
carry ``MARKER`` on their first line; a unit file without it is never replaced or removed unless
asked (``--force``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError

MARKER = "# Written by `s3filesfs service install`: run it again to update this file, " \
         "`s3filesfs service uninstall` to remove it."
MOUNT_UNIT = "s3filesfs-mount"
DAEMON_UNIT = "s3filesfs-daemon"
WATCHDOG_SECONDS = 60  # the mount and the daemon ping every 30 s while healthy
RESTART_SECONDS = 5
DAEMON_START_SECONDS = 300  # its bucket check and first scan come before READY=1
SYSTEMCTL_TIMEOUT = DAEMON_START_SECONDS + 30  # `enable --now` waits for READY=1
ENV = "/usr/bin/env"
_SAFE_WORD = re.compile(r"[A-Za-z0-9_@+=:,./-]+")
_UNIT_NAME = re.compile(r"[A-Za-z0-9_.:-]+")
_MOUNTS_LINE = re.compile(r"^# mounts: (.*)$", re.MULTILINE)


class UnitError(UserError):
    """A unit cannot be written, replaced or removed as asked."""


@dataclass(frozen=True)
class Unit:
    name: str  # without ".service"
    text: str
    runs: tuple[str, ...]  # ExecStart=, as words
    mountpoint: Path | None = None  # for a mount unit

    @property
    def filename(self) -> str:
        return f"{self.name}.service"


# --- what a unit runs ----------------------------------------------------------------------------


def program() -> list[str]:
    """The command that runs this installation: its console script, or ``python -m s3filesfs``."""
    python = Path(os.path.abspath(sys.executable))
    script = python.parent / "s3filesfs"
    interpreter = _shebang(script) if os.access(script, os.X_OK) else None
    if interpreter is not None and interpreter.parent == python.parent and _same_file(interpreter, python):
        return [str(script)]
    return [str(python), "-m", "s3filesfs"]


def _shebang(script: Path) -> Path | None:
    try:
        with open(script, "rb") as f:
            first = f.readline(4096)
    except OSError:
        return None
    if not first.startswith(b"#!"):
        return None
    words = first[2:].split()
    return Path(os.fsdecode(words[0])) if len(words) == 1 else None


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


MOUNT_DOCS = ("README.md", "docs/semantics.md", "packaging/README.md")
DAEMON_DOCS = ("docs/daemon.md", "packaging/README.md")


def source_tree() -> Path | None:
    """The checkout this package runs from (an editable install, as the quick start makes), which
    holds the pages the units name in ``Documentation=``; None for an installed wheel."""
    root = Path(__file__).resolve().parent.parent
    return root if all((root / page).is_file() for page in (*MOUNT_DOCS, *DAEMON_DOCS)) else None


def documentation(root: Path | None, pages: Sequence[str]) -> list[str]:
    """``file://`` addresses of ``pages`` under ``root``."""
    return [] if root is None else [f"file://{urllib.parse.quote(str(root / page))}" for page in pages]


# --- the unit files ------------------------------------------------------------------------------


def _escape(text: str) -> str:
    """``text`` for a unit setting that expands specifiers (``%h``...): a literal ``%`` is ``%%``."""
    if "\n" in text:
        raise UnitError(f"{text!r} holds a line break, which a unit file cannot carry")
    return text.replace("%", "%%")


def command_line(words: Sequence[str]) -> str:
    """``words`` as systemd reads a command line: quoted where needed, ``%`` doubled, and ``$`` in
    the arguments (systemd substitutes variables there, not in the program's path).

    systemd refuses a program path holding a quote, a backslash or a control character (it may
    hold them as an argument), so such a program is run through ``env``."""
    if any(char in words[0] for char in "\\\"'") or not words[0].isprintable():
        words = [ENV, *words]
    out = []
    for index, word in enumerate(words):
        word = _escape(word)
        if index:
            word = word.replace("$", "$$")
        if not _SAFE_WORD.fullmatch(word):
            word = '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'
        out.append(word)
    return " ".join(out)


def _render(name: str, header: list[str], description: str, docs: list[str], service: list[str]) -> str:
    lines = [MARKER, *header, f"# Logs: journalctl --user -u {name} -f", "",
             "[Unit]", f"Description={_escape(description)}"]
    if docs:
        lines.append("Documentation=" + " ".join(_escape(doc) for doc in docs))
    lines += ["", "[Service]", *service,
              f"WatchdogSec={WATCHDOG_SECONDS}",
              "Restart=on-failure",
              f"RestartSec={RESTART_SECONDS}",
              "# Exit 1 is a mistake to fix (bad configuration, missing bucket, refused credentials, something",
              "# already in use), 2 a bad command line: starting again would only repeat it. Exit 3 (storage",
              "# unreachable) and a missed watchdog ping restart it.",
              "RestartPreventExitStatus=1 2",
              "", "[Install]", "WantedBy=default.target", ""]
    return "\n".join(lines)


def mount_unit(command: Sequence[str], mountpoint: Path, options: Sequence[str] = (), name: str = MOUNT_UNIT,
               docs_root: Path | None = None) -> Unit:
    """The unit that mounts at ``mountpoint``; ``command`` is the program and its global options."""
    mountpoint = Path(mountpoint)
    runs = (*command, "mount", "--foreground", str(mountpoint), *options)
    service = [
        "# Started once the kernel serves the mountpoint; pings the watchdog while it answers statfs.",
        "Type=notify",
        "ExecStart=" + command_line(runs),
        "# A clean unmount first: it waits for the uploads of closed files. When the mount is busy (a",
        "# shell inside it), SIGTERM follows: files being written get 60 s to be closed, then it detaches.",
        "ExecStop=-" + command_line([*command, "umount", str(mountpoint)]),
        "TimeoutStopSec=90",
    ]
    text = _render(name, [f"# mounts: {mountpoint}"], f"s3filesfs: the Files store mounted at {mountpoint}",
                   documentation(docs_root, MOUNT_DOCS), service)
    return Unit(name, text, runs, mountpoint)


def daemon_unit(command: Sequence[str], options: Sequence[str] = (), name: str = DAEMON_UNIT,
                docs_root: Path | None = None) -> Unit:
    """The unit of the sync daemon; ``command`` is the program and its global options."""
    runs = (*command, "daemon", *options)
    service = [
        "# Started once the API socket answers (after the bucket check and the first scan of the drop",
        "# folders, which a large folder makes long); pings the watchdog while the socket answers.",
        "Type=notify",
        "ExecStart=" + command_line(runs),
        f"TimeoutStartSec={DAEMON_START_SECONDS}",
        "# SIGTERM: stop watching, give uploads in flight 10 s to finish or abandon them cleanly (the next",
        "# start completes them), exit 0.",
        "TimeoutStopSec=30",
    ]
    text = _render(name, [], "s3filesfs sync daemon: uploads what lands in the drop folders, serves the Files API",
                   documentation(docs_root, DAEMON_DOCS), service)
    return Unit(name, text, runs)


# --- where they go ---------------------------------------------------------------------------


def unit_dir() -> Path:
    """Where the user manager looks for the user's own units: ``$XDG_CONFIG_HOME/systemd/user``."""
    base = os.environ.get("XDG_CONFIG_HOME")
    config_home = Path(base) if base and os.path.isabs(base) else Path.home() / ".config"
    return config_home / "systemd" / "user"


def unit_name(name: str) -> str:
    """A unit name as given (``foo`` or ``foo.service``), checked and without the suffix."""
    name = name.removesuffix(".service")
    if not _UNIT_NAME.fullmatch(name) or name.startswith((".", "-")):
        raise UnitError(f"{name!r} is not a usable unit name (letters, digits, '_', '.', ':' and '-')")
    return name


def _ours(text: str) -> bool:
    return text.startswith(MARKER)


def install(unit: Unit, force: bool = False) -> str:
    """Write ``unit``; what happened: "wrote", "updated" or "unchanged"."""
    path = unit_dir() / unit.filename
    try:
        old = path.read_text()
    except FileNotFoundError:
        old = None
    except OSError as exc:
        raise UnitError(f"cannot read {path}: {exc.strerror}") from None
    if old == unit.text:
        return "unchanged"
    if old is not None and not force:
        if not _ours(old):
            raise UnitError(f"{path} exists and was not written by `s3filesfs service install` (a copy of "
                            "packaging/?): --force replaces it")
        before = _MOUNTS_LINE.search(old)
        if unit.mountpoint is not None and before and before[1] != str(unit.mountpoint):
            raise UnitError(f"{unit.name} already mounts {before[1]}: --name NAME installs a second mount unit, "
                            "--force moves this one")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.tmp")
        partial.write_text(unit.text)
        os.replace(partial, path)
    except OSError as exc:
        raise UnitError(f"cannot write {path}: {exc.strerror}") from None
    return "wrote" if old is None else "updated"


def installed() -> list[tuple[str, Path]]:
    """``(name, path)`` of every unit file this command wrote, by name."""
    folder = unit_dir()
    found = []
    for path in sorted(folder.glob("*.service")) if folder.is_dir() else []:
        try:
            if path.is_file() and not path.is_symlink() and _ours(path.read_text()):
                found.append((path.name.removesuffix(".service"), path))
        except OSError:
            continue
    return found


def removable(name: str, force: bool = False) -> Path:
    """The path of unit ``name``, checked to be one this command wrote (or ``force``)."""
    path = unit_dir() / f"{name}.service"
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UnitError(f"no unit {name} in {unit_dir()} (`s3filesfs service show` lists them)") from None
    except OSError as exc:
        raise UnitError(f"cannot read {path}: {exc.strerror}") from None
    if not _ours(text) and not force:
        raise UnitError(f"{path} was not written by `s3filesfs service install`: --force removes it")
    return path


def remove(path: Path) -> None:
    """Delete a unit file and the links that enabled it (``systemctl enable`` makes them)."""
    for link in path.parent.glob(f"*.wants/{path.name}"):
        if link.is_symlink():
            link.unlink()
    path.unlink()


# --- systemctl -------------------------------------------------------------------------------


def user_manager() -> str | None:
    """None when a systemd user manager answers ``systemctl --user``; else why not, in words."""
    systemctl = shutil.which("systemctl")
    if systemctl is None:
        return "systemctl is not installed (this machine does not run systemd)"
    try:
        probe = subprocess.run([systemctl, "--user", "show-environment"], capture_output=True, text=True,
                               timeout=30, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"systemctl --user failed: {exc}"
    if probe.returncode != 0:
        detail = probe.stderr.strip().splitlines()[-1] if probe.stderr.strip() else f"exit {probe.returncode}"
        return f"no systemd user manager answers here (systemctl --user: {detail})"
    return None


def systemctl(*args: str) -> subprocess.CompletedProcess:
    """``systemctl --user ARGS``, its output captured; a failure is a UnitError with what it said."""
    command = ["systemctl", "--user", *args]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=SYSTEMCTL_TIMEOUT,
                                stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UnitError(f"{' '.join(command)} failed: {exc}") from None
    if result.returncode != 0:
        said = (result.stderr or result.stdout).strip() or f"exit {result.returncode}"
        raise UnitError(f"{' '.join(command)} failed: {said}")
    return result


def state(name: str) -> str:
    """``enabled, active`` and the like, as the user manager sees ``name``."""
    words = []
    for verb in ("is-enabled", "is-active"):
        try:
            result = subprocess.run(["systemctl", "--user", verb, f"{name}.service"], capture_output=True,
                                    text=True, timeout=30, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired):
            words.append("unknown")
            continue
        words.append(result.stdout.strip() or "unknown")
    return ", ".join(words)
