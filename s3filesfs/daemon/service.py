"""The daemon's wiring: journal, uploader, watcher and API around one FileService.

``start()`` opens the socket first (so a second daemon fails fast), reconciles what changed while
the daemon was down (every journal entry and every file on disk is submitted once; the uploader's
checks make that cheap for unchanged files), then starts watching. ``run()`` adds the signal
handling of a foreground service: SIGTERM or SIGINT stop watching, let in-flight uploads finish
within a grace period or abandon them cleanly (a restart completes them), and return 0.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from pathlib import Path

from .. import __version__, logs, metrics, sdnotify
from ..access import Identity
from ..errors import ConfigError, S3FilesError
from ..files import open_service
from ..upkeep import ExpiryTimer, start_expiry_timer
from .api import ApiServer, bind_tcp, bind_unix, create_app
from .client import DaemonClient
from .journal import Journal
from .uploader import Uploader
from .watcher import Watcher

log = logging.getLogger(__name__)

RESCAN_SECONDS = 60.0  # the safety-net scan for missed events and failed uploads
HEALTH_TIMEOUT = 10.0  # the watchdog's own request to the socket; a daemon this slow misses a ping


class DaemonService:
    def __init__(self, settings, *, service=None, retry_base: float = 0.5, retry_cap: float = 30.0,
                 rescan_seconds: float = RESCAN_SECONDS, grace: float = 10.0):
        self.settings = settings
        self.service = service or open_service(settings)
        self.journal = Journal(self.service.metadata, self.service.host)
        self.root = Path(settings.sync_watch_dir).expanduser()
        self.purposes = tuple(settings.purposes)
        # The drop folders' files are written as the daemon's identity; the uploader sees every row,
        # as it replaces and deletes only the ids its own journal recorded.
        writer = self.service.acting_as(settings.identity.with_full_view())
        self.uploader = Uploader(writer, self.journal, self.root, settle=settings.sync_settle_seconds,
                                 workers=settings.sync_workers, max_retries=settings.sync_max_retries,
                                 delete=settings.sync_delete, retry_base=retry_base, retry_cap=retry_cap)
        self.watcher = Watcher(self.root, self.purposes, self.uploader)
        self.socket_path = settings.api_socket_path
        self.rescan_seconds = rescan_seconds
        self.grace = grace
        self.started_at: float | None = None
        self._servers: list[ApiServer] = []
        self._stop = threading.Event()
        self._rescanner: threading.Thread | None = None
        self._expiry: ExpiryTimer | None = None
        self._owns_socket = False  # never remove the socket of another daemon that refused us

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        try:
            self._start()
        except BaseException:
            self.stop()  # release the socket and threads of a half-started daemon
            raise

    def _start(self) -> None:
        # The bucket first: a missing bucket (without auto_create_bucket), refused credentials or
        # an unreachable endpoint stop the daemon at start with the error, before it serves.
        _ = self.service.blobs
        keys = self._api_keys()
        metrics.watch_queue(self.uploader.depth)
        local = self.settings.identity
        self._servers.append(ApiServer(create_app(self.service, self.status, keys, without_key=local),
                                       bind_unix(self.socket_path), "unix"))
        self._owns_socket = True
        if self.settings.api_listen:
            sock = bind_tcp(self.settings.api_listen)
            self._servers.append(ApiServer(create_app(self.service, self.status, keys), sock, "tcp"))
        self.started_at = time.time()
        self.uploader.start()
        self.watcher.start()  # events from here on; the scan below covers what came before
        self.reconcile()
        for server in self._servers:
            server.start()
        self._rescanner = threading.Thread(target=self._rescan_loop, name="rescan", daemon=True)
        self._rescanner.start()
        self._expiry = start_expiry_timer(self.service, self.settings.expiry_interval_seconds)
        log.info("watching %s; API on %s", self.root, self.socket_path)

    def _api_keys(self) -> dict[str, Identity]:
        """Each bearer key, read from its environment variable, and the identity it acts as: the
        daemon's own for ``api.api_key_env``, its own for each of ``api.keys``."""
        settings = self.settings
        keys: dict[str, Identity] = {}
        sources: dict[str, str] = {}
        wanted = [(settings.api_api_key_env, settings.identity)] if settings.api_api_key_env else []
        wanted += [(key.env, key.identity) for key in settings.api_keys]
        for env, identity in wanted:
            value = os.environ.get(env or "")
            if not value:
                if env == settings.api_api_key_env and not settings.api_listen:
                    continue  # only the TCP listener needs this one
                what = "--listen needs a key" if env == settings.api_api_key_env else "api.keys names a key"
                raise ConfigError(f"{what}: set the environment variable {env}")
            logs.protect(value)
            if value in keys and keys[value] != identity:
                raise ConfigError(f"api.keys: {sources[value]} and {env} hold the same key for different identities")
            keys[value], sources[value] = identity, env
        return keys

    def reconcile(self) -> int:
        """Submit every journal entry and every file on disk: new, changed and removed files, and
        unchanged ones whose xattr does not show their registered id.

        First, remove what uploads cut off by a crash (of this daemon, a mount, the CLI) or given
        up during an outage left in the store.

        Per host by construction, so it runs on every host's daemon at start and every rescan
        without a lease: the journal entries and the watch folder are this host's own, and only
        this host's dead processes' uploads are reaped (``FileService.reap_abandoned``)."""
        try:
            self.service.reap_abandoned()
        except S3FilesError as exc:
            log.warning("leftovers of interrupted uploads not removed yet: %s", exc.message)
        tracked = [entry.path for entry in self.journal.all()]
        return self.watcher.scan(tracked)

    def _rescan_loop(self) -> None:
        while not self._stop.wait(self.rescan_seconds):
            try:
                self.reconcile()
            except S3FilesError as exc:
                log.warning("rescan failed: %s", exc.message)

    def stop(self) -> bool:
        """Stop watching, then uploading, then serving. True if every upload ended in time."""
        self._stop.set()
        if self._expiry is not None:
            self._expiry.stop()
        self.watcher.stop()
        clean = self.uploader.stop(self.grace)
        for server in self._servers:
            server.stop()
        self._servers.clear()
        if self._owns_socket:
            self.socket_path.unlink(missing_ok=True)
            self._owns_socket = False
        return clean

    def run(self) -> int:
        """Run in the foreground until SIGTERM or SIGINT; the exit status (0)."""
        stop = threading.Event()

        def on_signal(signum, _frame):
            log.info("received %s, stopping", signal.Signals(signum).name)
            stop.set()

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            self.start()
            # Under systemd (Type=notify): ready once every socket serves; a watchdog ping for as
            # long as the daemon answers its own socket.
            sdnotify.ready_when(lambda: all(server.serving for server in self._servers),
                                lambda: f"watching {self.root}; API on {self.socket_path}", healthy=self._answers)
            while not stop.wait(1.0):
                pass
            sdnotify.stopping()
        finally:
            clean = self.stop() if self.started_at else True  # (a failed start already stopped)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if not clean:
            log.warning("some uploads did not finish in time; the next start completes them")
        return 0

    def _answers(self) -> bool:
        return DaemonClient(self.socket_path, timeout=HEALTH_TIMEOUT).status() is not None

    # --- status ------------------------------------------------------------------------------

    def status(self) -> dict:
        snapshot = self.uploader.snapshot()
        return {
            "object": "s3filesfs.status",
            "version": __version__,
            "pid": os.getpid(),
            "started_at": int(self.started_at or 0),
            "watch_dir": str(self.root),
            "watched_folders": self.watcher.folders,
            "delete": self.uploader.delete,
            "bucket": self.settings.bucket_name,
            "database": self.settings.database,
            "identity": self.settings.identity.to_dict(),
            "queue_length": snapshot["queue_length"],
            "waiting_to_settle": snapshot["waiting_to_settle"],
            "in_flight": snapshot["in_flight"],
            "retrying": snapshot["retrying"],
            "recent_failures": snapshot["recent_failures"],
            "failed": self.journal.failures(),
            "counts": {"journal": self.journal.counts(), "this_run": snapshot["this_run"]},
            "last_sync_at": snapshot["last_sync_at"],
            "not_uploaded": self.watcher.reports(),
        }

    def idle(self) -> bool:
        return self.uploader.idle()
