"""The private runtime folder: where the daemon's socket and the mount's pid files live.

The socket needs no key because only its owner can reach it, and that holds only if nobody else
controls its folder. ``$XDG_RUNTIME_DIR`` is private by design, but the fallback,
``/tmp/s3filesfs-<uid>``, sits in a folder everyone can write to: another user can create it first,
owned by them or open to all, and then replace the socket with one of their own to read what is
uploaded. So, as ssh-agent and gpg-agent do, a folder that belongs to someone else or that others
can write to is refused, with a message saying how to fix it. The folder is created mode 0700; an
existing one is never changed (``api.socket`` may name a folder the user keeps for other things).
"""

from __future__ import annotations

import os
import pwd
import stat
from pathlib import Path

from .errors import UnsafeFolder


def _owner(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def ensure_private(folder: Path) -> Path:
    """Create ``folder`` (mode 0700) or check it: ours, not a symlink of someone else's, and
    writable by nobody else (the socket itself is 0600). Raises UnsafeFolder when it is not."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        folder.mkdir(mode=0o700)
    except FileExistsError:
        pass
    me = os.getuid()
    fix = (f"remove it (rm -r {folder}) and start again, or set XDG_RUNTIME_DIR or api.socket "
           "to a folder of your own")
    link = os.lstat(folder)
    if stat.S_ISLNK(link.st_mode) and link.st_uid != me:
        raise UnsafeFolder(f"{folder} is a symbolic link made by {_owner(link.st_uid)}, not by you: "
                           f"refusing to put the socket there; {fix}")
    info = os.stat(folder)
    if not stat.S_ISDIR(info.st_mode):
        raise UnsafeFolder(f"{folder} is not a folder; {fix}")
    if info.st_uid != me:
        raise UnsafeFolder(f"{folder} belongs to {_owner(info.st_uid)}, not to you: refusing to put the "
                           f"socket where someone else controls it; {fix}")
    mode = stat.S_IMODE(info.st_mode)
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UnsafeFolder(f"{folder} can be written by other users (mode {mode:04o}): refusing to put the "
                           f"socket there, as someone may already have tampered with it; {fix}")
    return folder


def is_private(folder: Path) -> bool:
    """True if ``folder`` exists, is ours and nobody else can write to it: a socket found there
    was put there by us (a client does not talk to a socket someone else could have planted)."""
    try:
        info = os.stat(folder)
    except OSError:
        return False
    return (stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid()
            and not stat.S_IMODE(info.st_mode) & (stat.S_IWGRP | stat.S_IWOTH))
