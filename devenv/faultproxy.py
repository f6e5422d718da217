"""A fault-injecting HTTP proxy on loopback, in front of a real S3 server (tests only).

Clients point their S3 endpoint at the proxy; it forwards every request unchanged (the Host header
too, so SigV4 signatures stay valid) to the upstream server and relays the answer, except when the
current ``FaultPlan`` says otherwise:

* ``throttle(n)``: the next ``n`` requests get ``503 SlowDown`` (S3's throttling answer);
* ``reset(n)``: the next ``n`` requests have their connection reset without an answer;
* ``fail_fraction(p)``: each request is throttled with probability ``p`` (seeded, repeatable);
* ``fail_always()``: every request is throttled (a store that stays down);
* ``delay(seconds, path_contains="")``: every request (whose path contains the text) waits that
  long before it is forwarded: e.g. only Barge's repository traffic, not Velero's;
* ``clear()``: back to a faithful proxy.

``stats()`` counts what was forwarded and what was injected, so a test can tell that its faults
really hit the client.
"""

from __future__ import annotations

import http.client
import random
import socket
import struct
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from urllib.parse import urlsplit

SLOW_DOWN_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "upgrade"}
)
_UPSTREAM_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class ProxyStats:
    forwarded: int
    throttled: int
    reset: int


class FaultPlan:
    """What to do with the next requests; thread-safe, changed by the test while traffic flows."""

    def __init__(self, seed: int = 0) -> None:
        self._lock = threading.Lock()
        self._random = random.Random(seed)  # noqa: S311 - fault injection, not cryptography
        self._throttle_next = 0
        self._reset_next = 0
        self._fraction = 0.0
        self._always = False
        self._delay_s = 0.0
        self._delay_path = ""

    def throttle(self, count: int) -> None:
        with self._lock:
            self._throttle_next += count

    def reset(self, count: int) -> None:
        with self._lock:
            self._reset_next += count

    def fail_fraction(self, fraction: float) -> None:
        with self._lock:
            self._fraction = fraction

    def fail_always(self) -> None:
        with self._lock:
            self._always = True

    def delay(self, seconds: float, path_contains: str = "") -> None:
        with self._lock:
            self._delay_s, self._delay_path = seconds, path_contains

    def clear(self) -> None:
        with self._lock:
            self._throttle_next = self._reset_next = 0
            self._fraction, self._always, self._delay_s, self._delay_path = 0.0, False, 0.0, ""

    def next_fault(self, path: str = "") -> tuple[str, float]:
        """("throttle" | "reset" | "", delay in seconds) for the request arriving now."""
        with self._lock:
            delay_s = self._delay_s if self._delay_path in path else 0.0
            if self._reset_next:
                self._reset_next -= 1
                return "reset", delay_s
            if self._throttle_next:
                self._throttle_next -= 1
                return "throttle", delay_s
            if self._always or (self._fraction and self._random.random() < self._fraction):
                return "throttle", delay_s
            return "", delay_s


class FaultProxy:
    """``with FaultProxy("http://127.0.0.1:9000") as proxy:`` then use ``proxy.url`` as the endpoint."""

    def __init__(self, upstream: str, plan: FaultPlan | None = None) -> None:
        parts = urlsplit(upstream)
        if parts.scheme != "http" or parts.hostname != "127.0.0.1" or parts.port is None:
            raise ValueError(f"upstream {upstream!r}: the proxy forwards to http://127.0.0.1:PORT only")
        self.upstream_port = parts.port
        self.plan = plan or FaultPlan()
        self._counts = {"forwarded": 0, "throttled": 0, "reset": 0}
        self._count_lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_class(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fault-proxy", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def stats(self) -> ProxyStats:
        with self._count_lock:
            return ProxyStats(**self._counts)

    def count(self, what: str) -> None:
        with self._count_lock:
            self._counts[what] += 1


def _handler_class(proxy: FaultProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(_ProxyHandler):
        owner = proxy

    return Handler


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as S3 clients expect
    owner: FaultProxy

    def do_GET(self) -> None:
        self._handle()

    def do_HEAD(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: a test's output is for its own findings."""

    def _handle(self) -> None:
        body = self._read_body()
        fault, delay_s = self.owner.plan.next_fault(self.path)
        if delay_s:
            time.sleep(delay_s)
        if fault == "reset":
            self.owner.count("reset")
            self._reset_connection()
        elif fault == "throttle":
            self.owner.count("throttled")
            self._answer(503, [("Content-Type", "application/xml"), ("Retry-After", "0")], SLOW_DOWN_BODY)
        else:
            self.owner.count("forwarded")
            self._forward(body)

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            return self._read_chunked()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _read_chunked(self) -> bytes:
        parts: list[bytes] = []
        while True:
            size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(parts)
            parts.append(self.rfile.read(size))
            self.rfile.readline()

    def _forward(self, body: bytes) -> None:
        port = self.owner.upstream_port
        upstream = http.client.HTTPConnection("127.0.0.1", port, timeout=_UPSTREAM_TIMEOUT_S)
        try:
            upstream.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for name, value in self.headers.items():
                if name.lower() not in _HOP_BY_HOP:
                    upstream.putheader(name, value)
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                upstream.putheader("Content-Length", str(len(body)))
            upstream.endheaders(body or None)
            response = upstream.getresponse()
            payload = response.read()
            headers = [(k, v) for k, v in response.getheaders() if k.lower() not in _HOP_BY_HOP]
        except OSError:
            self._answer(502, [("Content-Type", "text/plain")], b"upstream unreachable")
            return
        finally:
            upstream.close()
        self._answer(response.status, headers, payload, reason=response.reason)

    def _answer(
        self, status: int, headers: list[tuple[str, str]], payload: bytes, reason: str | None = None
    ) -> None:
        self.send_response_only(status, reason)
        for name, value in headers:
            if name.lower() != "content-length":
                self.send_header(name, value)
        if self.command != "HEAD" or not any(k.lower() == "content-length" for k, _ in headers):
            self.send_header("Content-Length", str(len(payload)))
        else:
            self.send_header("Content-Length", next(v for k, v in headers if k.lower() == "content-length"))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)
        self.wfile.flush()

    def _reset_connection(self) -> None:
        """Close with RST (SO_LINGER 0): the client sees 'connection reset by peer'."""
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self.connection.close()


__all__ = ["SLOW_DOWN_BODY", "FaultPlan", "FaultProxy", "ProxyStats"]
