"""Stopping a command cleanly: SIGTERM and SIGHUP turned into ``Stopped`` in the main thread.

By default those signals end the process on the spot, so an upload dies with its S3 multipart
upload open (S3 keeps, and bills, its parts). Inside ``stopped_by(...)`` they raise ``Stopped``
instead, as Ctrl-C raises ``KeyboardInterrupt``: the ``except BaseException`` clean-ups on the way
out run (the upload is aborted) before the command exits with 128 + the signal's number.

Python runs a signal handler in the main thread, and only when that thread next runs Python code.
The kernel may hand a process's signal to any of its threads (the upload's part senders too); then
a main thread blocked reading a pipe or a FIFO would never notice. So Python's wakeup fd, written
whichever thread took the signal, is watched by a small thread that sends each signal on to the
main thread once, which interrupts the blocked call.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading

from .errors import Stopped


@contextlib.contextmanager
def stopped_by(*signals: signal.Signals):
    """While inside, each of ``signals`` raises ``Stopped`` in the main thread (which this must be).

    Only the first signal raises: a second one must not cut the clean-up short. A signal the
    caller ignores stays ignored (``nohup s3filesfs upload ...`` keeps uploading after a hangup).
    """
    received: list[int] = []

    def on_signal(signum, _frame):
        if not received:
            received.append(signum)
            raise Stopped(signum)

    previous = {}
    wakeup_read, wakeup_write = os.pipe()
    os.set_blocking(wakeup_write, False)  # the C handler must never block on it
    forwarder = None
    previous_wakeup = None
    try:
        for sig in signals:
            if signal.getsignal(sig) is not signal.SIG_IGN:
                previous[sig] = signal.signal(sig, on_signal)
        forwarder = threading.Thread(target=_forward_to_main, name="stop-signals", daemon=True,
                                     args=(wakeup_read, threading.main_thread().ident, set(previous)))
        forwarder.start()
        previous_wakeup = signal.set_wakeup_fd(wakeup_write, warn_on_full_buffer=False)
        yield
    finally:
        received.append(0)  # the work is over: a signal from here on changes nothing
        if previous_wakeup is not None:
            signal.set_wakeup_fd(previous_wakeup)
        os.close(wakeup_write)  # the forwarder reads the end of the pipe and returns
        if forwarder is not None and forwarder.is_alive():
            forwarder.join(5)
        os.close(wakeup_read)
        for sig, handler in previous.items():  # only now: a forwarded signal still finds ours
            signal.signal(sig, handler)


def _forward_to_main(wakeup_read: int, main: int, signals: set[int]) -> None:
    forwarded: set[int] = set()
    while data := os.read(wakeup_read, 64):
        for signum in data:
            # Ours only, each once: the main thread's own handling of it writes the number again.
            if signum in signals and signum not in forwarded:
                forwarded.add(signum)
                signal.pthread_kill(main, signum)
