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
import urllib.parse
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
_SPARE_WORKERS = 8  # workers beyond the admitted streams: health checks and streams being refused

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

    def replace(self, session: _Session, limit: int) -> _Session | None:
        """Admit ``session`` in place of its node's older one (returned), or, for a new node, while
        fewer than ``limit`` nodes are connected (RESOURCE_EXHAUSTED otherwise)."""
        with self._lock:
            old = self._by_node.get(session.node)
            if old is None and len(self._by_node) >= limit:
                raise _StreamEnd(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"this coordinator already serves its limit of {limit} agents; retry later",
                )
            self._by_node[session.node] = session
            return old

    def remove(self, session: _Session) -> None:
        with self._lock:
            if self._by_node.get(session.node) is session:
                del self._by_node[session.node]

    def all(self) -> list[_Session]:
        with self._lock:
            return list(self._by_node.values())


@dataclass(eq=False)
class _Handshake:
    """A stream not yet authenticated: it holds a handshake slot until it is accepted or ends."""

    peer: str
    mailbox: queue.Queue[_Item]
    authenticating: bool = False  # its Hello arrived: no longer evicted in favour of a newer stream
    evicted: str = ""  # why it was closed to make room ("" while it holds its slot)


class _Handshakes:
    """The slots of streams that have not authenticated yet, apart from the agents' slots.

    Bounded in all (``limit``) and per peer address (``per_peer``), so idle streams cannot starve
    agents and one peer cannot take every slot. A stream over a bound evicts the oldest stream (of
    that peer, or of all) still waiting for its Hello: an agent sends Hello at once, so only idle
    streams grow old there, and an agent sharing an address with a flood still gets in. When every
    such stream is already authenticating, the new one is refused (RESOURCE_EXHAUSTED)."""

    def __init__(self, limit: int, per_peer: int) -> None:
        if limit < 1 or per_peer < 1:
            raise InvalidInput(f"handshake limits must be at least 1 (got {limit} and {per_peer} per peer)")
        self._limit, self._per_peer = limit, per_peer
        self._lock = threading.Lock()
        self._pending: list[_Handshake] = []  # oldest first

    def enter(self, peer: str, mailbox: queue.Queue[_Item]) -> _Handshake:
        handshake = _Handshake(peer, mailbox)
        with self._lock:
            of_peer = [h for h in self._pending if h.peer == peer]
            if len(of_peer) >= self._per_peer:
                self._evict_oldest(of_peer, f"more than {self._per_peer} unauthenticated streams from {peer}")
            if len(self._pending) >= self._limit:
                self._evict_oldest(self._pending, f"more than {self._limit} unauthenticated streams")
            self._pending.append(handshake)
        return handshake

    def _evict_oldest(self, candidates: list[_Handshake], why: str) -> None:
        idle = next((h for h in candidates if not h.authenticating), None)
        if idle is None:
            raise _StreamEnd(grpc.StatusCode.RESOURCE_EXHAUSTED, f"{why}, all authenticating; retry")
        self._pending.remove(idle)
        idle.evicted = f"{why}: the oldest without a Hello is closed"
        idle.mailbox.put(_Close(idle.evicted))

    def hello(self, handshake: _Handshake) -> None:
        """Its Hello arrived: it keeps its slot while it authenticates, unless it was just evicted."""
        with self._lock:
            if handshake.evicted:
                raise _StreamEnd(grpc.StatusCode.RESOURCE_EXHAUSTED, handshake.evicted)
            handshake.authenticating = True

    def leave(self, handshake: _Handshake) -> None:
        with self._lock:
            if handshake in self._pending:
                self._pending.remove(handshake)


def peer_address(peer: str) -> str:
    """The remote address of a gRPC peer string without its port: ``ipv4:10.0.0.7:51234`` ->
    ``10.0.0.7``, ``ipv6:%5Bfd00::7%5D:51234`` (gRPC escapes the brackets) -> ``fd00::7``;
    anything else unchanged."""
    kind, _, rest = peer.partition(":")
    rest = urllib.parse.unquote(rest)
    if kind == "ipv6" and rest.startswith("["):
        return rest[1:].partition("]")[0]
    if kind == "ipv4":
        return rest.rpartition(":")[0]
    return peer


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
    bounds the agents' streams (each holds two threads). Streams that have not authenticated have
    slots of their own (``max_handshakes``, at most ``max_handshakes_per_peer`` from one address)
    and ``hello_timeout_s`` to send their Hello, so idle streams can neither take the agents' slots
    nor the workers the health checks need.
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
        hello_timeout_s: float = 5.0,
        max_handshakes: int = 256,
        max_handshakes_per_peer: int = 8,
    ) -> None:
        if agent_timeout_s <= heartbeat_interval_s:
            raise InvalidInput(
                f"agent_timeout_s={agent_timeout_s} must exceed heartbeat_interval_s={heartbeat_interval_s}"
            )
        if hello_timeout_s <= 0:
            raise InvalidInput(f"hello_timeout_s={hello_timeout_s} must be positive")
        self._hub = hub
        self._authenticator = authenticator
        self._address = address
        self._tls = tls
        self._clock = clock
        self._heartbeat_interval_s = heartbeat_interval_s
        self._agent_timeout_s = agent_timeout_s
        self._coordinator_id = coordinator_id or socket.gethostname()
        self._max_agents = max_agents
        self._hello_timeout_s = hello_timeout_s
        self._handshakes = _Handshakes(max_handshakes, max_handshakes_per_peer)
        self._max_handshakes = max_handshakes
        self._sessions = _Sessions()
        self._recent = _RecentIds(_RECENT_IDS)
        self._health = health.HealthServicer(experimental_non_blocking=True)
        self._serving = threading.Event()
        self._server: grpc.Server | None = None
        self._port = 0

    # --- lifecycle -----------------------------------------------------------------------------------

    def start(self) -> None:
        """Listen and serve; health reports SERVING."""
        # Every stream holds a worker (plus a reader thread) for its lifetime. The server admits at
        # most max_agents accepted and max_handshakes unauthenticated streams, so the spare workers
        # stay free for health checks and for refusing streams; gRPC's own limit only backs that up.
        workers = self._max_agents + self._max_handshakes + _SPARE_WORKERS
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
        session: _Session | None = None
        try:
            session = self._open(requests, mailbox, context)
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

    def _open(
        self, requests: Iterator[pb.AgentMessage], mailbox: queue.Queue[_Item], context: grpc.ServicerContext
    ) -> _Session:
        """Authenticate the stream's Hello, greet the agent and hand the session to the hub. Until
        then the stream holds a handshake slot, not an agent's."""
        if not self._serving.is_set():
            raise TemporaryError(STANDBY_REFUSAL)
        token = _bearer_token(context.invocation_metadata())
        handshake = self._handshakes.enter(peer_address(context.peer()), mailbox)
        try:
            threading.Thread(target=_pump, args=(requests, mailbox), name="agent-reader", daemon=True).start()
            hello, message_id = self._first_hello(mailbox)
            self._handshakes.hello(handshake)
            identity = self._authenticator.authenticate(token, hello.node_name)
            return self._accept(hello, identity, message_id, mailbox)
        finally:
            self._handshakes.leave(handshake)

    def _accept(self, hello: Hello, identity: str, message_id: str, mailbox: queue.Queue[_Item]) -> _Session:
        session = _Session(hello.node_name, hello, identity, mailbox)
        old = self._sessions.replace(session, self._max_agents)
        session.send(Welcome(self._coordinator_id, self._heartbeat_interval_s))
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
            item = mailbox.get(timeout=self._hello_timeout_s)
        except queue.Empty:
            raise _StreamEnd(
                grpc.StatusCode.DEADLINE_EXCEEDED, f"no Hello within {self._hello_timeout_s}s"
            ) from None
        if isinstance(item, _Close):
            raise _StreamEnd(grpc.StatusCode.RESOURCE_EXHAUSTED, item.reason)
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
