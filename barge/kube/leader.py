"""Leader election on a coordination.k8s.io/v1 Lease, with client-go's semantics.

A candidate takes the Lease when it is free (no holder) or expired; the holder renews it every
``retry_period_s``. Expiry is judged on the candidate's own monotonic clock from when it last saw the
Lease change, never by comparing the holder's timestamps with local time, so clock skew between
nodes cannot make two leaders. A leader that cannot renew within ``renew_deadline_s`` (shorter than
the lease) calls ``on_stopped`` before anyone else can take over. A clean stop clears the holder so a
standby takes over at its next retry instead of waiting out the lease. An unexpected exception (a
bug: the API's own errors are ordinary failed attempts) ends the election as a stop does, Lease
released, and is reported to ``on_failed`` first: a candidate that can never lead again, or a leader
that no longer renews, must not pass for a healthy one.
"""

from __future__ import annotations

import copy
import logging
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from kubernetes import client

from barge.clock import Clock
from barge.errors import BargeError, Conflict, InvalidInput, NotFound
from barge.kube.resources import LEASE, KubeObjects, Obj

log = logging.getLogger(__name__)

_PAST_EXPIRY_S = 0.05  # an attempt made just after expiry, never just before it
_STANDBY_LOOKS_PER_RETRY = 4
_MIN_REQUEST_S = 0.5  # a renewal started just before its deadline still gets a real chance


@dataclass(frozen=True)
class _Observed:
    """The Lease record as last seen, and when (on our monotonic clock) it was first seen so."""

    holder: str
    renew_time: str
    duration_s: float
    seen_at: float


class LeaderElector:
    """Runs ``on_started`` when this identity becomes leader and ``on_stopped`` when it stops leading."""

    def __init__(
        self,
        api: client.ApiClient,
        namespace: str,
        name: str,
        identity: str,
        *,
        clock: Clock,
        on_started: Callable[[], None],
        on_stopped: Callable[[], None],
        on_failed: Callable[[Exception], None] = lambda err: None,
        heartbeat: Callable[[], None] = lambda: None,
        lease_duration_s: float = 15.0,
        renew_deadline_s: float = 10.0,
        retry_period_s: float = 2.0,
    ) -> None:
        """``heartbeat`` runs at every attempt to acquire or renew (for a liveness check)."""
        _check_timing(lease_duration_s, renew_deadline_s, retry_period_s)
        # A standby's attempt (a GET and a PUT) may take a quarter of the renewal deadline per
        # request; a leader's renewal may take whatever is left of the deadline (``_renew``).
        self._api = _without_retries(api)
        self._objects = KubeObjects(self._api, request_timeout_s=max(1.0, renew_deadline_s / 4))
        self._written: Obj | None = None  # the Lease as our last write left it (resourceVersion)
        self.namespace, self.name, self.identity = namespace, name, identity
        self._clock = clock
        self._on_started, self._on_stopped = on_started, on_stopped
        self._on_failed, self._heartbeat = on_failed, heartbeat
        self._lease_s, self._deadline_s, self._retry_s = lease_duration_s, renew_deadline_s, retry_period_s
        self._stopping = threading.Event()
        self._leading = threading.Event()
        self._observed: _Observed | None = None
        self._thread: threading.Thread | None = None

    @property
    def is_leader(self) -> bool:
        return self._leading.is_set()

    def start(self) -> None:
        """Run the election in a daemon thread."""
        if self._thread is not None:
            raise InvalidInput(f"leader elector {self.identity} already started")
        self._thread = threading.Thread(target=self.run, name=f"leader-{self.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop campaigning; a leader releases the Lease and calls ``on_stopped`` first."""
        self._stopping.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def run(self) -> None:
        """Block: campaign until leader, lead until the Lease is lost or ``stop()``, then return."""
        if not self._unless_failed(self._acquire):
            return
        self._leading.set()
        try:
            self._unless_failed(self._lead)
        finally:
            self._leading.clear()
            if self._stopping.is_set():
                self._release()
            self._on_stopped()

    def _unless_failed(self, step: Callable[[], bool]) -> bool:
        """``step()``; an unexpected exception stops the election (``on_failed`` first) and is False."""
        try:
            return step()
        except Exception as err:
            log.exception("%s: the election on lease %s/%s failed", self.identity, self.namespace, self.name)
            self._stopping.set()
            self._on_failed(err)
            return False

    def _acquire(self) -> bool:
        while not self._stopping.is_set():
            self._heartbeat()
            if self._try_acquire_or_renew():
                log.info("%s became leader of lease %s/%s", self.identity, self.namespace, self.name)
                return True
            self._stopping.wait(self._until_next_attempt())
        return False

    def _until_next_attempt(self) -> float:
        """While another holds the Lease: a quarter of the retry period, or less when the Lease
        expires sooner. Expiry counts from when this standby first saw the last renewal, so a
        standby that looked every retry period saw it up to that late and took a dead leader's
        Lease up to two periods late (17.6 s after a SIGKILL with a 15 s Lease): time with no leader
        at all (failover, issue 15). A Lease GET every 0.5 s is nothing to an API server."""
        seen = self._observed
        if seen is None or seen.holder in ("", self.identity):
            return self._retry_s
        expires_in = seen.seen_at + seen.duration_s - self._clock.monotonic()
        return min(self._retry_s / _STANDBY_LOOKS_PER_RETRY, max(expires_in, 0.0) + _PAST_EXPIRY_S)

    def _lead(self) -> bool:
        self._on_started()
        self._renew_until_lost_or_stopped()
        return True

    def _renew_until_lost_or_stopped(self) -> None:
        last_renew = self._clock.monotonic()
        while not self._stopping.wait(self._retry_s):
            self._heartbeat()
            if self._renew(last_renew):
                last_renew = self._clock.monotonic()
            elif self._taken_by_another():
                log.error("%s lost lease %s to %s", self.identity, self.name, self._observed_holder())
                return
            elif self._clock.monotonic() - last_renew >= self._deadline_s:
                log.error("%s could not renew lease %s in %.1fs", self.identity, self.name, self._deadline_s)
                return

    def _observed_holder(self) -> str:
        return self._observed.holder if self._observed else ""

    def _taken_by_another(self) -> bool:
        return self._observed_holder() not in ("", self.identity)

    def _renew(self, last_renew: float) -> bool:
        """One renewal, its requests given what is left of the renewal deadline: on an API server
        slowed by load a renewal that takes 3 s is late, not lost, and cutting each request at a
        quarter of the deadline (1.67 s with a 10 s Lease) made leadership flap. First client-go's
        fast path (one PUT of the Lease as we last wrote it), then GET-then-PUT if that conflicted."""
        if self._try_renew(self._within(last_renew)):
            return True
        objects = self._within(last_renew, requests=2)
        return objects is not None and self._try_acquire_or_renew(objects)

    def _within(self, last_renew: float, requests: int = 1) -> KubeObjects | None:
        """A client whose requests, ``requests`` of them, end by the renewal deadline (None: past it)."""
        left_s = last_renew + self._deadline_s - self._clock.monotonic()
        if left_s <= 0:
            return None
        return KubeObjects(self._api, request_timeout_s=max(_MIN_REQUEST_S, left_s / requests))

    def _try_renew(self, objects: KubeObjects | None) -> bool:
        """PUT the Lease as our last write left it; False on a conflict, a failure or before any write."""
        written = self._written
        if written is None or objects is None:
            return False
        lease = {**written, "spec": self._claimed_spec(written.get("spec") or {})}
        try:
            self._written = objects.replace(LEASE, lease)
        except BargeError as err:
            self._written = None
            if not isinstance(err, Conflict):
                log.warning("%s: renewing lease %s/%s: %s", self.identity, self.namespace, self.name, err)
            return False
        return True

    def _try_acquire_or_renew(self, objects: KubeObjects | None = None) -> bool:
        """One attempt; False when someone else holds a live Lease, a write raced, or the API failed."""
        try:
            return self._attempt(objects or self._objects)
        except BargeError as err:
            log.warning("%s: lease %s/%s: %s", self.identity, self.namespace, self.name, err)
            return False

    def _attempt(self, objects: KubeObjects) -> bool:
        try:
            lease = objects.get(LEASE, self.namespace, self.name)
        except NotFound:
            return self._create()
        spec = lease.get("spec") or {}
        if not self._may_take(spec):
            return False
        lease["spec"] = self._claimed_spec(spec)
        try:
            self._written = objects.replace(LEASE, lease)
        except Conflict:
            return False
        return True

    def _create(self) -> bool:
        try:
            self._written = self._objects.create(LEASE, self._new_lease())
        except Conflict:
            return False  # another candidate created it first
        return True

    def _may_take(self, spec: Obj) -> bool:
        holder = spec.get("holderIdentity") or ""
        self._observe(holder, spec)
        if holder in ("", self.identity):
            return True
        assert self._observed is not None
        return self._clock.monotonic() >= self._observed.seen_at + self._observed.duration_s

    def _observe(self, holder: str, spec: Obj) -> None:
        """Restart the expiry countdown whenever the holder or its renewTime changed."""
        renew_time = str(spec.get("renewTime") or "")
        seen = self._observed
        if seen is None or (seen.holder, seen.renew_time) != (holder, renew_time):
            duration = float(spec.get("leaseDurationSeconds") or self._lease_s)
            self._observed = _Observed(holder, renew_time, duration, self._clock.monotonic())

    def _claimed_spec(self, spec: Obj) -> Obj:
        now = _micro_time(self._clock.now())
        claimed = {**spec, "holderIdentity": self.identity, "renewTime": now}
        claimed["leaseDurationSeconds"] = math.ceil(self._lease_s)
        if spec.get("holderIdentity") != self.identity:
            claimed["acquireTime"] = now
            claimed["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + 1
        return claimed

    def _new_lease(self) -> Obj:
        now = _micro_time(self._clock.now())
        return {
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": math.ceil(self._lease_s),
                "acquireTime": now,
                "renewTime": now,
                "leaseTransitions": 0,
            },
        }

    def _release(self) -> None:
        """Clear the holder if it is still us, so a standby need not wait out the lease."""
        try:
            lease = self._objects.get(LEASE, self.namespace, self.name)
            spec = lease.get("spec") or {}
            if spec.get("holderIdentity") != self.identity:
                return
            now = _micro_time(self._clock.now())
            lease["spec"] = {**spec, "holderIdentity": "", "leaseDurationSeconds": 1, "renewTime": now}
            self._written = None
            self._objects.replace(LEASE, lease)
        except BargeError as err:
            log.warning("%s could not release lease %s/%s: %s", self.identity, self.namespace, self.name, err)


def _without_retries(api: client.ApiClient) -> client.ApiClient:
    """A client of the same server and credentials whose requests are never retried: urllib3
    retried a timed-out Lease request up to three times, so an attempt could outlast the renewal
    deadline it was sized to fit, and the leader stepped down after its Lease had expired. A failed
    attempt is retried by the election itself, at its next period."""
    configuration = copy.copy(api.configuration)
    configuration.retries = 0
    return client.ApiClient(configuration)


def _check_timing(lease_s: float, deadline_s: float, retry_s: float) -> None:
    if not 0 < retry_s < deadline_s < lease_s:
        raise InvalidInput(
            "leader election needs 0 < retry_period_s < renew_deadline_s < lease_duration_s, got "
            f"{retry_s} / {deadline_s} / {lease_s}"
        )


def _micro_time(moment: datetime) -> str:
    """A Kubernetes MicroTime (RFC 3339 with microseconds, UTC)."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
