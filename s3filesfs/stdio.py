"""Standard output and error for the CLI: a reader that goes away costs the output, never the work.

``s3filesfs upload *.txt | head -1`` closes the pipe after one line. Python would raise
``BrokenPipeError`` at the next print and stop the command halfway, with files left unuploaded.
``install()`` puts streams in place whose writes to a closed pipe are dropped instead, and
remembers that output was lost (``stdout_lost()``), so each command decides what that means:
reading commands stop early, commands that change the store finish and say so in their exit code.
"""

from __future__ import annotations

import io
import os
import sys


class _PipeSafeWriter(io.RawIOBase):
    """A file descriptor whose writes succeed, or are dropped once the reader has gone."""

    def __init__(self, fd: int):
        super().__init__()
        self._fd = fd
        self.lost = False

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._fd

    def isatty(self) -> bool:
        return os.isatty(self._fd)

    def write(self, data) -> int:
        size = len(memoryview(data))
        if self.lost:
            return size
        try:
            return os.write(self._fd, data)
        except BrokenPipeError:
            self.lost = True
            return size

    def close(self) -> None:  # the descriptor belongs to the process, not to this wrapper
        self.flush()


_writers: dict[str, _PipeSafeWriter] = {}


def install() -> None:
    """Replace ``sys.stdout`` and ``sys.stderr`` (when they are real files) with pipe-safe ones."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if name in _writers or stream is None:
            continue
        try:
            fd = stream.fileno()
        except (AttributeError, OSError, ValueError):  # not a real file (a test's capture)
            continue
        stream.flush()
        raw = _PipeSafeWriter(fd)
        is_stderr = name == "stderr"
        text = io.TextIOWrapper(io.BufferedWriter(raw), encoding=stream.encoding, errors=stream.errors,
                                line_buffering=stream.line_buffering, write_through=is_stderr)
        _writers[name] = raw
        setattr(sys, name, text)


def stdout_lost() -> bool:
    """True once something written to standard output could not reach its reader."""
    writer = _writers.get("stdout")
    if writer is None:
        return False
    try:
        sys.stdout.flush()  # what is still buffered is lost too, if the reader has gone
    except (OSError, ValueError):
        pass
    return writer.lost
