"""A real ControlServer on loopback with recording test doubles of the control-plane ports."""

from __future__ import annotations

import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import grpc

from barge.clock import SystemClock
from barge.control.messages import AgentEvent, CoordinatorCommand, Hello
from barge.control.ports import AgentSession
from barge.errors import PermissionDenied, Unauthenticated
from barge.rpc.convert import event_to_pb
from barge.rpc.generated import control_pb2 as pb
from barge.rpc.generated import control_pb2_grpc as pb_grpc
from barge.rpc.server import ControlServer, ServerTls
from devenv.pki import ServingPki, make_serving_pki
from devenv.waiting import wait_for

WAIT_S = 10.0  # upper bound of every wait in these tests; normally they take milliseconds
T = TypeVar("T")


def wait_until(condition: Callable[[], T | None], timeout: float = WAIT_S, what: str = "condition") -> T:
    """``devenv.waiting.wait_for`` at this harness's pace (these waits normally take milliseconds)."""
    return wait_for(condition, timeout, what=what, interval=0.01)


@dataclass
class RecordingHub:
    """Records every hub call as (what, node, payload); optionally greets new sessions with commands."""

    on_connect: list[CoordinatorCommand] = field(default_factory=list)
    refuse_with: Exception | None = None
    calls: list[tuple[str, str, object]] = field(default_factory=list)
    sessions: list[AgentSession] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def agent_connected(self, session: AgentSession) -> None:
        if self.refuse_with is not None:
            raise self.refuse_with
        with self.lock:
            self.calls.append(("connected", session.node, session.hello))
            self.sessions.append(session)
        for command in self.on_connect:
            session.send(command)

    def agent_event(self, session: AgentSession, event: AgentEvent) -> None:
        with self.lock:
            self.calls.append(("event", session.node, event))

    def agent_disconnected(self, session: AgentSession) -> None:
        with self.lock:
            self.calls.append(("disconnected", session.node, session))

    def of(self, what: str) -> list[object]:
        with self.lock:
            return [payload for kind, _, payload in self.calls if kind == what]

    def events(self) -> list[AgentEvent]:
        return [e for e in self.of("event") if not isinstance(e, Hello)]  # type: ignore[misc]

    def kinds(self) -> list[str]:
        with self.lock:
            return [kind for kind, _, _ in self.calls]


class TokenAuthenticator:
    """Knows one token per node."""

    def __init__(self, tokens: dict[str, str]) -> None:
        self.tokens = tokens

    def authenticate(self, token: str, claimed_node: str) -> str:
        node = self.tokens.get(token)
        if node is None:
            raise Unauthenticated("unknown token")
        if node != claimed_node:
            raise PermissionDenied(f"token of node {node} cannot speak for node {claimed_node}")
        return f"agent@{node}"


TOKENS = {"token-a": "node-a", "token-b": "node-b"}


def make_server(
    pki: ServingPki,
    hub: RecordingHub,
    *,
    port: int = 0,
    host: str = "127.0.0.1",
    agent_timeout_s: float = 5.0,
    max_agents: int = 8,
    hello_timeout_s: float = 5.0,
    max_handshakes: int = 8,
    max_handshakes_per_peer: int = 4,
) -> ControlServer:
    server = ControlServer(
        hub,
        TokenAuthenticator(TOKENS),
        address=f"{host}:{port}",
        tls=ServerTls(pki.serving.cert_path, pki.serving.key_path),
        clock=SystemClock(),
        heartbeat_interval_s=0.2,
        agent_timeout_s=agent_timeout_s,
        coordinator_id="coordinator-test",
        max_agents=max_agents,
        hello_timeout_s=hello_timeout_s,
        max_handshakes=max_handshakes,
        max_handshakes_per_peer=max_handshakes_per_peer,
    )
    server.start()
    return server


def pki_in(directory: Path) -> ServingPki:
    return make_serving_pki(directory)


def channel_to(pki: ServingPki, port: int, host: str = "127.0.0.1") -> grpc.Channel:
    """A channel of its own (its own connection, from ``host``'s loopback address family)."""
    credentials = grpc.ssl_channel_credentials(root_certificates=pki.ca.cert_path.read_bytes())
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return grpc.secure_channel(target, credentials, options=(("grpc.use_local_subchannel_pool", 1),))


class RawAgent:
    """Speaks the wire protocol directly, to send what a well-behaved AgentClient never would."""

    def __init__(self, channel: grpc.Channel, token: str | None) -> None:
        self._requests: queue.Queue[pb.AgentMessage | None] = queue.Queue()
        self.responses: queue.Queue[pb.CoordinatorMessage | grpc.RpcError | None] = queue.Queue()
        metadata = (("authorization", f"Bearer {token}"),) if token is not None else ()
        self.call = pb_grpc.AgentControlStub(channel).Connect(self._outgoing(), metadata=metadata)
        threading.Thread(target=self._read, daemon=True).start()

    def _outgoing(self) -> Iterator[pb.AgentMessage]:
        while (message := self._requests.get()) is not None:
            yield message

    def _read(self) -> None:
        try:
            for message in self.call:
                self.responses.put(message)
            self.responses.put(None)
        except grpc.RpcError as err:
            self.responses.put(err)

    def send(self, event: AgentEvent, message_id: str | None = None) -> str:
        message_id = message_id or uuid.uuid4().hex
        self._requests.put(event_to_pb(event, message_id))
        return message_id

    def send_raw(self, message: pb.AgentMessage) -> None:
        self._requests.put(message)

    def next(self) -> pb.CoordinatorMessage:
        item = self.responses.get(timeout=WAIT_S)
        assert isinstance(item, pb.CoordinatorMessage), f"expected a message, got {item!r}"
        return item

    def ended_with(self) -> tuple[grpc.StatusCode, str]:
        """Skip messages until the stream fails; its status code and details."""
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            item = self.responses.get(timeout=WAIT_S)
            if isinstance(item, grpc.RpcError):
                assert isinstance(item, grpc.Call)
                return item.code(), item.details() or ""
            assert item is not None, "the stream ended with OK"
        raise AssertionError("the stream did not end")

    def close(self) -> None:
        self._requests.put(None)
        self.call.cancel()
