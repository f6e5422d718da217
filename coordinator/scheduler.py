"""Which waiting items may take their next resource-consuming step now: a pure function.

Two steps are rationed:

* ACCEPT (phase New -> Accepted, which creates an exposure): at most ``prepareQueueLength`` items
  may hold an exposure without moving data (phases Accepted and Prepared-not-yet-assigned), as in
  Velero, where items beyond the queue stay New.
* ASSIGN (phase Prepared, exposer pod Running on node N): at most
  ``loadConcurrency.for_node(labels of N)`` assignments run on N at once; a node that is cordoned or
  whose agent is not connected gets nothing new.

Fairness: candidates are taken round-robin across their group (the Velero backup or restore
they belong to, ``CrView.group``), groups ordered by their oldest waiting item, so one backup with
a thousand volumes cannot starve a backup with one. Within a group, oldest first.

The controller builds ``work_item(cr_view, now, pod_node, assigned)`` for *all* barge CRs it caches,
calls ``admit(items, nodes, config)`` once per pass and sets ``Observed.admitted`` for each CR whose
key is in the result.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import Enum

from coordinator.config import CoordinatorConfig
from coordinator.model import CrView, Pairs, Phase


class Stage(Enum):
    WAITING = "waiting"  # New: wants to be accepted and exposed
    PREPARING = "preparing"  # Accepted: holds (or is building) an exposure
    PREPARED = "prepared"  # Prepared, no live assignment: wants an agent on ``node``
    RUNNING = "running"  # an agent works on it on ``node`` (Prepared+assigned, InProgress, Canceling)
    DONE = "done"  # terminal: uses nothing


class Step(Enum):
    ACCEPT = "accept"
    ASSIGN = "assign"


@dataclass(frozen=True)
class ItemKey:
    kind: str
    namespace: str
    name: str


@dataclass(frozen=True)
class WorkItem:
    key: ItemKey
    stage: Stage
    group: str  # backup/restore name ("" = its own group)
    queued_at: datetime  # creation (WAITING) or acceptance time: the order inside a group
    node: str = ""  # PREPARED / RUNNING: the exposer pod's node


@dataclass(frozen=True)
class NodeState:
    name: str
    labels: Pairs = ()
    cordoned: bool = False
    agent_connected: bool = False


@dataclass(frozen=True)
class Admission:
    key: ItemKey
    step: Step
    node: str = ""  # ASSIGN: where


def admit(
    items: Iterable[WorkItem],
    nodes: Iterable[NodeState],
    config: CoordinatorConfig,
    previous: Collection[Admission] = (),
) -> tuple[Admission, ...]:
    """The admissions for this pass, in the order they should be acted on.

    ``previous``: what the last pass admitted. Those still at the same step keep their place ahead
    of the fair order: one may be mid-way through its accept or assign write (the pass does not
    see it yet), and giving its slot to another item would run two where one is allowed."""
    all_items, all_nodes = tuple(items), tuple(nodes)
    accepted = frozenset(a.key for a in previous if a.step is Step.ACCEPT)
    assigned = frozenset(a.key for a in previous if a.step is Step.ASSIGN)
    return _assignments(all_items, all_nodes, config, assigned) + _acceptances(
        all_items, all_nodes, config, accepted
    )


def permits(admission: Admission | None, cr: CrView) -> bool:
    """Whether ``admission`` (the CR's in the last pass, if any) lets it take the step its phase
    wants now. Admission passes run apart from reconciles, so a CR admitted to be accepted may be
    exposed and Prepared before the next pass: that admission says nothing of its node's transfer
    slots, and assigning on it ran more transfers than ``loadConcurrency`` allows (the agent
    refused them, and each was exposed again)."""
    if admission is None:
        return False
    if admission.step is Step.ACCEPT:
        return cr.phase is Phase.NEW
    return cr.phase is Phase.PREPARED and admission.node == cr.node


def prepare_queue_limit(nodes: tuple[NodeState, ...], config: CoordinatorConfig) -> int:
    """How many items may be exposed but not yet running. Configured, or by default four times the
    transfer slots of the usable nodes (at least 8): enough exposures in flight to cover the time a
    snapshot takes to restore while short transfers end, while a burst of thousands never becomes
    thousands of PVCs and pods at once (a node runs at most ~110 pods)."""
    if config.prepare_queue_length is not None:
        return config.prepare_queue_length
    slots = sum(
        config.load_concurrency.for_node(dict(node.labels))
        for node in nodes
        if node.agent_connected and not node.cordoned
    )
    return max(8, 4 * slots)


def _acceptances(
    items: tuple[WorkItem, ...],
    nodes: tuple[NodeState, ...],
    config: CoordinatorConfig,
    previous: frozenset[ItemKey],
) -> tuple[Admission, ...]:
    waiting = [item for item in items if item.stage is Stage.WAITING]
    held = sum(1 for item in items if item.stage in (Stage.PREPARING, Stage.PREPARED))
    free = max(0, prepare_queue_limit(nodes, config) - held)
    exposed = _held_by_group(items, (Stage.PREPARING, Stage.PREPARED, Stage.RUNNING))
    chosen = _previous_first(fair_order(waiting, exposed), previous)[:free]
    return tuple(Admission(item.key, Step.ACCEPT) for item in chosen)


def _assignments(
    items: tuple[WorkItem, ...],
    nodes: tuple[NodeState, ...],
    config: CoordinatorConfig,
    previous: frozenset[ItemKey],
) -> tuple[Admission, ...]:
    by_name = {node.name: node for node in nodes}
    running = Counter(item.node for item in items if item.stage is Stage.RUNNING)
    admissions: list[Admission] = []
    running_by_group = _held_by_group(items, (Stage.RUNNING,))
    prepared = fair_order([item for item in items if item.stage is Stage.PREPARED], running_by_group)
    for item in _previous_first(prepared, previous):
        node = by_name.get(item.node)
        if node is None or node.cordoned or not node.agent_connected:
            continue
        if running[node.name] >= config.load_concurrency.for_node(dict(node.labels)):
            continue
        running[node.name] += 1
        admissions.append(Admission(item.key, Step.ASSIGN, node.name))
    return tuple(admissions)


def fair_order(items: Iterable[WorkItem], active: Mapping[str, int] | None = None) -> list[WorkItem]:
    """Round-robin across groups, counting what each group already holds.

    ``active``: items per group already past this step (exposed, or running). The next slot goes to
    the group holding the fewest, so a small backup created after a big one gets every other slot
    at once instead of waiting for the big one's head start to drain; ties go to the oldest group,
    and within a group the oldest item goes first.
    """
    held = active or {}
    groups: dict[str, list[WorkItem]] = defaultdict(list)
    for item in sorted(items, key=_age):
        groups[_group(item)].append(item)
    ranked = [
        (held.get(name, 0) + rank, _age(queue[0]), _age(item), item)
        for name, queue in groups.items()
        for rank, item in enumerate(queue)
    ]
    return [entry[-1] for entry in sorted(ranked, key=lambda entry: entry[:3])]


def _previous_first(ordered: list[WorkItem], previous: frozenset[ItemKey]) -> list[WorkItem]:
    """``ordered`` with the items the last pass admitted first (each part keeps its order)."""
    return [i for i in ordered if i.key in previous] + [i for i in ordered if i.key not in previous]


def _group(item: WorkItem) -> str:
    return item.group or f"\0{item.key}"


def _held_by_group(items: Iterable[WorkItem], stages: tuple[Stage, ...]) -> Counter[str]:
    return Counter(_group(item) for item in items if item.stage in stages)


def _age(item: WorkItem) -> tuple[datetime, str, str, str]:
    return (item.queued_at, item.key.namespace, item.key.kind, item.key.name)


def work_item(cr: CrView, now: datetime, pod_node: str = "", assigned: bool = False) -> WorkItem:
    """The scheduler's view of one CR. ``pod_node``: where its exposer pod runs; ``assigned``: the
    hub has a live (sent or running) assignment for its current epoch."""
    key = ItemKey(cr.kind, cr.namespace, cr.name)
    queued_at = cr.accepted_at or cr.created_at or now
    node = cr.node or pod_node
    if cr.phase.is_terminal or cr.deleting:
        return WorkItem(key, Stage.DONE, cr.group, queued_at)
    if cr.phase is Phase.NEW:
        return WorkItem(key, Stage.WAITING, cr.group, queued_at)
    if cr.phase is Phase.ACCEPTED:
        return WorkItem(key, Stage.PREPARING, cr.group, queued_at, node)
    if cr.phase is Phase.PREPARED and not assigned:
        return WorkItem(key, Stage.PREPARED, cr.group, queued_at, node)
    running_on = cr.fence.node if cr.fence and cr.phase is not Phase.PREPARED else node
    return WorkItem(key, Stage.RUNNING, cr.group, queued_at, running_on)
