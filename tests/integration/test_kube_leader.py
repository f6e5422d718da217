"""Leader election between real electors on a real Lease, with short durations."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any
from urllib.parse import urlsplit

import pytest
from kubernetes import client

from barge.clock import SystemClock
from barge.errors import InvalidInput
from barge.kube.client import api_client
from barge.kube.leader import LeaderElector
from barge.kube.resources import LEASE, KubeObjects
from devenv.controlplane import ControlPlaneEndpoints
from tests.integration.kubetest import eventually, fresh_namespace, unique

pytestmark = pytest.mark.integration

LEASE_S, RENEW_DEADLINE_S, RETRY_S = 3.0, 2.0, 0.5
SLACK_S = 0.7  # request latency and thread scheduling on a loaded 2-core machine


class Timeline:
    """When each elector started and stopped leading."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.entries: list[tuple[float, str, str]] = []

    def callback(self, identity: str, what: str) -> Callable[[], None]:
        def record() -> None:
            with self._lock:
                self.entries.append((time.monotonic(), identity, what))

        return record

    def when(self, identity: str, what: str) -> float | None:
        with self._lock:
            return next((t for t, who, w in self.entries if who == identity and w == what), None)


@pytest.fixture
def namespace(kube: client.ApiClient) -> Iterator[str]:
    yield from fresh_namespace(kube, "leader")


@pytest.fixture
def clients(control_plane: ControlPlaneEndpoints) -> Iterator[Callable[[], client.ApiClient]]:
    """Each elector gets its own client, so one can be cut off from the server."""
    with ExitStack() as stack:
        yield lambda: stack.enter_context(api_client(control_plane.kubeconfig))


@pytest.fixture
def make_elector(
    clients: Callable[[], client.ApiClient], namespace: str
) -> Iterator[Callable[[str, Timeline, str], LeaderElector]]:
    started: list[LeaderElector] = []

    def make(
        identity: str,
        timeline: Timeline,
        lease: str,
        *,
        timing: tuple[float, float, float] = (LEASE_S, RENEW_DEADLINE_S, RETRY_S),
        **callbacks: Any,
    ) -> LeaderElector:
        lease_s, deadline_s, retry_s = timing
        elector = LeaderElector(
            clients(),
            namespace,
            lease,
            identity,
            clock=SystemClock(),
            lease_duration_s=lease_s,
            renew_deadline_s=deadline_s,
            retry_period_s=retry_s,
            on_started=timeline.callback(identity, "started"),
            on_stopped=timeline.callback(identity, "stopped"),
            on_failed=lambda err: timeline.callback(identity, f"failed: {err!r}")(),
            **callbacks,
        )
        started.append(elector)
        elector.start()
        return elector

    yield make
    for elector in started:
        elector.stop()
    assert not any(t.name.startswith("leader-") for t in threading.enumerate())


def the_leader(electors: list[LeaderElector]) -> LeaderElector | None:
    leading = [e for e in electors if e.is_leader]
    assert len(leading) <= 1, f"two leaders: {[e.identity for e in leading]}"
    return leading[0] if leading else None


def test_exactly_one_of_two_leads(make_elector: Any, kube: client.ApiClient, namespace: str) -> None:
    timeline, lease = Timeline(), unique("lease")
    electors = [make_elector("a", timeline, lease), make_elector("b", timeline, lease)]
    leader = eventually(lambda: the_leader(electors))
    deadline = time.monotonic() + LEASE_S + 1
    while time.monotonic() < deadline:  # through several renewals
        assert the_leader(electors) is leader
        time.sleep(0.05)
    stored = KubeObjects(kube).get(LEASE, namespace, lease)
    assert stored["spec"]["holderIdentity"] == leader.identity
    assert stored["spec"]["leaseDurationSeconds"] == 3
    assert timeline.when(leader.identity, "started") is not None


def test_a_clean_stop_hands_over_within_the_retry_period(make_elector: Any) -> None:
    timeline, lease = Timeline(), unique("lease")
    first = make_elector("first", timeline, lease)
    eventually(lambda: first.is_leader)
    second = make_elector("second", timeline, lease)
    time.sleep(RETRY_S * 2)
    assert not second.is_leader

    first.stop()
    stopped = timeline.when("first", "stopped")
    assert stopped is not None  # on_stopped ran before stop() returned
    taken = eventually(lambda: timeline.when("second", "started"), timeout=LEASE_S)
    assert taken - stopped < RETRY_S + SLACK_S
    assert second.is_leader
    assert not first.is_leader


def test_a_cut_off_leader_steps_down_and_the_standby_takes_over_after_the_lease(
    make_elector: Any, clients: Any, namespace: str
) -> None:
    timeline, lease = Timeline(), unique("lease")
    first = make_elector("first", timeline, lease)
    eventually(lambda: first.is_leader)
    second = make_elector("second", timeline, lease)
    time.sleep(RETRY_S * 2)

    first._objects.api.configuration.host = "https://127.0.0.1:1"  # nothing listens: renewals fail
    cut = time.monotonic()
    stepped_down = eventually(lambda: timeline.when("first", "stopped"), timeout=LEASE_S + 2)
    assert stepped_down - cut < RENEW_DEADLINE_S + RETRY_S + SLACK_S
    taken = eventually(lambda: timeline.when("second", "started"), timeout=LEASE_S + 3)
    assert stepped_down < taken, "the new leader started before the old one stopped"
    assert taken - cut < LEASE_S + RETRY_S + SLACK_S
    assert not first.is_leader
    assert second.is_leader


class SlowLink:
    """A TCP relay to the API server that holds every chunk a client sends for ``delay_s``: each
    request takes that much longer, as on an API server slowed by load (TLS passes through)."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self._upstream = (parts.hostname or "127.0.0.1", parts.port or 443)
        self.delay_s = 0.0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"https://127.0.0.1:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client_side, _ = self._listener.accept()
            except OSError:
                return
            server_side = socket.create_connection(self._upstream)
            for source, sink, slow in ((client_side, server_side, True), (server_side, client_side, False)):
                threading.Thread(target=self._relay, args=(source, sink, slow), daemon=True).start()

    def _relay(self, source: socket.socket, sink: socket.socket, slow: bool) -> None:
        try:
            while data := source.recv(65536):
                if slow:
                    time.sleep(self.delay_s)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                end.close()


def test_a_leader_keeps_the_lease_while_each_request_takes_longer_than_a_quarter_of_the_deadline(
    make_elector: Any,
) -> None:
    """Lease 9 s, renewal deadline 6 s, every chunk a client sends 1.7 s late (a PUT's headers and
    body: 3.4 s). Before, each Lease request was cut at a quarter of the deadline (1.5 s here):
    every renewal timed out and the leader stepped down (a 10 s Lease flapped so on an overloaded
    API server). A renewal is one PUT given what is left of the deadline now: late, not lost."""
    timing = (9.0, 6.0, 1.5)
    timeline, lease = Timeline(), unique("lease")
    first = make_elector("first", timeline, lease, timing=timing)
    eventually(lambda: first.is_leader)
    link = SlowLink(first._objects.api.configuration.host)
    try:
        first._objects.api.configuration.host = link.url
        make_elector("second", timeline, lease, timing=timing)
        time.sleep(timing[2] * 2)  # the leader's connection through the link is open
        link.delay_s = 1.7
        time.sleep(timing[0] * 1.5)
        assert timeline.when("first", "stopped") is None
        assert timeline.when("second", "started") is None
        assert first.is_leader
    finally:
        link.delay_s = 0.0
        link.close()


def test_a_frozen_leader_is_replaced_and_steps_down_when_it_wakes(make_elector: Any) -> None:
    """A leader that stops renewing without a word (a paused process) loses the Lease after it expires."""
    timeline, lease = Timeline(), unique("lease")
    first = make_elector("first", timeline, lease)
    eventually(lambda: first.is_leader)
    second = make_elector("second", timeline, lease)
    time.sleep(RETRY_S * 2)

    thaw = threading.Event()
    real_renew: Callable[[float], bool] = first._renew

    def frozen(last_renew: float) -> bool:
        thaw.wait()
        return real_renew(last_renew)

    first._renew = frozen
    frozen_at = time.monotonic()
    try:
        taken = eventually(lambda: timeline.when("second", "started"), timeout=LEASE_S + 3)
        assert taken - frozen_at < LEASE_S + RETRY_S + SLACK_S
        assert timeline.when("first", "stopped") is None  # frozen: it has not noticed yet
    finally:
        thaw.set()
    eventually(lambda: timeline.when("first", "stopped"), timeout=RETRY_S * 4)
    assert second.is_leader
    assert not first.is_leader


def test_a_standby_takes_an_expired_lease_at_its_expiry_not_at_its_next_retry(make_elector: Any) -> None:
    """Lease 4 s, retries every 2.5 s: a standby that saw the last renewal at S found the Lease
    expired at its retry S + 5 s, a second with no leader at all. And S itself was up to a retry
    period after the renewal: the standby looks four times per period now."""
    timing = (4.0, 3.0, 2.5)
    timeline, lease = Timeline(), unique("lease")
    first = make_elector("first", timeline, lease, timing=timing)
    eventually(lambda: first.is_leader)
    thaw = threading.Event()
    real_renew: Callable[[float], bool] = first._renew
    renewed: list[float] = []

    def renewing(last_renew: float) -> bool:
        result = real_renew(last_renew)
        renewed.append(time.monotonic())
        return result

    def frozen(last_renew: float) -> bool:
        thaw.wait()
        return real_renew(last_renew)

    first._renew = renewing
    eventually(lambda: renewed)
    # The standby starts just before the leader's next renewal: looking once per period, it would
    # see every renewal about 2.2 s after it was made.
    time.sleep(max(0.0, renewed[-1] + 2.2 - time.monotonic()))
    second = make_elector("second", timeline, lease, timing=timing)
    seen: list[Any] = []
    real_observe = second._observe

    def observe(holder: str, spec: Any) -> None:
        real_observe(holder, spec)
        seen.append(second._observed)

    second._observe = observe
    time.sleep(timing[2] * 2)
    first._renew = frozen
    try:
        taken = eventually(lambda: timeline.when("second", "started"), timeout=timing[0] + timing[2] + 3)
    finally:
        thaw.set()
    last_seen = [o for o in seen if o.holder == "first"][-1]  # the frozen leader's last renewal
    assert last_seen.seen_at + timing[0] <= taken < last_seen.seen_at + timing[0] + 0.5
    assert last_seen.seen_at - renewed[-1] < timing[2] / 4 + 0.3  # seen within a quarter period
    eventually(lambda: timeline.when("first", "stopped"), timeout=timing[2] * 4)


def broken_attempt(*args: object) -> bool:
    raise RuntimeError("a bug in the election")


def test_an_unexpected_error_while_standing_by_ends_the_election_and_says_so(make_elector: Any) -> None:
    """Before: the thread died silently and the replica could never lead again, yet looked healthy."""
    timeline, lease = Timeline(), unique("lease")
    first = make_elector("first", timeline, lease)
    eventually(lambda: first.is_leader)
    second = make_elector("second", timeline, lease)
    second._attempt = broken_attempt
    eventually(lambda: timeline.when("second", "failed: RuntimeError('a bug in the election')"))
    first.stop()
    time.sleep(RETRY_S * 3)
    assert timeline.when("second", "started") is None
    assert not any(t.name == f"leader-{lease}" and t.is_alive() for t in threading.enumerate())


def test_a_leader_whose_election_fails_unexpectedly_releases_the_lease_at_once(
    make_elector: Any, kube: client.ApiClient, namespace: str
) -> None:
    timeline, lease = Timeline(), unique("lease")
    first = make_elector("first", timeline, lease)
    eventually(lambda: first.is_leader)
    first._renew = broken_attempt
    eventually(lambda: timeline.when("first", "stopped"))
    reported = [what for _, who, what in timeline.entries if who == "first"]
    assert reported == ["started", "failed: RuntimeError('a bug in the election')", "stopped"]
    assert KubeObjects(kube).get(LEASE, namespace, lease)["spec"]["holderIdentity"] == ""
    assert not first.is_leader


def test_the_heartbeat_runs_at_every_attempt_while_standing_by_and_while_leading(make_elector: Any) -> None:
    timeline, lease = Timeline(), unique("lease")
    beats = {"first": 0, "second": 0}

    def beat(identity: str) -> Callable[[], None]:
        def count() -> None:
            beats[identity] += 1

        return count

    first = make_elector("first", timeline, lease, heartbeat=beat("first"))
    eventually(lambda: first.is_leader)
    make_elector("second", timeline, lease, heartbeat=beat("second"))
    eventually(lambda: beats["first"] >= 3 and beats["second"] >= 3, timeout=RETRY_S * 3 + 5)


def test_timings_must_leave_the_renew_deadline_inside_the_lease(kube: client.ApiClient) -> None:
    def make(lease_s: float, deadline_s: float, retry_s: float) -> LeaderElector:
        return LeaderElector(
            kube,
            "default",
            "x",
            "me",
            clock=SystemClock(),
            lease_duration_s=lease_s,
            renew_deadline_s=deadline_s,
            retry_period_s=retry_s,
            on_started=lambda: None,
            on_stopped=lambda: None,
        )

    with pytest.raises(InvalidInput, match="retry_period_s < renew_deadline_s < lease_duration_s"):
        make(10, 10, 2)
    with pytest.raises(InvalidInput):
        make(15, 10, 10)
    make(15, 10, 2)
