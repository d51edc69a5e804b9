"""A loopback TCP proxy that can go silent: connections are accepted and read, never answered.

What a user's machine meets when a server or a middlebox hangs (a dead NAT entry, a stuck load
balancer): no refusal, no reset, just no answer. ``silent = True`` switches it on for new and open
connections alike; ``silent = False`` lets traffic through again.
"""

from __future__ import annotations

import socket
import threading

from tests.helpers import free_port


class SilentProxy:
    def __init__(self, upstream_port: int):
        self.upstream = ("127.0.0.1", upstream_port)
        self.port = free_port()
        self.silent = False
        self.accepted = 0  # connections made to it so far
        self._server = socket.create_server(("127.0.0.1", self.port))
        self._sockets: list[socket.socket] = []
        self._closed = False
        threading.Thread(target=self._accept, daemon=True, name="silent-proxy").start()

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            self._sockets.append(client)
            self.accepted += 1
            try:
                upstream = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            self._sockets.append(upstream)
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                if not self.silent:
                    target.sendall(data)
        except OSError:
            pass

    def close(self) -> None:
        self._closed = True
        for sock in [self._server, *self._sockets]:
            try:
                sock.close()
            except OSError:
                pass
