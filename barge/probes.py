"""What Kubernetes probes and Prometheus scrapes, shared by the coordinator and the agent: one
HTTP endpoint for ``/metrics``, ``/healthz`` (alive) and ``/readyz``, and SIGTERM/SIGINT as a stop
event. (Named for what it serves, apart from the coordinator's ``world.observe``, which reads the
caches.)

``/healthz`` answers 200 while ``problems()`` is empty (the liveness probe restarts the container
otherwise) and ``/readyz`` 200 only while ``ready()`` is true (traffic only).
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from barge.clock import Clock
from barge.errors import InvalidInput

log = logging.getLogger(__name__)

STALL_AFTER_S = 180.0  # far beyond one pass of any vital loop, API request timeouts included


class Vitals:
    """The loops a process is useless without, for ``/healthz``. Each beats once per pass; one that
    died (an unexpected exception ended it) or has not beaten for ``stall_after_s`` is a problem,
    and the liveness probe restarts the process. A Go controller's panic ends its process, and
    client-go's leader-election health check fails a leader that stopped renewing; a Python thread
    dies alone and leaves the process running, so the loops report here. ``on_death`` runs at each
    death (the coordinator gives up its Lease and exits)."""

    def __init__(self, clock: Clock, stall_after_s: float = STALL_AFTER_S) -> None:
        if stall_after_s <= 0:
            raise InvalidInput(f"the stall bound must be positive, not {stall_after_s}s")
        self._clock = clock
        self._stall_after_s = stall_after_s
        self._lock = threading.Lock()
        self._beats: dict[str, float] = {}
        self._deaths: dict[str, str] = {}
        self.on_death: Callable[[str, str], None] = lambda loop, reason: None

    def beat(self, loop: str) -> None:
        """``loop`` made progress (and is watched from now on)."""
        with self._lock:
            self._beats[loop] = self._clock.monotonic()

    def retire(self, loop: str) -> None:
        """``loop`` ended on purpose (e.g. with its leader term): no longer watched."""
        with self._lock:
            self._beats.pop(loop, None)

    def died(self, loop: str, reason: str) -> None:
        """``loop`` ended unexpectedly: a problem until the process restarts."""
        with self._lock:
            self._beats.pop(loop, None)
            self._deaths[loop] = reason
        self.on_death(loop, reason)

    def run(
        self, loop: str, body: Callable[[], None], stopping: threading.Event, *, stalls: bool = True
    ) -> None:
        """Run ``body`` (a loop that beats ``loop``) to its end. An exception that ends it while
        ``stopping`` is not set is a death; any other end retires it. With ``stalls`` False the
        loop is watched for its death only: for loops that wait longer than any useful stall bound
        on purpose, each wait bounded by its own timeout (a quiet watch, a maintenance run)."""
        if stalls:
            self.beat(loop)
        try:
            body()
        except Exception as err:
            if not stopping.is_set():
                log.exception("%s died", loop)
                self.died(loop, f"{type(err).__name__}: {err}")
                return
        self.retire(loop)

    def watched(self) -> list[str]:
        """The loops alive and watched for stalls."""
        with self._lock:
            return sorted(self._beats)

    def problems(self) -> list[str]:
        """What is wrong, one line per loop; empty while healthy."""
        now = self._clock.monotonic()
        with self._lock:
            dead = [f"{loop} died: {reason}" for loop, reason in sorted(self._deaths.items())]
            stalled = [
                f"{loop} made no progress for {now - at:.0f}s (limit {self._stall_after_s:.0f}s)"
                for loop, at in sorted(self._beats.items())
                if now - at > self._stall_after_s
            ]
        return dead + stalled


class ObservabilityServer:
    def __init__(
        self,
        host: str,
        port: int,
        registry: CollectorRegistry,
        ready: Callable[[], bool] = lambda: True,
        problems: Callable[[], list[str]] = list,
    ) -> None:
        handler = _handler_class(registry, ready, problems)
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="observability", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> ObservabilityServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _handler_class(
    registry: CollectorRegistry, ready: Callable[[], bool], problems: Callable[[], list[str]]
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._reply(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                wrong = problems()
                self._reply(503 if wrong else 200, "".join(f"{w}\n" for w in wrong).encode() or b"ok\n")
            elif path == "/readyz":
                ok = ready()
                self._reply(200 if ok else 503, b"ready\n" if ok else b"not ready\n")
            else:
                self._reply(404, b"not found\n")

        def _reply(self, code: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            """Scrapes and probes every few seconds would drown the logs."""

    return Handler


def stop_on_signals(stop: threading.Event) -> None:
    """SIGTERM (Kubernetes stopping the pod) and SIGINT set ``stop``; the main loop shuts down cleanly."""

    def handle(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
