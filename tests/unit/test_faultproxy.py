"""The fault-injecting proxy against a plain HTTP server on loopback: faithful, then faulty."""

from __future__ import annotations

import http.client
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from devenv.faultproxy import SLOW_DOWN_BODY, FaultPlan, FaultProxy


class Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_PUT(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        reply = self.headers["Host"].encode() + b"|" + body
        self.send_response(200)
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def proxy() -> Iterator[FaultProxy]:
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    with FaultProxy(f"http://127.0.0.1:{upstream.server_address[1]}") as running:
        yield running
    upstream.shutdown()
    upstream.server_close()


def put(proxy: FaultProxy, body: bytes) -> tuple[int, bytes]:
    port = int(proxy.url.rsplit(":", 1)[1])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("PUT", "/bucket/key", body=body, headers={"Host": "signed-host:9000"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_forwards_unchanged_then_throttles_resets_and_recovers(proxy: FaultProxy) -> None:
    assert put(proxy, b"data") == (200, b"signed-host:9000|data")  # Host kept: signatures stay valid
    proxy.plan.throttle(2)
    assert put(proxy, b"x") == (503, SLOW_DOWN_BODY)
    assert put(proxy, b"x") == (503, SLOW_DOWN_BODY)
    proxy.plan.reset(1)
    with pytest.raises((ConnectionError, http.client.RemoteDisconnected)):
        put(proxy, b"x")
    assert put(proxy, b"again") == (200, b"signed-host:9000|again")
    proxy.plan.fail_always()
    assert put(proxy, b"x")[0] == 503
    proxy.plan.clear()
    assert put(proxy, b"ok")[0] == 200
    stats = proxy.stats()
    assert (stats.forwarded, stats.throttled, stats.reset) == (3, 3, 1)


def test_refuses_anything_but_a_loopback_http_upstream() -> None:
    with pytest.raises(ValueError, match=r"http://127\.0\.0\.1:PORT only"):
        FaultProxy("http://10.0.0.1:9000")


def test_a_delay_can_be_limited_to_paths_containing_a_text() -> None:
    """The Velero tier slows Barge's repository traffic only, not Velero's own."""
    plan = FaultPlan()
    plan.delay(2.5, path_contains="/plugins/barge/")
    assert plan.next_fault("/bucket/prefix/plugins/barge/shop/config") == ("", 2.5)
    assert plan.next_fault("/bucket/prefix/backups/nightly/velero-backup.json") == ("", 0.0)
    plan.clear()
    assert plan.next_fault("/bucket/prefix/plugins/barge/shop/config") == ("", 0.0)
