"""The agent's side of the control plane: one long-lived stream to the coordinator, kept alive.

``AgentClient.run`` connects, says Hello (with the work in progress, so a new leader can adopt it),
heartbeats, hands every command to the ``CommandHandler``, and reconnects with jittered exponential
backoff whenever the stream ends. Events sent while disconnected wait in the ``Outbox``.
"""

from __future__ import annotations

import logging
import random
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import assert_never

import grpc

from barge.clock import Clock
from barge.control.messages import (
    AgentEvent,
    AssignmentResult,
    CoordinatorCommand,
    Heartbeat,
    Hello,
    MaintenanceResult,
    ProgressReport,
    RunningAssignment,
    SweepResult,
    Welcome,
)
from barge.control.naming import AGENT_RECONNECT_MAX_S
from barge.control.ports import CommandHandler
from barge.errors import BargeError, InvalidInput
from barge.retry import Backoff
from barge.rpc.convert import command_from_pb, event_from_pb, event_to_pb
from barge.rpc.generated import control_pb2 as pb
from barge.rpc.generated import control_pb2_grpc as pb_grpc
from barge.rpc.status import STANDBY_REFUSAL

log = logging.getLogger(__name__)

RECONNECT_BACKOFF = Backoff(first_s=0.5, max_s=AGENT_RECONNECT_MAX_S)
# A standby's refusal is not an overload: the Service sends the next connection to another replica,
# so retry soon (a leader may be elected any moment, e.g. when the API server answers again). A
# standby refuses before authenticating, so a fleet retrying at this pace costs it TLS handshakes
# only; the new leader has its agents back within about a second and a half of taking over.
STANDBY_RETRY_S = (0.25, 1.5)
RESULT_RETENTION_S = 600.0  # how long a sent result is re-sent on every reconnect
RESULT_RETENTION_MAX = 256

# Ping every 20 s (the server allows one per 10 s) so a dead coordinator is noticed within ~30 s.
CLIENT_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
)


def standby_retry_delay(rng: random.Random) -> float:
    """Seconds to wait after a standby refused the stream: short, jittered, not growing."""
    return rng.uniform(*STANDBY_RETRY_S)


class Outbox:
    """Agent events waiting for the stream. Thread-safe.

    Progress is coalesced (only the latest report per assignment waits). Results are never dropped
    while waiting and, because a stream can break right after a write, every result sent is
    re-sent with its original message id on each reconnect for ``RESULT_RETENTION_S``: the
    coordinator ignores the duplicates. Hello and heartbeats are not buffered (they are made afresh).
    """

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._cond = threading.Condition()
        self._pending: OrderedDict[str, pb.AgentMessage] = OrderedDict()  # key -> message
        self._sent_results: OrderedDict[str, tuple[pb.AgentMessage, float]] = OrderedDict()
        self._generation = 0  # counts streams
        self._stream = 0  # the open stream's generation; 0 = none open
        self._woken = False

    def put(self, event: AgentEvent) -> None:
        message = event_to_pb(event, uuid.uuid4().hex)
        with self._cond:
            match event:
                case ProgressReport():
                    key = f"progress/{event.assignment_id}"
                    self._pending.pop(key, None)
                    self._pending[key] = message
                case AssignmentResult():
                    self._pending[f"result/{message.message_id}"] = message
                case SweepResult() | MaintenanceResult():  # sent once: the leader asks again if lost
                    self._pending[f"other/{message.message_id}"] = message
                case Hello() | Heartbeat():
                    if not self._stream:
                        return  # made afresh on the next stream
                    self._pending[f"other/{message.message_id}"] = message
                case _:
                    assert_never(event)
            self._cond.notify_all()

    def open_stream(self) -> int:
        """Start a stream: queue the results sent recently again, ahead of what waits. Returns its id."""
        with self._cond:
            self._expire_sent_results()
            resend = OrderedDict((f"result/{msg.message_id}", msg) for msg, _ in self._sent_results.values())
            resend.update(self._pending)
            self._pending = resend
            self._generation += 1
            self._stream = self._generation
            return self._stream

    def close_stream(self) -> None:
        with self._cond:
            self._stream = 0
            self._cond.notify_all()

    def take(self, stream: int, timeout: float | None) -> pb.AgentMessage | None:
        """The next message for ``stream``; None after ``timeout`` or when the stream was closed."""
        with self._cond:
            self._cond.wait_for(lambda: self._pending or self._woken or self._stream != stream, timeout)
            self._woken = False
            if self._stream != stream or not self._pending:
                return None
            _, message = self._pending.popitem(last=False)
            if message.WhichOneof("body") == "result":
                self._sent_results[message.message_id] = (message, self._clock.monotonic())
                while len(self._sent_results) > RESULT_RETENTION_MAX:
                    self._sent_results.popitem(last=False)
            return message

    def wake(self) -> None:
        """Make a waiting ``take`` return (None) so its caller re-reads its heartbeat schedule."""
        with self._cond:
            self._woken = True
            self._cond.notify_all()

    def is_open(self, stream: int) -> bool:
        with self._cond:
            return self._stream == stream

    def waiting(self) -> list[AgentEvent]:
        """What waits to be sent (for tests and diagnostics)."""
        with self._cond:
            return [event_from_pb(m) for m in self._pending.values()]

    def _expire_sent_results(self) -> None:
        horizon = self._clock.monotonic() - RESULT_RETENTION_S
        for message_id, (_, sent_at) in list(self._sent_results.items()):
            if sent_at < horizon:
                del self._sent_results[message_id]


class _Heartbeats:
    """When the next heartbeat is due on one stream; none until the Welcome says how often."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._interval: float | None = None
        self._due = 0.0

    def welcome(self, interval_s: float) -> None:
        with self._lock:
            self._interval = interval_s if interval_s > 0 else None
            self._due = self._clock.monotonic() + (interval_s if interval_s > 0 else 0.0)

    def seconds_until_due(self) -> float | None:
        with self._lock:
            if self._interval is None:
                return None
            return max(0.0, self._due - self._clock.monotonic())

    def sent(self) -> None:
        with self._lock:
            if self._interval is not None:
                self._due = self._clock.monotonic() + self._interval


class AgentClient:
    """Keeps the agent connected to the coordinator; see the module docstring."""

    def __init__(
        self,
        target: str,
        *,
        ca_file: Path,
        token_source: Callable[[], str],
        hello: Callable[[], Hello],
        handler: CommandHandler,
        running: Callable[[], tuple[RunningAssignment, ...]],
        clock: Clock,
        server_name_override: str | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._target = target
        self._ca_file = ca_file
        self._token_source = token_source
        self._hello = hello
        self._handler = handler
        self._running = running
        self._clock = clock
        self._options: list[tuple[str, int | str]] = list(CLIENT_OPTIONS)
        if server_name_override:
            self._options.append(("grpc.ssl_target_name_override", server_name_override))
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not a secret
        self._outbox = Outbox(clock)
        self._stopping = threading.Event()
        self._connected = threading.Event()
        self._lock = threading.Lock()
        self._call: grpc.RpcContext | None = None
        self._thread: threading.Thread | None = None
        self._refused_by_standby = False

    @property
    def connected(self) -> bool:
        """True from the coordinator's Welcome until the stream ends."""
        return self._connected.is_set()

    def send(self, event: AgentEvent) -> None:
        """Queue an event for the coordinator (thread-safe, never blocks on the network)."""
        self._outbox.put(event)

    def start(self) -> None:
        """Run in a background thread until ``stop``."""
        self._thread = threading.Thread(target=self.run, name="agent-control", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        self._cancel_call()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def run(self) -> None:
        """Connect and reconnect until ``stop``; blocks."""
        attempt = 0
        while not self._stopping.is_set():
            self._refused_by_standby = False
            welcomed = self._connect_once()
            if self._stopping.is_set():
                break
            if self._refused_by_standby:
                attempt = 0
                self._stopping.wait(standby_retry_delay(self._rng))
                continue
            attempt = 0 if welcomed else attempt + 1
            self._stopping.wait(RECONNECT_BACKOFF.delay(attempt + 1, self._rng))

    # --- one connection -------------------------------------------------------------------------------

    def _connect_once(self) -> bool:
        """One stream from Hello to its end; True when the coordinator welcomed us."""
        try:
            token = self._token_source()
            credentials = grpc.ssl_channel_credentials(root_certificates=_read_ca(self._ca_file))
            hello = replace(self._hello(), running=self._running())
        except Exception as err:
            log.warning("cannot connect to %s: %s", self._target, err)
            return False
        heartbeats = _Heartbeats(self._clock)
        with grpc.secure_channel(self._target, credentials, options=self._options) as channel:
            stream = self._outbox.open_stream()
            try:
                requests = self._requests(stream, hello, heartbeats)
                call = pb_grpc.AgentControlStub(channel).Connect(
                    requests, metadata=(("authorization", f"Bearer {token}"),)
                )
                return self._receive(call, call, heartbeats)
            finally:
                self._connected.clear()
                self._outbox.close_stream()

    def _receive(
        self, call: grpc.RpcContext, responses: Iterator[pb.CoordinatorMessage], heartbeats: _Heartbeats
    ) -> bool:
        with self._lock:
            self._call = call
        if self._stopping.is_set():
            self._cancel_call()
        welcomed = False
        try:
            for message in responses:
                command = command_from_pb(message)
                if isinstance(command, Welcome):
                    welcomed = True
                    heartbeats.welcome(command.heartbeat_interval_s)
                    self._outbox.wake()
                    self._connected.set()
                    log.info("connected to coordinator %s", command.coordinator_id)
                self._dispatch(command)
        except grpc.RpcError as err:
            if not self._stopping.is_set():
                code = err.code() if isinstance(err, grpc.Call) else None
                details = err.details() if isinstance(err, grpc.Call) else str(err)
                self._refused_by_standby = code is grpc.StatusCode.UNAVAILABLE and details == STANDBY_REFUSAL
                log.warning("control stream to %s ended: %s %s", self._target, code, details)
        except InvalidInput as err:
            log.error("coordinator sent a malformed message, reconnecting: %s", err)
        finally:
            with self._lock:
                self._call = None
        return welcomed

    def _dispatch(self, command: CoordinatorCommand) -> None:
        try:
            self._handler.handle(command)
        except BargeError as err:
            log.error("handling %s failed: %s", type(command).__name__, err)
        except Exception:
            log.exception("handling %s failed", type(command).__name__)

    def _requests(self, stream: int, hello: Hello, heartbeats: _Heartbeats) -> Iterator[pb.AgentMessage]:
        """What the stream sends: Hello, then queued events and heartbeats until the stream closes."""
        yield event_to_pb(hello, uuid.uuid4().hex)
        while self._outbox.is_open(stream):
            message = self._outbox.take(stream, heartbeats.seconds_until_due())
            if message is not None:
                yield message
            elif heartbeats.seconds_until_due() == 0.0 and self._outbox.is_open(stream):
                heartbeats.sent()
                yield from self._heartbeat(stream)

    def _heartbeat(self, stream: int) -> Iterator[pb.AgentMessage]:
        """A heartbeat, after whatever was queued before its list of running work was taken. Work
        is queued its result before it leaves that list, so a result queued between the empty
        outbox and the list is in the outbox now; sent after the heartbeat that no longer lists the
        work, the coordinator took the work for lost and assigned it again (a duplicate transfer,
        seen twice in 4,000 at scale)."""
        running = self._running()
        while (queued := self._outbox.take(stream, 0)) is not None:
            yield queued
        yield event_to_pb(Heartbeat(running), uuid.uuid4().hex)

    def _cancel_call(self) -> None:
        with self._lock:
            if self._call is not None:
                self._call.cancel()
        self._outbox.close_stream()


def _read_ca(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise InvalidInput(f"cannot read the coordinator's CA bundle {path}: {err.strerror}") from err
