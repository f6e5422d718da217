"""ControlServer over real gRPC with TLS on 127.0.0.1, driven by a raw wire-level agent."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from barge.clock import SystemClock
from barge.control.messages import (
    Assignment,
    AssignmentKind,
    CrRef,
    Heartbeat,
    Hello,
    ProgressReport,
    RunningAssignment,
    VolumeMode,
    Welcome,
)
from barge.errors import InvalidInput, NotFound
from barge.rpc.convert import command_from_pb
from barge.rpc.generated import control_pb2 as pb
from barge.rpc.server import SERVICE_NAME, ControlServer, ServerTls, peer_address
from devenv.pki import ServingPki, make_serving_pki
from tests.rpcharness import (
    TOKENS,
    WAIT_S,
    RawAgent,
    RecordingHub,
    TokenAuthenticator,
    channel_to,
    make_server,
    pki_in,
    wait_until,
)

pytestmark = pytest.mark.timeout(60)

HELLO_A = Hello("node-a", "v-test", 2, (RunningAssignment("a1", 3, 10, 100),))
ASSIGNMENT = Assignment(
    assignment_id="uid-1",
    epoch=1,
    kind=AssignmentKind.UPLOAD,
    cr=CrRef("DataUpload", "velero", "backup-1-abc", "uid-1"),
    pod_uid="pod-1",
    volume_name="pv-1",
    volume_mode=VolumeMode.FILESYSTEM,
    backup_storage_location="default",
    source_namespace="app",
    source_pvc="data",
)


@pytest.fixture
def pki(tmp_path: Path) -> ServingPki:
    return pki_in(tmp_path / "pki")


@pytest.fixture
def hub() -> RecordingHub:
    return RecordingHub()


@pytest.fixture
def server(pki: ServingPki, hub: RecordingHub) -> Iterator[ControlServer]:
    server = make_server(pki, hub)
    yield server
    server.stop(0)


@pytest.fixture
def channel(pki: ServingPki, server: ControlServer) -> Iterator[grpc.Channel]:
    with channel_to(pki, server.port) as channel:
        yield channel


def connect(channel: grpc.Channel, token: str | None = "token-a", hello: Hello = HELLO_A) -> RawAgent:
    agent = RawAgent(channel, token)
    agent.send(hello)
    return agent


def test_hello_is_welcomed_and_events_reach_the_hub(
    channel: grpc.Channel, hub: RecordingHub, server: ControlServer
) -> None:
    hub.on_connect = [ASSIGNMENT]
    agent = connect(channel)
    assert command_from_pb(agent.next()) == Welcome("coordinator-test", 0.2)
    assert command_from_pb(agent.next()) == ASSIGNMENT
    agent.send(ProgressReport("uid-1", 1, 5, 10))
    wait_until(hub.events, what="the progress report")
    assert hub.of("connected") == [HELLO_A]
    assert hub.events() == [ProgressReport("uid-1", 1, 5, 10)]
    agent.close()
    wait_until(lambda: hub.of("disconnected"), what="the disconnect")
    assert hub.kinds() == ["connected", "event", "disconnected"]


@pytest.mark.parametrize("token", [None, "", "forged"])
def test_a_missing_or_bad_token_is_unauthenticated_and_never_reaches_the_hub(
    channel: grpc.Channel, hub: RecordingHub, token: str | None
) -> None:
    code, details = connect(channel, token=token).ended_with()
    assert code is grpc.StatusCode.UNAUTHENTICATED
    assert details
    assert hub.calls == []


def test_a_token_of_another_node_is_permission_denied(channel: grpc.Channel, hub: RecordingHub) -> None:
    code, details = connect(channel, token="token-b").ended_with()
    assert code is grpc.StatusCode.PERMISSION_DENIED
    assert "node-b cannot speak for node node-a" in details
    assert hub.calls == []


def test_the_first_message_must_be_hello(channel: grpc.Channel, hub: RecordingHub) -> None:
    agent = RawAgent(channel, "token-a")
    agent.send(Heartbeat())
    code, details = agent.ended_with()
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert "first message must be Hello" in details
    assert hub.calls == []


def test_an_empty_envelope_ends_the_stream_as_invalid(channel: grpc.Channel, hub: RecordingHub) -> None:
    agent = connect(channel)
    agent.next()  # Welcome
    agent.send_raw(pb.AgentMessage(message_id="empty"))
    code, details = agent.ended_with()
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert "carries no event" in details
    wait_until(lambda: hub.of("disconnected"), what="the disconnect")


def test_the_hub_can_refuse_an_agent_with_a_barge_error(channel: grpc.Channel, hub: RecordingHub) -> None:
    hub.refuse_with = NotFound("node node-a is not in the cluster")
    code, details = connect(channel).ended_with()
    assert code is grpc.StatusCode.NOT_FOUND
    assert details == "node node-a is not in the cluster"
    assert hub.calls == []


def test_a_duplicate_message_id_is_delivered_once(channel: grpc.Channel, hub: RecordingHub) -> None:
    agent = connect(channel)
    agent.next()
    agent.send(ProgressReport("uid-1", 1, 5, 10), message_id="m-1")
    agent.send(ProgressReport("uid-1", 1, 5, 10), message_id="m-1")
    agent.send(ProgressReport("uid-1", 1, 6, 10), message_id="m-2")
    wait_until(lambda: len(hub.events()) >= 2, what="two progress reports")
    agent.send(Heartbeat(), message_id="m-1")  # a replayed id is ignored whatever it carries
    agent.send(Heartbeat(), message_id="m-3")  # in order after the replay: once it is seen, so was that
    wait_until(lambda: len(hub.events()) >= 3, what="the heartbeat")
    assert hub.events() == [ProgressReport("uid-1", 1, 5, 10), ProgressReport("uid-1", 1, 6, 10), Heartbeat()]


def test_health_follows_set_serving_and_not_serving_refuses_agents(
    channel: grpc.Channel, server: ControlServer, hub: RecordingHub
) -> None:
    health = health_pb2_grpc.HealthStub(channel)

    def status(service: str) -> int:
        request = health_pb2.HealthCheckRequest(service=service)
        return health.Check(request, timeout=5).status  # type: ignore[no-any-return]

    serving = health_pb2.HealthCheckResponse.SERVING
    not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
    assert (status(""), status(SERVICE_NAME)) == (serving, serving)
    agent = connect(channel)
    agent.next()
    server.set_serving(False)
    assert (status(""), status(SERVICE_NAME)) == (not_serving, not_serving)
    code, details = agent.ended_with()
    assert (code, "stopped serving" in details) == (grpc.StatusCode.UNAVAILABLE, True)
    code, _ = connect(channel).ended_with()
    assert code is grpc.StatusCode.UNAVAILABLE
    server.set_serving(True)
    assert status("") == serving
    assert isinstance(command_from_pb(connect(channel).next()), Welcome)


def test_a_silent_agent_is_dropped_after_the_timeout(pki: ServingPki, hub: RecordingHub) -> None:
    server = make_server(pki, hub, agent_timeout_s=0.6)
    try:
        with channel_to(pki, server.port) as channel:
            agent = connect(channel)
            agent.next()
            code, details = agent.ended_with()
            assert code is grpc.StatusCode.UNAVAILABLE
            assert "no message from node node-a" in details
            wait_until(lambda: hub.of("disconnected"), what="the disconnect")
    finally:
        server.stop(0)


def test_heartbeats_keep_an_agent_connected(pki: ServingPki, hub: RecordingHub) -> None:
    server = make_server(pki, hub, agent_timeout_s=0.6)
    try:
        with channel_to(pki, server.port) as channel:
            agent = connect(channel)
            agent.next()
            for sent in range(1, 7):  # 1.2 s, twice the timeout
                agent.send(Heartbeat())
                wait_until(lambda n=sent: len(hub.events()) == n, what="the heartbeat")
                assert agent.responses.empty()
                time.sleep(0.2)
            assert hub.of("disconnected") == []
    finally:
        server.stop(0)


def test_a_reconnect_from_the_same_node_replaces_the_older_session(
    channel: grpc.Channel, hub: RecordingHub
) -> None:
    first = connect(channel)
    first.next()
    second = connect(channel)
    second.next()
    code, details = first.ended_with()
    assert code is grpc.StatusCode.UNAVAILABLE
    assert "replaced by a newer connection" in details
    assert hub.kinds() == ["connected", "disconnected", "connected"]
    old, new = hub.sessions
    assert hub.of("disconnected") == [old]
    old.send(ASSIGNMENT)  # a closed session drops commands
    new.send(ASSIGNMENT)
    assert command_from_pb(second.next()) == ASSIGNMENT
    second.send(ProgressReport("uid-1", 1, 1, 2))
    wait_until(hub.events, what="the progress report")
    assert hub.calls[-1][0] == "event"
    second.close()
    wait_until(lambda: len(hub.of("disconnected")) == 2, what="the second disconnect")


def test_an_unreadable_certificate_says_which_file(
    pki: ServingPki, hub: RecordingHub, tmp_path: Path
) -> None:
    server = ControlServer(
        hub,
        TokenAuthenticator(TOKENS),
        address="127.0.0.1:0",
        tls=ServerTls(tmp_path / "missing.crt", pki.serving.key_path),
        clock=SystemClock(),
        heartbeat_interval_s=1,
        agent_timeout_s=3,
    )
    with pytest.raises(InvalidInput, match=r"cannot read the TLS certificate .*missing\.crt"):
        server.start()


def health_status(channel: grpc.Channel) -> int:
    request = health_pb2.HealthCheckRequest(service=SERVICE_NAME)
    return health_pb2_grpc.HealthStub(channel).Check(request, timeout=WAIT_S).status  # type: ignore[no-any-return]


def ended(streams: list[RawAgent], count: int) -> list[tuple[grpc.StatusCode, str]]:
    """How the first ``count`` of ``streams`` to end ended; the others are still open."""
    wait_until(lambda: sum(not s.responses.empty() for s in streams) >= count, what=f"{count} streams to end")
    endings = [stream.ended_with() for stream in streams if not stream.responses.empty()]
    assert len(endings) == count
    return endings


def test_idle_streams_keep_neither_an_agent_nor_the_health_check_out(
    pki: ServingPki, hub: RecordingHub
) -> None:
    """16 streams that never say Hello, twice the agent slots: the health check still answers and
    an agent still connects, long before any idle stream's Hello deadline."""
    server = make_server(pki, hub, hello_timeout_s=60, max_handshakes=8, max_handshakes_per_peer=4)
    try:
        with channel_to(pki, server.port) as channel:
            idle = [RawAgent(channel, "token-b") for _ in range(16)]
            assert health_status(channel) == health_pb2.HealthCheckResponse.SERVING
            agent = connect(channel)
            assert isinstance(command_from_pb(agent.next()), Welcome)
            assert hub.of("connected") == [HELLO_A]
            # Each idle stream beyond 4 from this address closed the oldest; the agent closed one more.
            evicted = ended(idle, 13)
            assert {code for code, _ in evicted} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
            assert all("unauthenticated streams from 127.0.0.1" in details for _, details in evicted)
            agent.close()
    finally:
        server.stop(0)


def test_a_stream_without_hello_is_closed_at_the_hello_deadline(pki: ServingPki, hub: RecordingHub) -> None:
    server = make_server(pki, hub, hello_timeout_s=0.5, agent_timeout_s=30)
    try:
        with channel_to(pki, server.port) as channel:
            code, details = RawAgent(channel, "token-a").ended_with()
            assert (code, details) == (grpc.StatusCode.DEADLINE_EXCEEDED, "no Hello within 0.5s")
            assert isinstance(command_from_pb(connect(channel).next()), Welcome)
    finally:
        server.stop(0)


def test_one_address_cannot_take_the_handshake_slots_of_another(tmp_path: Path, hub: RecordingHub) -> None:
    """Streams from 127.0.0.1 wait for their Hello while ::1 opens many more than the slots, over
    several connections: only ::1's own oldest streams are closed, and 127.0.0.1's still get in."""
    pki = make_serving_pki(tmp_path / "pki", ip_addresses=("127.0.0.1", "::1"))
    server = make_server(
        pki, hub, host="[::]", hello_timeout_s=60, max_handshakes=4, max_handshakes_per_peer=2
    )
    try:
        with contextlib.ExitStack() as stack:
            own = stack.enter_context(channel_to(pki, server.port))
            waiting = [RawAgent(own, "token-a") for _ in range(2)]
            assert health_status(own) == health_pb2.HealthCheckResponse.SERVING  # both streams arrived
            floods = [stack.enter_context(channel_to(pki, server.port, "::1")) for _ in range(5)]
            flooding = [RawAgent(flood, "token-b") for flood in floods for _ in range(2)]
            evicted = ended(flooding, 8)
            assert {code for code, _ in evicted} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
            assert all("unauthenticated streams from ::1" in details for _, details in evicted)
            waiting[0].send(HELLO_A)
            assert isinstance(command_from_pb(waiting[0].next()), Welcome)
            assert waiting[1].responses.empty()
    finally:
        server.stop(0)


def test_agents_beyond_the_limit_are_refused_but_a_known_node_may_reconnect(
    pki: ServingPki, hub: RecordingHub
) -> None:
    server = make_server(pki, hub, max_agents=1)
    try:
        with channel_to(pki, server.port) as channel:
            connect(channel).next()
            code, details = connect(channel, "token-b", Hello("node-b", "v-test", 1)).ended_with()
            assert (code, "limit of 1 agents" in details) == (grpc.StatusCode.RESOURCE_EXHAUSTED, True)
            assert isinstance(command_from_pb(connect(channel).next()), Welcome)  # node-a again
            assert [node for kind, node, _ in hub.calls if kind == "connected"] == ["node-a", "node-a"]
    finally:
        server.stop(0)


@pytest.mark.parametrize(
    ("peer", "address"),
    [
        ("ipv4:10.0.0.7:51234", "10.0.0.7"),
        ("ipv6:%5Bfd00::7%5D:51234", "fd00::7"),
        ("ipv6:[fd00::7]:51234", "fd00::7"),
        ("unix:/run/barge.sock", "unix:/run/barge.sock"),
    ],
)
def test_the_peer_address_drops_the_port(peer: str, address: str) -> None:
    assert peer_address(peer) == address
