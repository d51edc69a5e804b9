"""A simulated remote link: a loopback TCP proxy in front of an S3 server, with latency and a rate cap.

    python bench/link.py --upstream 127.0.0.1:PORT --ttfb-ms 30 --rate-mbps 25 [--port 0]
    python bench/link.py --self-test [--ttfb-ms 30 --rate-mbps 25]

Every connection accepted on the listening port (loopback only) is relayed to ``--upstream``, with:

* **a time to first byte**: the first byte of every response reaches the client ``--ttfb-ms`` after
  the server sent it, as if the server were that round trip away. A response is recognised without
  parsing HTTP: the server's data that follows data from the client (HTTP/1.1 keep-alive carries one
  request after another on a connection, each sent after the previous answer was received). An
  ``Expect: 100-continue`` upload therefore pays it twice, for the ``100 Continue`` and for the
  final answer, as it would on a real link. Connection setup itself is not delayed (on a real link
  a new TCP connection costs one more round trip, and TLS one or two).
* **a rate cap per connection and per direction** (``--rate-mbps``, in MB/s = 10^6 bytes per
  second): a token bucket that lets each request or response start with a burst of 10 ms at the
  rate (64 KiB at least), then paces it at the rate (catching up when the relay fell behind). A
  tool with N connections open moves up to N times the rate, as on S3, where one connection's
  throughput is limited and parallel requests are how clients go faster.

The relay runs on asyncio in one thread; the benchmarks start it as a process of its own
(``LinkProcess``), so its work neither competes with their GIL nor hides in their CPU figures, and
tests or scripts can run it in-process (``Link``). ``--self-test`` starts a small server of its own
behind the link and checks that the time to first byte, on new and reused connections, and the
throughput of one and of two parallel connections in each direction are within 10 % of the
settings; it exits 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

CHUNK = 64 * 1024  # bytes relayed per read: 2.6 ms of a 25 MB/s link
BURST = 64 * 1024  # the least the token bucket lets through without waiting
BURST_SECONDS = 0.01  # and at least this long at the rate: asyncio's sleeps overshoot by up to a millisecond
CATCH_UP_SECONDS = 0.25  # how far behind its pace a message may fall and still catch up
IDLE_TIMEOUT = 120.0  # a connection that moved nothing either way for this long is closed


@dataclass(frozen=True)
class LinkSpec:
    """What the link adds: a time to first byte (seconds) and a rate cap (bytes per second, or None)."""

    ttfb: float = 0.0
    rate: float | None = None

    @classmethod
    def parse(cls, text: str) -> LinkSpec:
        """``30ms,25MBps`` (either part may be left out, or be ``0`` for none): ms or s; MBps/MB/s or KBps."""
        ttfb, rate = 0.0, None
        for part in filter(None, (p.strip() for p in text.split(","))):
            match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(ms|s|mbps|mb/s|kbps|kb/s)", part.lower())
            if not match:
                raise ValueError(f"link {text!r}: expected e.g. '30ms,25MBps' (a latency in ms or s, "
                                 "a rate in MBps or KBps of 10^6 / 10^3 bytes per second)")
            value, unit = float(match.group(1)), match.group(2)
            if unit in ("ms", "s"):
                ttfb = value / 1000 if unit == "ms" else value
            else:
                rate = value * (1e6 if unit.startswith("m") else 1e3) or None
        return cls(ttfb, rate)

    def __str__(self) -> str:
        rate = f"{self.rate / 1e6:g} MB/s per connection and direction" if self.rate else "no rate cap"
        return f"{self.ttfb * 1000:g} ms to first byte, {rate}"

    @property
    def label(self) -> str:
        """Short form for tables: ``30ms,25MBps``."""
        return f"{self.ttfb * 1000:g}ms" + (f",{self.rate / 1e6:g}MBps" if self.rate else "")


class TokenBucket:
    """Paces one direction of one connection at ``rate`` bytes per second.

    Each message (a request, a response) starts with ``burst`` bytes of credit; while it flows, credit
    accrues at the rate up to ``catch_up`` seconds' worth. The cap on a message is therefore
    ``burst + rate x its duration``, and a relay that fell behind (asyncio's sleeps overshoot; a
    busy machine does not run the relay on time) makes the lost time up instead of losing throughput.
    """

    def __init__(self, rate: float | None, burst: int | None = None, catch_up: float = CATCH_UP_SECONDS):
        self.rate = rate
        self.burst = burst if burst is not None else max(BURST, int((rate or 0) * BURST_SECONDS))
        self.most = max(self.burst, int((rate or 0) * catch_up))
        self.restart()

    def restart(self) -> None:
        """A new message: its credit is the burst, whatever the connection saved while idle."""
        self.tokens = float(self.burst)
        self.last = time.monotonic()

    def take(self, size: int) -> float:
        """Spend ``size`` bytes' worth; returns how long to wait before sending them (0 if uncapped).

        The bucket may go into debt: the wait is the time it takes to refill to zero, so that a
        chunk larger than the credit is sent once, late enough, instead of being split.
        """
        if not self.rate:
            return 0.0
        now = time.monotonic()
        self.tokens = min(float(self.most), self.tokens + (now - self.last) * self.rate)
        self.last = now
        self.tokens -= size
        return max(0.0, -self.tokens / self.rate)


class _Connection:
    """One relayed connection: a pump each way, and which side spoke last (a turn starts a message)."""

    def __init__(self, spec: LinkSpec, stats: dict):
        self.spec, self.stats = spec, stats
        self.client_spoke = False  # the client sent data since the server last did: a response is due
        self.server_spoke = True  # the server sent data since the client last did: a request is next
        self.last_moved = time.monotonic()  # when data last went either way

    async def client_to_server(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        bucket = TokenBucket(self.spec.rate)
        while data := await reader.read(CHUNK):
            if self.server_spoke:  # a new request
                self.server_spoke = False
                bucket.restart()
            if wait := bucket.take(len(data)):
                await asyncio.sleep(wait)
            self.client_spoke = True
            writer.write(data)
            await writer.drain()
            self.last_moved = time.monotonic()
            self.stats["up_bytes"] += len(data)

    async def server_to_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        bucket = TokenBucket(self.spec.rate)
        while data := await reader.read(CHUNK):
            if self.client_spoke:  # the first bytes of a response: they arrive a round trip later
                self.client_spoke = False
                self.stats["responses"] += 1
                if self.spec.ttfb:
                    await asyncio.sleep(self.spec.ttfb)
                bucket.restart()
            if wait := bucket.take(len(data)):
                await asyncio.sleep(wait)
            self.server_spoke = True
            writer.write(data)
            await writer.drain()
            self.last_moved = time.monotonic()
            self.stats["down_bytes"] += len(data)


async def _pump(run, reader, writer) -> None:
    """Run one direction; at its end pass the end of stream on (half-close), as TCP would."""
    with contextlib.suppress(ConnectionError, OSError):
        await run(reader, writer)
        if writer.can_write_eof():
            writer.write_eof()


class Link:
    """The proxy: ``await start()`` in a running loop, or ``run_in_thread()`` from ordinary code."""

    def __init__(self, upstream: tuple[str, int], spec: LinkSpec, port: int = 0, host: str = "127.0.0.1"):
        self.upstream, self.spec, self.host, self.port = upstream, spec, host, port
        self.stats = {"connections": 0, "responses": 0, "up_bytes": 0, "down_bytes": 0, "idle_closed": 0}
        self._server: asyncio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> Link:
        self._server = await asyncio.start_server(self._handle, self.host, self.port, limit=4 * CHUNK)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.stats["connections"] += 1
        try:
            server_reader, server_writer = await asyncio.open_connection(*self.upstream, limit=4 * CHUNK)
        except OSError:
            client_writer.close()
            return
        connection = _Connection(self.spec, self.stats)
        # The pumps are held here and the wait has a timeout, so this task always has a live reference
        # (asyncio keeps only weak ones to tasks); a connection idle for IDLE_TIMEOUT is cut, as a
        # server or a middlebox would, rather than held open for ever.
        pumps = asyncio.gather(_pump(connection.client_to_server, client_reader, server_writer),
                               _pump(connection.server_to_client, server_reader, client_writer))
        pumps.add_done_callback(lambda done: done.cancelled() or done.exception())  # seen, even when cut
        try:
            while not pumps.done():
                await asyncio.wait([pumps], timeout=IDLE_TIMEOUT / 4)
                if not pumps.done() and time.monotonic() - connection.last_moved > IDLE_TIMEOUT:
                    self.stats["idle_closed"] += 1
                    pumps.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await pumps
        except asyncio.CancelledError:  # the loop is ending: not re-raised, as Python 3.11's streams
            pumps.cancel()  # log a cancelled handler as an error
        finally:
            # Closed, not waited for: a peer that went away uncleanly can leave wait_closed() pending forever.
            server_writer.close()
            client_writer.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _shut_down(self) -> None:
        """Stop listening and end the open connections (not leave them to the garbage collector)."""
        await self.close()
        tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # --- in a thread of its own, for synchronous callers -------------------------------------

    def run_in_thread(self) -> Link:
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self.start())
            except BaseException as exc:  # noqa: BLE001 - reported to the caller below
                failure.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._shut_down())
            loop.close()

        self._thread = threading.Thread(target=run, name="link", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            raise failure[0]
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def __enter__(self) -> Link:
        return self.run_in_thread()

    def __exit__(self, *exc) -> None:
        self.stop()


class LinkProcess:
    """The proxy as a child process (``python bench/link.py ...``): its own CPU, its own GIL."""

    def __init__(self, upstream: tuple[str, int], spec: LinkSpec):
        self.upstream, self.spec = upstream, spec
        self.process: subprocess.Popen | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> LinkProcess:
        host, port = self.upstream
        command = [sys.executable, str(Path(__file__).resolve()), "--upstream", f"{host}:{port}",
                   "--ttfb-ms", f"{self.spec.ttfb * 1000:g}", "--rate-mbps", f"{(self.spec.rate or 0) / 1e6:g}"]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                                        start_new_session=True)  # Ctrl-C goes to the benchmark, which stops it
        assert self.process.stdout is not None
        line = self.process.stdout.readline()  # "listening on 127.0.0.1:PORT ...", or EOF if it failed
        match = re.search(r"listening on [\d.]+:(\d+)", line)
        if not match:
            self.stop()
            raise RuntimeError(f"link did not start: {line.strip() or 'no output'}")
        self.port = int(match.group(1))
        return self

    def stats(self) -> dict:
        """The link's counters so far: connections, responses (first bytes delayed), bytes each way."""
        if self.process is None or self.process.stdout is None:
            return {}
        self.process.send_signal(signal.SIGUSR1)
        return json.loads(self.process.stdout.readline())

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process is not None and process.stdout is not None:
            process.stdout.close()

    def __enter__(self) -> LinkProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# --- the self-check ----------------------------------------------------------------------------

async def _test_server(host: str = "127.0.0.1") -> asyncio.Server:
    """A line server behind the link: ``GET n`` answers n bytes at once; ``PUT n`` reads n bytes and
    answers how long their arrival took (first to last byte, as the server saw it)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError, asyncio.CancelledError):
            while line := await reader.readline():
                verb, size = line.decode().split()
                if verb == "GET":
                    remaining = int(size)
                    block = b"x" * CHUNK
                    while remaining:
                        writer.write(block[:min(CHUNK, remaining)])
                        remaining -= min(CHUNK, remaining)
                        await writer.drain()
                else:
                    remaining, first = int(size), None
                    while remaining:
                        data = await reader.read(min(remaining, 4 * CHUNK))
                        if not data:
                            return
                        first = first or time.monotonic()
                        remaining -= len(data)
                    writer.write(f"{time.monotonic() - (first or time.monotonic()):.6f}\n".encode())
                    await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, host, 0)


async def _ttfb(port: int, connections: int, requests: int) -> list[float]:
    """Seconds from sending a request to its first answer byte: fresh connections and reused ones."""
    times = []
    for _ in range(connections):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(requests):
            started = time.monotonic()
            writer.write(b"GET 100\n")
            await writer.drain()
            await reader.readexactly(1)
            times.append(time.monotonic() - started)
            await reader.readexactly(99)
        writer.close()
    return times


async def _download(port: int, size: int) -> float:
    """Bytes per second of one response, from its first byte to its last (the TTFB left out)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=4 * CHUNK)
    writer.write(f"GET {size}\n".encode())
    await writer.drain()
    received = len(await reader.readexactly(1))
    first = time.monotonic()
    while received < size:
        received += len(await reader.read(4 * CHUNK))
    rate = (size - 1) / (time.monotonic() - first)
    writer.close()
    return rate


async def _upload(port: int, size: int) -> float:
    """Bytes per second of one upload, as the server received it (first byte to last)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"PUT {size}\n".encode())
    block = b"y" * CHUNK
    sent = 0
    while sent < size:
        writer.write(block[:min(CHUNK, size - sent)])
        sent += min(CHUNK, size - sent)
        await writer.drain()
    seconds = float((await reader.readline()).decode())
    writer.close()
    return size / seconds


async def self_test_async(spec: LinkSpec, seconds: float = 1.5, tolerance: float = 0.10) -> list[tuple[str, bool, str]]:
    """Measure the link against ``spec``; a list of (check, passed, what was measured)."""
    server = await _test_server()
    upstream = server.sockets[0].getsockname()[:2]
    link = await Link(upstream, spec).start()
    checks: list[tuple[str, bool, str]] = []
    try:
        times = await _ttfb(link.port, connections=3, requests=5)
        got = statistics.median(times)
        want = spec.ttfb
        slack = max(tolerance * want, 0.003)  # a loopback round trip and the event loop's wake-up
        checks.append((f"time to first byte {want * 1000:g} ms (15 requests on 3 connections)",
                       abs(got - want) <= slack,
                       f"median {got * 1000:.1f} ms, min {min(times) * 1000:.1f}, max {max(times) * 1000:.1f}"))
        if spec.rate:
            size = int(spec.rate * seconds)
            for name, measure in (("download", _download), ("upload", _upload)):
                for parallel in (1, 2):
                    rates = await asyncio.gather(*(measure(link.port, size) for _ in range(parallel)))
                    ok = all(abs(r - spec.rate) <= tolerance * spec.rate for r in rates)
                    checks.append((f"{name} rate {spec.rate / 1e6:g} MB/s on each of {parallel} connection(s)", ok,
                                   ", ".join(f"{r / 1e6:.2f} MB/s" for r in rates)))
    finally:
        await link.close()
        server.close()
    return checks


def self_test(spec: LinkSpec, **kwargs) -> list[tuple[str, bool, str]]:
    return asyncio.run(self_test_async(spec, **kwargs))


# --- the command -------------------------------------------------------------------------------

def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--upstream", metavar="HOST:PORT", help="the server to relay to")
    parser.add_argument("--port", type=int, default=0, help="port to listen on, on 127.0.0.1 (default: a free one)")
    parser.add_argument("--ttfb-ms", type=float, default=30.0, help="added time to first byte of each response (ms)")
    parser.add_argument("--rate-mbps", type=float, default=25.0,
                        help="rate cap per connection and direction, in MB/s (10^6 bytes); 0 for none")
    parser.add_argument("--self-test", action="store_true", help="measure the link against the settings and exit")
    args = parser.parse_args(argv)
    spec = LinkSpec(args.ttfb_ms / 1000, args.rate_mbps * 1e6 or None)
    if args.self_test:
        checks = self_test(spec)
        for name, ok, detail in checks:
            print(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}")
        return 0 if all(ok for _, ok, _ in checks) else 1
    if not args.upstream:
        parser.error("--upstream HOST:PORT is required (or --self-test)")
    host, _, port = args.upstream.rpartition(":")
    if not host or not port.isdigit():
        parser.error(f"--upstream {args.upstream}: expected HOST:PORT")

    async def serve() -> None:
        link = await Link((host, int(port)), spec, port=args.port).start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        # SIGUSR1: one JSON line of counters on stdout (LinkProcess.stats), to count a tool's requests.
        loop.add_signal_handler(signal.SIGUSR1, lambda: print(json.dumps(link.stats), flush=True))
        print(f"listening on 127.0.0.1:{link.port}, relaying to {host}:{port} with {spec}", flush=True)
        await stop.wait()
        await link.close()

    asyncio.run(serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
