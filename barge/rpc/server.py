"""The coordinator's gRPC endpoint: accepts agent streams and hands them to an ``AgentHub``.

Each agent holds one ``Connect`` stream. A handler thread owns it: it reads the agent's messages
from a mailbox (filled by a reader thread) and writes the coordinator's commands (queued by
``AgentSession.send``), so every hub call for one session happens on one thread, in order.
"""

from __future__ import annotations

import logging
import queue
import socket
import threading
import uuid
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from barge.clock import Clock
from barge.control.messages import CoordinatorCommand, Hello, Welcome
from barge.control.ports import AgentHub, Authenticator
from barge.errors import InvalidInput, TemporaryError, Unauthenticated
from barge.rpc.convert import command_to_pb, event_from_pb
from barge.rpc.generated import control_pb2 as pb
from barge.rpc.generated import control_pb2_grpc as pb_grpc
from barge.rpc.status import STANDBY_REFUSAL, code_for

log = logging.getLogger(__name__)

SERVICE_NAME = "barge.v1.AgentControl"
_POLL_S = 0.5  # longest wait between checks of an agent's silence
_RECENT_IDS = 65536  # message ids remembered for duplicate detection (all nodes together)

# Ping idle agents so dead TCP peers are noticed; allow agents to ping us every 10 s.
SERVER_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
)


@dataclass(frozen=True)
class ServerTls:
    """PEM files of the coordinator's serving certificate (its SANs must name the agents' target)."""

    cert_file: Path
    key_file: Path

    def credentials(self) -> grpc.ServerCredentials:
        key = _read_pem(self.key_file, "TLS private key")
        cert = _read_pem(self.cert_file, "TLS certificate")
        return grpc.ssl_server_credentials([(key, cert)])


def _read_pem(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise InvalidInput(f"cannot read the {what} {path}: {err.strerror}; fix the path") from err


# --- mailbox items: everything the handler thread of one stream reacts to ----------------------------


@dataclass(frozen=True)
class _Inbound:
    message: pb.AgentMessage


@dataclass(frozen=True)
class _Outbound:
    message: pb.CoordinatorMessage


@dataclass(frozen=True)
class _Close:
    reason: str


@dataclass(frozen=True)
class _Ended:
    reason: str


_Item = _Inbound | _Outbound | _Close | _Ended


class _Session:
    """An accepted agent stream (implements ``barge.control.ports.AgentSession``)."""

    def __init__(self, node: str, hello: Hello, identity: str, mailbox: queue.Queue[_Item]) -> None:
        self.node = node
        self.hello = hello
        self.identity = identity
        self._mailbox = mailbox
        self._closed = threading.Event()
        self.delivery = threading.RLock()  # held while the hub is called about this session
        self.accepted = False  # the hub took it (agent_connected returned)
        self.disconnected = False  # the hub was told it ended

    def send(self, command: CoordinatorCommand) -> None:
        if self._closed.is_set():
            log.debug("dropping %s for %s: session closed", type(command).__name__, self.node)
            return
        self._mailbox.put(_Outbound(command_to_pb(command, uuid.uuid4().hex)))

    def close(self, reason: str) -> None:
        if not self._closed.is_set():
            self._closed.set()
            self._mailbox.put(_Close(reason))

    def __repr__(self) -> str:
        return f"<AgentSession node={self.node} identity={self.identity}>"


class _Sessions:
    """One session per node; a newer connection replaces the older."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_node: dict[str, _Session] = {}

    def replace(self, session: _Session) -> _Session | None:
        with self._lock:
            old = self._by_node.get(session.node)
            self._by_node[session.node] = session
            return old

    def remove(self, session: _Session) -> None:
        with self._lock:
            if self._by_node.get(session.node) is session:
                del self._by_node[session.node]

    def all(self) -> list[_Session]:
        with self._lock:
            return list(self._by_node.values())


class _RecentIds:
    """Bounded memory of (node, message_id) pairs already delivered: drops duplicates and replays."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._seen: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._lock = threading.Lock()

    def seen(self, node: str, message_id: str) -> bool:
        with self._lock:
            return bool(message_id) and (node, message_id) in self._seen

    def remember(self, node: str, message_id: str) -> None:
        if not message_id:
            return
        with self._lock:
            self._seen[(node, message_id)] = None
            self._seen.move_to_end((node, message_id))
            while len(self._seen) > self._capacity:
                self._seen.popitem(last=False)


def _bearer_token(metadata: Sequence[tuple[str, str | bytes]] | None) -> str:
    for key, value in metadata or ():
        if key.lower() == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    raise Unauthenticated("missing 'authorization: Bearer <token>' metadata; send the agent's token")


def _pump(requests: Iterator[pb.AgentMessage], mailbox: queue.Queue[_Item]) -> None:
    """Reader thread: moves the agent's messages into the mailbox until the stream ends."""
    try:
        for message in requests:
            mailbox.put(_Inbound(message))
        mailbox.put(_Ended("the agent closed the stream"))
    except Exception as err:  # any read failure (cancel, reset) just ends the stream
        mailbox.put(_Ended(f"reading from the agent failed: {err}"))


class _StreamEnd(Exception):
    """Ends a stream from inside the handler with a status code and message."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class ControlServer:
    """The ``AgentControl`` gRPC server with TLS, keepalive and the standard health service.

    ``address`` is ``host:port`` (port 0 picks one: see ``port``). The Welcome tells agents to send a
    heartbeat every ``heartbeat_interval_s``; an agent silent for ``agent_timeout_s`` is dropped.
    ``coordinator_id`` (default: the host name) names this replica in the Welcome; ``max_agents``
    bounds the concurrent streams (each holds two threads).
    """

    def __init__(
        self,
        hub: AgentHub,
        authenticator: Authenticator,
        *,
        address: str,
        tls: ServerTls,
        clock: Clock,
        heartbeat_interval_s: float,
        agent_timeout_s: float,
        coordinator_id: str | None = None,
        max_agents: int = 1024,
    ) -> None:
        if agent_timeout_s <= heartbeat_interval_s:
            raise InvalidInput(
                f"agent_timeout_s={agent_timeout_s} must exceed heartbeat_interval_s={heartbeat_interval_s}"
            )
        self._hub = hub
        self._authenticator = authenticator
        self._address = address
        self._tls = tls
        self._clock = clock
        self._heartbeat_interval_s = heartbeat_interval_s
        self._agent_timeout_s = agent_timeout_s
        self._coordinator_id = coordinator_id or socket.gethostname()
        self._max_agents = max_agents
        self._sessions = _Sessions()
        self._recent = _RecentIds(_RECENT_IDS)
        self._health = health.HealthServicer(experimental_non_blocking=True)
        self._serving = threading.Event()
        self._server: grpc.Server | None = None
        self._port = 0

    # --- lifecycle -----------------------------------------------------------------------------------

    def start(self) -> None:
        """Listen and serve; health reports SERVING."""
        # Every stream holds a worker (plus a reader thread) for its lifetime; the spare workers serve
        # health checks. Beyond the limit new streams fail fast with RESOURCE_EXHAUSTED, never hang.
        workers = self._max_agents + 8
        server = grpc.server(
            ThreadPoolExecutor(max_workers=workers, thread_name_prefix="control-rpc"),
            options=SERVER_OPTIONS,
            maximum_concurrent_rpcs=workers,
        )
        pb_grpc.add_AgentControlServicer_to_server(_Servicer(self), server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        try:
            self._port = server.add_secure_port(self._address, self._tls.credentials())
        except RuntimeError as err:
            raise InvalidInput(f"cannot listen on {self._address}: {err}; choose a free address") from err
        server.start()
        self._server = server
        self.set_serving(True)

    def stop(self, grace: float | None = None) -> None:
        """Close every agent stream, report NOT_SERVING and stop after ``grace`` seconds at most."""
        self.set_serving(False)
        if self._server is not None:
            self._server.stop(grace).wait()
            self._server = None

    @property
    def port(self) -> int:
        """The bound port (the actual one when the address asked for port 0)."""
        return self._port

    def set_serving(self, serving: bool) -> None:
        """Report (NOT_)SERVING. Not serving closes all agent streams and refuses new ones (UNAVAILABLE):
        a coordinator that is not the leader must not hold agents."""
        response = health_pb2.HealthCheckResponse
        status = response.SERVING if serving else response.NOT_SERVING
        if serving:
            self._serving.set()
        else:
            self._serving.clear()
            for session in self._sessions.all():
                session.close("the coordinator stopped serving (not the leader or shutting down)")
        self._health.set("", status)
        self._health.set(SERVICE_NAME, status)

    # --- one stream -----------------------------------------------------------------------------------

    def _handle_stream(
        self, requests: Iterator[pb.AgentMessage], context: grpc.ServicerContext
    ) -> Iterator[pb.CoordinatorMessage]:
        mailbox: queue.Queue[_Item] = queue.Queue()
        context.add_callback(lambda: mailbox.put(_Ended("the RPC ended")))
        threading.Thread(target=_pump, args=(requests, mailbox), name="agent-reader", daemon=True).start()
        session: _Session | None = None
        try:
            session = self._open(mailbox, context)
            yield from self._serve(session, mailbox)
        except _StreamEnd as end:
            context.abort(end.code, str(end))
        except Exception as err:
            if code_for(err) is grpc.StatusCode.INTERNAL:
                log.exception("agent stream failed")
            context.abort(code_for(err), str(err) or type(err).__name__)
        finally:
            if session is not None:
                self._end(session)

    def _open(self, mailbox: queue.Queue[_Item], context: grpc.ServicerContext) -> _Session:
        """Authenticate the stream's Hello, greet the agent and hand the session to the hub."""
        if not self._serving.is_set():
            raise TemporaryError(STANDBY_REFUSAL)
        token = _bearer_token(context.invocation_metadata())
        hello, message_id = self._first_hello(mailbox)
        identity = self._authenticator.authenticate(token, hello.node_name)
        session = _Session(hello.node_name, hello, identity, mailbox)
        session.send(Welcome(self._coordinator_id, self._heartbeat_interval_s))
        old = self._sessions.replace(session)
        if old is not None:
            old.close("replaced by a newer connection from the same node")
            self._report_disconnect(old)
        with session.delivery:
            try:
                self._hub.agent_connected(session)
            except BaseException:
                self._sessions.remove(session)
                raise
            session.accepted = True
        self._recent.remember(session.node, message_id)
        if not self._serving.is_set():  # set_serving(False) ran while we were accepting
            session.close("the coordinator stopped serving (not the leader or shutting down)")
        log.info("agent %s connected (%s)", session.node, identity)
        return session

    def _first_hello(self, mailbox: queue.Queue[_Item]) -> tuple[Hello, str]:
        try:
            item = mailbox.get(timeout=self._agent_timeout_s)
        except queue.Empty:
            raise _StreamEnd(
                grpc.StatusCode.DEADLINE_EXCEEDED, f"no Hello within {self._agent_timeout_s}s"
            ) from None
        if not isinstance(item, _Inbound):
            raise _StreamEnd(grpc.StatusCode.CANCELLED, "the stream ended before Hello")
        event = event_from_pb(item.message)
        if not isinstance(event, Hello):
            raise InvalidInput(f"the first message must be Hello, got {type(event).__name__}")
        if not event.node_name:
            raise InvalidInput("Hello.node_name is empty; set it to the agent's node name")
        return event, item.message.message_id

    def _serve(self, session: _Session, mailbox: queue.Queue[_Item]) -> Iterator[pb.CoordinatorMessage]:
        last_heard = self._clock.monotonic()
        while True:
            silent_for = self._clock.monotonic() - last_heard
            if silent_for >= self._agent_timeout_s:
                raise _StreamEnd(
                    grpc.StatusCode.UNAVAILABLE,
                    f"no message from node {session.node} for {silent_for:.1f}s; the agent must send "
                    f"a heartbeat every {self._heartbeat_interval_s}s",
                )
            try:
                item = mailbox.get(timeout=min(_POLL_S, self._agent_timeout_s - silent_for))
            except queue.Empty:
                continue
            match item:
                case _Outbound():
                    yield item.message
                case _Inbound():
                    last_heard = self._clock.monotonic()
                    self._deliver(session, item.message)
                case _Close():
                    raise _StreamEnd(grpc.StatusCode.UNAVAILABLE, f"closed by the coordinator: {item.reason}")
                case _Ended():
                    log.info("agent %s stream ended: %s", session.node, item.reason)
                    return

    def _deliver(self, session: _Session, message: pb.AgentMessage) -> None:
        """Hand one event to the hub, once per message id. A hub failure ends the stream (the agent
        reconnects and re-sends), so the id is remembered only after the hub took the event."""
        if self._recent.seen(session.node, message.message_id):
            log.debug("ignoring duplicate message %s from %s", message.message_id, session.node)
            return
        event = event_from_pb(message)
        with session.delivery:
            if session.disconnected:
                return
            self._hub.agent_event(session, event)
        self._recent.remember(session.node, message.message_id)

    def _end(self, session: _Session) -> None:
        session.close("stream ended")
        self._sessions.remove(session)
        self._report_disconnect(session)

    def _report_disconnect(self, session: _Session) -> None:
        with session.delivery:
            if not session.accepted or session.disconnected:
                return
            session.disconnected = True
        try:
            self._hub.agent_disconnected(session)
        except Exception:
            log.exception("hub failed to handle the disconnect of %s", session.node)
        log.info("agent %s disconnected", session.node)


class _Servicer(pb_grpc.AgentControlServicer):
    def __init__(self, server: ControlServer) -> None:
        self._server = server

    def Connect(  # the generated servicer's method name
        self, request_iterator: Iterator[pb.AgentMessage], context: grpc.ServicerContext
    ) -> Iterator[pb.CoordinatorMessage]:
        return self._server._handle_stream(request_iterator, context)
