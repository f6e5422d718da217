"""A Service on loopback: forwards each TCP connection to a backend that is ready right now.

It plays kube-proxy for the local environment: each new connection goes to a random ready
backend, so an agent refused by a standby coordinator reaches the leader on a later attempt, as
in a cluster.
"""

from __future__ import annotations

import contextlib
import random
import socket
import threading
from dataclasses import dataclass

from devenv.processes import free_port, http_ok


@dataclass(frozen=True)
class Backend:
    port: int  # where connections go
    ready_port: int  # where GET /readyz answers 200 while the backend should get traffic


class LocalService:
    def __init__(self, backends: list[Backend], port: int | None = None) -> None:
        self.backends = list(backends)
        self.port = port or free_port()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept_loop, name="local-service", daemon=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> LocalService:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            for conn in list(self._connections):
                with contextlib.suppress(OSError):
                    conn.close()

    def _ready_backend(self) -> Backend | None:
        ready = []
        for backend in self.backends:
            with contextlib.suppress(OSError):
                if http_ok("127.0.0.1", backend.ready_port, "/readyz"):
                    ready.append(backend)
        return random.choice(ready) if ready else None  # noqa: S311 - load spreading, not security

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        backend = self._ready_backend()
        if backend is None:
            client.close()  # like a Service with no ready endpoints: the client retries
            return
        try:
            upstream = socket.create_connection(("127.0.0.1", backend.port), timeout=5)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        with self._lock:
            self._connections |= {client, upstream}
        threading.Thread(target=self._pipe, args=(upstream, client), daemon=True).start()
        self._pipe(client, upstream)

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    sock.close()
            with self._lock:
                self._connections -= {source, sink}
