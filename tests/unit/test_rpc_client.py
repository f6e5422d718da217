"""AgentClient against a real ControlServer over TLS on 127.0.0.1."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from barge.clock import SystemClock
from barge.control.messages import (
    Assignment,
    AssignmentKind,
    AssignmentResult,
    CoordinatorCommand,
    CrRef,
    Drain,
    Heartbeat,
    Hello,
    Outcome,
    ProgressReport,
    RunningAssignment,
    VolumeMode,
    Welcome,
)
from barge.rpc.client import STANDBY_RETRY_S, AgentClient
from devenv.pki import ServingPki
from tests.rpcharness import RecordingHub, make_server, pki_in, wait_until

pytestmark = pytest.mark.timeout(60)

RUNNING = (RunningAssignment("uid-0", 4, 50, 100),)
ASSIGNMENT = Assignment(
    assignment_id="uid-1",
    epoch=2,
    kind=AssignmentKind.DOWNLOAD,
    cr=CrRef("DataDownload", "velero", "restore-1-xyz", "uid-1"),
    pod_uid="pod-1",
    volume_name="pv-1",
    volume_mode=VolumeMode.BLOCK,
    backup_storage_location="default",
    source_namespace="app",
    snapshot_id="snap-1",
)
RESULT = AssignmentResult("uid-1", 2, Outcome.COMPLETED, path="/var/lib/kubelet/x", bytes_total=10)


class RecordingHandler:
    def __init__(self) -> None:
        self.commands: list[CoordinatorCommand] = []
        self.lock = threading.Lock()

    def handle(self, command: CoordinatorCommand) -> None:
        with self.lock:
            self.commands.append(command)

    def seen(self) -> list[CoordinatorCommand]:
        with self.lock:
            return list(self.commands)


class Tokens:
    """A token source that counts reads and can be changed, like a rotated projected token file."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.reads = 0

    def __call__(self) -> str:
        self.reads += 1
        return self.token


@pytest.fixture
def pki(tmp_path: Path) -> ServingPki:
    return pki_in(tmp_path / "pki")


def make_client(pki: ServingPki, port: int, handler: RecordingHandler, tokens: Tokens) -> AgentClient:
    return AgentClient(
        f"127.0.0.1:{port}",
        ca_file=pki.ca.cert_path,
        token_source=tokens,
        hello=lambda: Hello("node-a", "v-test", 2),
        handler=handler,
        running=lambda: RUNNING,
        clock=SystemClock(),
    )


@pytest.fixture
def handler() -> RecordingHandler:
    return RecordingHandler()


@pytest.fixture
def started(pki: ServingPki, handler: RecordingHandler) -> Iterator[tuple[RecordingHub, AgentClient]]:
    hub = RecordingHub(on_connect=[ASSIGNMENT])
    server = make_server(pki, hub)
    client = make_client(pki, server.port, handler, Tokens("token-a"))
    client.start()
    yield hub, client
    client.stop()
    server.stop(0)


def test_hello_welcome_assignment_progress_result(
    started: tuple[RecordingHub, AgentClient], handler: RecordingHandler
) -> None:
    hub, client = started
    wait_until(lambda: client.connected, what="the Welcome")
    wait_until(lambda: len(handler.seen()) == 2, what="the assignment")
    assert handler.seen() == [Welcome("coordinator-test", 0.2), ASSIGNMENT]
    assert hub.of("connected") == [Hello("node-a", "v-test", 2, RUNNING)]
    client.send(ProgressReport("uid-1", 2, 5, 10))
    client.send(RESULT)
    wait_until(lambda: RESULT in hub.events(), what="the result")
    progress_and_result = [e for e in hub.events() if not isinstance(e, Heartbeat)]
    assert progress_and_result == [ProgressReport("uid-1", 2, 5, 10), RESULT]


def test_heartbeats_carry_the_running_assignments(started: tuple[RecordingHub, AgentClient]) -> None:
    hub, _ = started
    beats = wait_until(
        lambda: [e for e in hub.events() if isinstance(e, Heartbeat)][2:], what="three heartbeats"
    )
    assert beats[0] == Heartbeat(RUNNING)
    assert hub.of("disconnected") == []


def test_a_result_queued_as_its_work_leaves_the_running_list_goes_before_the_heartbeat(
    pki: ServingPki, handler: RecordingHandler
) -> None:
    """The work finishes just as a heartbeat is built: its result is queued, then it leaves the
    running list the heartbeat carries. Sent first, that heartbeat told the coordinator the work was
    lost, and it assigned the work again."""
    job = RunningAssignment("uid-1", 2, 10, 10)
    phase = ["running"]  # -> "finishing" (set by the test) -> "finished"

    def running() -> tuple[RunningAssignment, ...]:
        if phase[0] == "finishing":
            client.send(RESULT)  # as the agent does: the result first, then out of the list
            phase[0] = "finished"
        return (job,) if phase[0] == "running" else ()

    hub = RecordingHub()
    server = make_server(pki, hub)
    client = AgentClient(
        f"127.0.0.1:{server.port}",
        ca_file=pki.ca.cert_path,
        token_source=Tokens("token-a"),
        hello=lambda: Hello("node-a", "v-test", 2),
        handler=handler,
        running=running,
        clock=SystemClock(),
    )
    client.start()
    try:
        wait_until(lambda: any(isinstance(e, Heartbeat) for e in hub.events()), what="a first heartbeat")
        phase[0] = "finishing"
        wait_until(lambda: RESULT in hub.events(), what="the result")
        events = hub.events()
        at_result = events.index(RESULT)
        assert Heartbeat(()) not in events[:at_result], events
    finally:
        client.stop()
        server.stop(0)


def test_reconnects_after_a_restart_and_resends_hello_and_buffered_events(
    pki: ServingPki, handler: RecordingHandler
) -> None:
    first_hub = RecordingHub()
    server = make_server(pki, first_hub)
    port = server.port
    tokens = Tokens("token-a")
    client = make_client(pki, port, handler, tokens)
    client.start()
    try:
        wait_until(lambda: client.connected, what="the first connection")
        server.stop(0)
        wait_until(lambda: not client.connected, what="the disconnect")
        client.send(ProgressReport("uid-1", 2, 1, 10))
        client.send(RESULT)
        client.send(ProgressReport("uid-1", 2, 7, 10))  # replaces the older report while offline
        client.send(Heartbeat())  # stale by the time we reconnect: not buffered
        second_hub = RecordingHub(on_connect=[Drain(30.0, "node cordoned")])
        server = make_server(pki, second_hub, port=port)
        wait_until(lambda: Drain(30.0, "node cordoned") in handler.seen(), what="the reconnect")
        assert second_hub.of("connected") == [Hello("node-a", "v-test", 2, RUNNING)]
        wait_until(lambda: len(second_hub.events()) >= 2, what="the buffered events")
        buffered = [e for e in second_hub.events() if not isinstance(e, Heartbeat)]
        assert buffered == [RESULT, ProgressReport("uid-1", 2, 7, 10)]
        assert tokens.reads >= 2  # the token is read afresh for every connection
    finally:
        client.stop()
        server.stop(0)


def test_a_result_is_resent_after_a_reconnect_and_the_duplicate_is_ignored(
    started: tuple[RecordingHub, AgentClient], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="barge.rpc.server")
    hub, client = started
    wait_until(lambda: client.connected, what="the Welcome")
    client.send(RESULT)
    wait_until(lambda: RESULT in hub.events(), what="the result")
    hub.sessions[0].close("test: drop the agent")
    wait_until(lambda: len(hub.of("connected")) == 2, what="the reconnect")
    wait_until(lambda: "ignoring duplicate message" in caplog.text, what="the re-sent result")
    assert [e for e in hub.events() if isinstance(e, AssignmentResult)] == [RESULT]


def test_a_refused_token_is_retried_and_reread(pki: ServingPki, handler: RecordingHandler) -> None:
    hub = RecordingHub()
    server = make_server(pki, hub)
    tokens = Tokens("not-a-token")
    client = make_client(pki, server.port, handler, tokens)
    client.start()
    try:
        wait_until(lambda: tokens.reads >= 2, what="a retry")
        assert not client.connected
        assert hub.calls == []
        tokens.token = "token-a"
        wait_until(lambda: client.connected, what="the connection with the rotated token")
        assert hub.of("connected") == [Hello("node-a", "v-test", 2, RUNNING)]
    finally:
        client.stop()
        server.stop(0)


def test_stop_ends_the_stream_promptly(started: tuple[RecordingHub, AgentClient]) -> None:
    hub, client = started
    wait_until(lambda: client.connected, what="the Welcome")
    client.stop(timeout=5)
    assert not client.connected
    wait_until(lambda: hub.of("disconnected"), what="the server to notice")


def test_a_standby_refusal_is_retried_soon_however_long_it_lasts(
    pki: ServingPki, handler: RecordingHandler
) -> None:
    """A leaderless spell (an API server outage) must not push agents into 30 s backoffs."""
    hub = RecordingHub()
    server = make_server(pki, hub)
    server.set_serving(False)
    tokens = Tokens("token-a")
    client = make_client(pki, server.port, handler, tokens)
    client.start()
    try:
        wait_until(lambda: tokens.reads >= 5, what="five refused attempts", timeout=25)
        assert not client.connected
        server.set_serving(True)
        started = time.monotonic()
        wait_until(lambda: client.connected, what="the connection once a leader serves", timeout=10)
        assert time.monotonic() - started <= STANDBY_RETRY_S[1] + 1.0
    finally:
        client.stop()
        server.stop(0)
