"""The coordinator's record of agents and of the assignments they run (implements ``AgentHub``).

Only memory: after a failover the new leader rebuilds it from the agents' Hello messages (each lists
what it runs) and from the CRs in the API server: a claim is adopted only where ``claim_problem``
(the controller's check against the CR's fence, ``decide.claim_problem``) finds nothing wrong, and
the agent is told to stop any other. Every change that could alter a decision calls
``on_change(assignment_id)`` so the controller reconciles that CR promptly.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, replace
from datetime import datetime

import structlog

from barge.clock import Clock
from barge.control.messages import (
    AgentEvent,
    Assignment,
    AssignmentResult,
    CancelAssignment,
    Drain,
    Heartbeat,
    Maintain,
    MaintenanceResult,
    ProgressReport,
    RunningAssignment,
    Sweep,
    SweepResult,
)
from barge.control.ports import AgentSession
from barge.errors import TemporaryError
from coordinator.metrics import CoordinatorMetrics
from coordinator.model import AssignmentView, HubState

log = structlog.get_logger("barge.coordinator")

Request = Sweep | Maintain
Answer = SweepResult | MaintenanceResult

# How long a CR this coordinator let go is remembered as done. An informer cache that has not yet
# delivered the let-go write still shows the CR Prepared or running; ``coordinator.ownwrites`` hides
# that for 30 s, and a watch lagging longer under load (2,000 items, failover) had the hub, which
# had forgotten the CR, send its Assignment again 12 minutes after the failover (issue 15).
RELEASED_MEMORY_S = 3600.0


class NoAnswer(TemporaryError):
    """An agent asked to sweep or maintain did not answer; the next round asks again."""


def _request_id(request: Request) -> str:
    return request.sweep_id if isinstance(request, Sweep) else request.maintenance_id


# (node, claim) -> why the claim must not be adopted, "" to adopt it (see decide.claim_problem).
ClaimCheck = Callable[[str, RunningAssignment], str]


def _no_controller(node: str, claim: RunningAssignment) -> str:
    return "no controller runs to check it against its DataUpload or DataDownload"


@dataclass(frozen=True)
class _Record:
    view: AssignmentView
    kind: str = ""  # "upload" | "download", for metrics


class Hub:
    def __init__(
        self,
        clock: Clock,
        metrics: CoordinatorMetrics,
        on_change: Callable[[str], None] = lambda _id: None,
        claim_problem: ClaimCheck = _no_controller,
    ) -> None:
        self._clock = clock
        self._metrics = metrics
        self.on_change = on_change
        self.on_agent_connected: Callable[[str], None] = lambda _node: None
        self.claim_problem = claim_problem
        self._lock = threading.Lock()
        self._sessions: dict[str, AgentSession] = {}
        self._disconnected_since: dict[str, datetime] = {}
        self._connected_since: dict[str, datetime] = {}
        self._records: dict[str, _Record] = {}
        self._released: OrderedDict[str, float] = OrderedDict()  # id -> when let go, oldest first
        # Sweeps and maintenance runs asked of agents: request id -> (node, answer).
        self._asked: dict[str, tuple[str, Future[Answer]]] = {}

    # -- AgentHub -------------------------------------------------------------------------------

    def agent_connected(self, session: AgentSession) -> None:
        running = session.hello.running
        problems = {claim: self.claim_problem(session.node, claim) for claim in running}  # reads caches
        with self._lock:
            self._sessions[session.node] = session
            self._disconnected_since.pop(session.node, None)
            self._connected_since[session.node] = self._clock.now()
            changed, refused = self._adopt(session.node, running, problems)
            changed += self._reconcile_running(session.node, running)
            self._metrics.agents_connected.set(len(self._sessions))
        self._metrics.node_seen(session.node)
        log.info("agent connected", node=session.node, running=len(running))
        for claim, problem in refused:
            log.warning(
                "stopping work the agent claims but may not run",
                node=session.node,
                assignment=claim.assignment_id,
                epoch=claim.epoch,
                reason=problem,
            )
            session.send(CancelAssignment(claim.assignment_id, claim.epoch, f"not adopted: {problem}", True))
        self._notify(changed)
        self.on_agent_connected(session.node)

    def agent_event(self, session: AgentSession, event: AgentEvent) -> None:
        changed: list[str] = []
        with self._lock:
            if isinstance(event, ProgressReport):
                changed = self._progress(session.node, event)
            elif isinstance(event, AssignmentResult):
                changed = self._result(session.node, event)
            elif isinstance(event, Heartbeat):
                changed = self._reconcile_running(session.node, event.running)
            elif isinstance(event, SweepResult):
                self._answered(session.node, event.sweep_id, event)
            elif isinstance(event, MaintenanceResult):
                self._answered(session.node, event.maintenance_id, event)
        self._notify(changed)

    def agent_disconnected(self, session: AgentSession) -> None:
        with self._lock:
            if self._sessions.get(session.node) is not session:
                return  # an older stream of a node that has already reconnected
            del self._sessions[session.node]
            self._connected_since.pop(session.node, None)
            self._disconnected_since[session.node] = self._clock.now()
            changed = [i for i, r in self._records.items() if r.view.node == session.node]
            self._metrics.agents_connected.set(len(self._sessions))
            self._fail_asked(session.node)
        log.warning("agent disconnected", node=session.node)
        self._notify(changed)

    # -- what the controller asks -----------------------------------------------------------------

    def connected(self, node: str) -> bool:
        with self._lock:
            return node in self._sessions

    def disconnected_since(self, node: str) -> datetime | None:
        with self._lock:
            return self._disconnected_since.get(node)

    def connected_since(self, node: str) -> datetime | None:
        with self._lock:
            return self._connected_since.get(node)

    def nodes(self) -> set[str]:
        with self._lock:
            return set(self._sessions) | set(self._disconnected_since)

    def assignment(self, assignment_id: str) -> AssignmentView | None:
        with self._lock:
            record = self._records.get(assignment_id)
            return record.view if record else None

    def connected_nodes(self, agent_version: str | None = None) -> list[str]:
        """Nodes with a connected agent (of ``agent_version`` only, when given)."""
        with self._lock:
            return sorted(
                node
                for node, session in self._sessions.items()
                if agent_version is None or session.hello.agent_version == agent_version
            )

    def ask(self, node: str, request: Request) -> Future[Answer] | None:
        """Ask ``node``'s agent to sweep a location or maintain a repository; the future holds its
        answer (None: not connected). The caller bounds the wait and calls ``asked_done`` when it
        gives up or has the answer."""
        with self._lock:
            session = self._sessions.get(node)
            if session is None:
                return None
            answer: Future[Answer] = Future()
            self._asked[_request_id(request)] = (node, answer)
        session.send(request)
        return answer

    def asked_done(self, request_id: str) -> None:
        with self._lock:
            self._asked.pop(request_id, None)

    def request(self, node: str, request: Request, timeout_s: float) -> Answer:
        """``ask`` and wait for the answer; NoAnswer when the agent is not connected, disconnects
        or does not answer within ``timeout_s``."""
        answer = self.ask(node, request)
        if answer is None:
            raise NoAnswer(f"the agent on {node} is not connected")
        try:
            return answer.result(timeout=timeout_s)
        except TimeoutError:
            raise NoAnswer(f"the agent on {node} did not answer within {timeout_s:.0f}s") from None
        except TemporaryError as err:
            raise NoAnswer(str(err)) from None
        finally:
            self.asked_done(_request_id(request))

    def assign(self, node: str, assignment: Assignment) -> bool:
        """Send ``assignment`` to ``node``'s agent; False when that agent is not connected."""
        with self._lock:
            session = self._sessions.get(node)
            if session is None:
                return False
            current = self._records.get(assignment.assignment_id)
            if current and current.view.epoch == assignment.epoch and current.view.node == node:
                return True  # already sent: replays are for agents, not for the coordinator
            if assignment.assignment_id in self._released:
                log.warning("not assigning work already let go", assignment=assignment.assignment_id)
                return True  # decided on a cache copy older than the let-go write: nothing to do
            view = AssignmentView(
                epoch=assignment.epoch, node=node, state=HubState.SENT, progressed_at=self._clock.now()
            )
            self._records[assignment.assignment_id] = _Record(view, assignment.kind.value)
        session.send(assignment)
        self._metrics.assignments.labels(assignment.kind.value).inc()
        return True

    def cancel(self, assignment_id: str, node: str, epoch: int, reason: str, hand_off: bool) -> None:
        with self._lock:
            session = self._sessions.get(node)
            record = self._records.get(assignment_id)
            if record and record.view.epoch == epoch and record.view.cancel_sent_at is None:
                view = replace(record.view, cancel_sent_at=self._clock.now(), cancel_hand_off=hand_off)
                self._records[assignment_id] = replace(record, view=view)
        if session is not None:
            session.send(CancelAssignment(assignment_id, epoch, reason, hand_off))

    def drain(self, node: str, grace_seconds: float, reason: str) -> None:
        with self._lock:
            session = self._sessions.get(node)
        if session is not None:
            session.send(Drain(grace_seconds, reason))

    def reset(self) -> None:
        """A leader term ended: its records may be stale; the next term rebuilds them from Hellos,
        and knows nothing of the disconnections this one saw (its agents went with its streams)."""
        with self._lock:
            self._records.clear()
            self._disconnected_since.clear()
            self._fail_asked(None)

    def forget(self, assignment_id: str) -> None:
        """The CR is final and cleaned up: its record goes, and for ``RELEASED_MEMORY_S`` the hub
        remembers that it is done (``released``)."""
        now = self._clock.monotonic()
        with self._lock:
            self._records.pop(assignment_id, None)
            self._released[assignment_id] = now
            self._released.move_to_end(assignment_id)
            while now - next(iter(self._released.values())) >= RELEASED_MEMORY_S:
                self._released.popitem(last=False)

    def released(self, assignment_id: str) -> bool:
        """This coordinator let the CR go (final, cleaned up, finalizer removed) within the last
        ``RELEASED_MEMORY_S``: a cache copy that still shows it live is older than that write."""
        with self._lock:
            return assignment_id in self._released

    # -- internals (called with the lock held) ----------------------------------------------------

    def _progress(self, node: str, event: ProgressReport) -> list[str]:
        record = self._records.get(event.assignment_id)
        if record is None or record.view.epoch != event.epoch or record.view.node != node:
            return []
        delta = max(0, event.bytes_done - record.view.bytes_done)
        if delta and record.kind:
            self._metrics.bytes_processed.labels(record.kind, node).inc(delta)
        first = record.view.state is HubState.SENT
        view = self._started(record.view, event.bytes_done)
        view = replace(
            view, state=HubState.RUNNING, bytes_done=event.bytes_done, bytes_total=event.bytes_total
        )
        if delta or first:
            view = replace(view, progressed_at=self._clock.now())
        self._records[event.assignment_id] = replace(record, view=view)
        return [event.assignment_id] if first else []

    def _result(self, node: str, event: AssignmentResult) -> list[str]:
        record = self._records.get(event.assignment_id)
        if record is None or record.view.epoch != event.epoch or record.view.node != node:
            log.info("ignoring a result of a superseded assignment", node=node, epoch=event.epoch)
            return []
        if record.view.state is HubState.FINISHED:
            return []  # a re-sent result
        view = replace(
            record.view,
            state=HubState.FINISHED,
            result=event,
            bytes_done=event.bytes_done or record.view.bytes_done,
            progressed_at=self._clock.now(),
        )
        self._records[event.assignment_id] = replace(record, view=view)
        self._metrics.results.labels(record.kind or "unknown", event.outcome.value).inc()
        return [event.assignment_id]

    def _adopt(
        self, node: str, running: tuple[RunningAssignment, ...], problems: dict[RunningAssignment, str]
    ) -> tuple[list[str], list[tuple[RunningAssignment, str]]]:
        """The claims of a connecting agent that no record of ours matches: adopted where nothing is
        wrong with them (a new leader learns what runs), refused (to be stopped) otherwise."""
        adopted: list[str] = []
        refused: list[tuple[RunningAssignment, str]] = []
        for item in running:
            record = self._records.get(item.assignment_id)
            if record is not None:
                if (record.view.epoch, record.view.node) != (item.epoch, node):
                    current = f"epoch {record.view.epoch} on node {record.view.node}"
                    refused.append((item, f"the assignment is {current}"))
                continue
            if problems[item]:
                refused.append((item, problems[item]))
                continue
            now = self._clock.now()
            view = AssignmentView(
                epoch=item.epoch,
                node=node,
                state=HubState.RUNNING,
                bytes_done=item.bytes_done,
                bytes_total=item.bytes_total,
                running_since=now,
                bytes_at_running_since=item.bytes_done,
                progressed_at=now,
            )
            self._records[item.assignment_id] = _Record(view)
            adopted.append(item.assignment_id)
        return adopted, refused

    def _reconcile_running(self, node: str, running: tuple[RunningAssignment, ...]) -> list[str]:
        """Align our records with what the agent says it runs: update those it runs, drop those it lost."""
        reported = {r.assignment_id: r for r in running}
        changed: list[str] = []
        for item in running:
            record = self._records.get(item.assignment_id)
            if record is not None and record.view.epoch == item.epoch and record.view.node == node:
                state = HubState.RUNNING if record.view.state is HubState.SENT else record.view.state
                moved = item.bytes_done > record.view.bytes_done
                view = replace(
                    self._started(record.view, item.bytes_done),
                    state=state,
                    bytes_done=item.bytes_done,
                    bytes_total=item.bytes_total,
                    progressed_at=self._clock.now() if moved else record.view.progressed_at,
                )
                self._records[item.assignment_id] = replace(record, view=view)
        for assignment_id, record in list(self._records.items()):
            lost = record.view.node == node and record.view.state is HubState.RUNNING
            if lost and assignment_id not in reported:
                del self._records[assignment_id]  # the agent restarted without it: decide reassigns
                changed.append(assignment_id)
        return changed

    def _fail_asked(self, node: str | None) -> None:
        """What ``node``'s agent (None: any agent) was asked and can no longer answer ends at once."""
        for request_id, (asked, answer) in list(self._asked.items()):
            if node is None or asked == node:
                del self._asked[request_id]
                answer.set_exception(TemporaryError(f"the agent on {asked} disconnected before answering"))

    def _answered(self, node: str, request_id: str, result: Answer) -> None:
        waiting = self._asked.get(request_id)
        if waiting is None or waiting[0] != node:
            log.info("ignoring an answer to a request nobody on this node was asked", node=node)
            return
        del self._asked[request_id]
        waiting[1].set_result(result)

    def _started(self, view: AssignmentView, bytes_done: int) -> AssignmentView:
        """Remember when data started to move (the origin of the rate ``decide`` projects)."""
        if view.running_since is not None:
            return view
        return replace(view, running_since=self._clock.now(), bytes_at_running_since=bytes_done)

    def _notify(self, assignment_ids: list[str]) -> None:
        for assignment_id in assignment_ids:
            self.on_change(assignment_id)
