"""The arithmetic of ``make bench-scale``: pure functions over timestamps, audit events and /proc text.

Everything here is deterministic and free of I/O, so ``tests/unit/test_bench_scale.py`` checks it
without servers. Times are POSIX seconds (``time.time()``), taken in several processes on one
machine, so they compare directly.

Attribution rules (what ``bench.scale`` reports and ``docs/performance.md`` explains):

* A step is the time between two observed moments of one item (a DataUpload or DataDownload).
  Each step is labelled with who controls it: the coordinator, the simulated cluster (SimCluster:
  snapshot controller, provisioner, scheduler, kubelet, PV binder), the simulated agent (its
  configured transfer time), or the queue that the configured concurrency imposes.
* New -> Accepted is split the same way over one pool, the prepare queue (``prepareQueueLength``,
  by default 4x the transfer slots): an item holds a slot from Accepted until it is assigned.
* Prepared -> assigned is split with a slot model per node (``queue_split``): a node runs at most
  ``loadConcurrency`` assignments; a slot frees when the agent sends its result (for a DataDownload,
  shifted by the simulated PV binder's own delay). An item becomes *eligible* at the later of its
  Prepared time and the time the slot it took became free; eligible - Prepared is queue time
  caused by the configuration, assigned - eligible is the coordinator's own dispatch latency.
  Slots are taken earliest-freed first, which charges the coordinator the most.
"""

from __future__ import annotations

import heapq
import json
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

UPLOAD, DOWNLOAD = "DataUpload", "DataDownload"
WRITE_VERBS = ("create", "update", "patch", "delete", "deletecollection")
VERB_ORDER = ("get", "list", "watch", "create", "update", "patch", "delete", "deletecollection")
COORDINATOR, SIMULATOR, AGENT, QUEUE, TOTAL = "coordinator", "simulator", "agent", "queue", "end to end"


# -- percentiles ---------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between closest ranks (numpy's default)."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile {q} is outside 0..100")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100.0
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass(frozen=True)
class Summary:
    count: int
    p50: float
    p99: float
    max: float
    mean: float


def summarize(values: Iterable[float]) -> Summary | None:
    data = list(values)
    if not data:
        return None
    return Summary(len(data), percentile(data, 50), percentile(data, 99), max(data), sum(data) / len(data))


# -- the coordinator's own histograms (scraped from /metrics) -----------------------------------

Buckets = dict[float, float]  # a histogram's upper bounds (le) -> cumulative counts


def histogram_buckets(exposition: str, name: str) -> Buckets:
    """The cumulative buckets of histogram ``name`` in Prometheus text, summed over label sets."""
    buckets: Buckets = {}
    for family in text_string_to_metric_families(exposition):
        if family.name != name:
            continue
        for sample in family.samples:
            if sample.name == f"{name}_bucket":
                bound = float(sample.labels["le"])
                buckets[bound] = buckets.get(bound, 0.0) + sample.value
    return buckets


def counter_by_label(exposition: str, name: str, label: str) -> dict[str, float]:
    """Counter ``name`` (without ``_total``) in Prometheus text, by the value of ``label``."""
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(exposition):
        if family.name == name:
            for sample in family.samples:
                if sample.name == f"{name}_total":
                    key = sample.labels.get(label, "")
                    values[key] = values.get(key, 0.0) + sample.value
    return values


def bucket_delta(after: Mapping[Any, float], before: Mapping[Any, float]) -> dict[Any, float]:
    """What was observed between two scrapes of one process (a key missing before counts 0): a
    histogram's buckets, or a counter's values by label."""
    return {key: count - before.get(key, 0.0) for key, count in after.items()}


def bucket_sum(counts: Iterable[Mapping[Any, float]]) -> dict[Any, float]:
    total: dict[Any, float] = {}
    for each in counts:
        for key, count in each.items():
            total[key] = total.get(key, 0.0) + count
    return total


def bucket_quantile(buckets: Mapping[float, float], q: float) -> float | None:
    """The upper bound of the bucket that holds the q-th quantile (0..1): an upper bound on the
    true value, as exact as the buckets are. None when nothing was observed; ``inf`` past the last."""
    ordered = sorted(buckets.items())
    if not ordered or ordered[-1][1] <= 0:
        return None
    rank = q * ordered[-1][1]
    return next(bound for bound, count in ordered if count >= rank)


def histogram_summary(buckets: Mapping[float, float]) -> dict[str, float | str | None]:
    """Count, and the bucket bounds that hold the median and the p99 (JSON-safe: "+Inf")."""

    def bound(q: float) -> float | str | None:
        found = bucket_quantile(buckets, q)
        return "+Inf" if found is not None and math.isinf(found) else found

    return {"count": max(buckets.values(), default=0.0), "p50_le": bound(0.5), "p99_le": bound(0.99)}


# -- one item's timeline -------------------------------------------------------------------------


@dataclass
class ItemTimes:
    """What was observed of one CR; None where a moment was never seen."""

    kind: str
    name: str
    group: str = ""  # velero.io/backup-name or velero.io/restore-name
    node: str = ""
    created: float | None = None  # just before the POST that created it
    accepted: float | None = None
    pod_created: float | None = None  # the exposer pod that served the (last) exposure
    pod_running: float | None = None
    prepared: float | None = None
    assigned: float | None = None  # the fake agent received the Assignment (first one after Prepared)
    in_progress: float | None = None  # the fake agent's InProgress write returned
    result: float | None = None  # the fake agent queued its AssignmentResult
    agent_final: float | None = None  # DataUpload: the fake agent's Completed write returned
    completed: float | None = None  # phase Completed
    final: float | None = None  # any final phase (Completed, Failed, Canceled)
    handed_over: float | None = None  # DataDownload: the restored PV's claimRef names the target PVC
    target_bound: float | None = None  # DataDownload: the target PVC is Bound
    cleaned: float | None = None  # final and the finalizer removed (the exposure is gone)
    final_phase: str = ""
    assignments: int = 0  # assignments received for it (epochs); 1 on the happy path
    queue_s: float | None = None  # filled by ``apply_queue_split``
    dispatch_s: float | None = None
    accept_queue_s: float | None = None  # filled by ``apply_prepare_queue_split``
    accept_s: float | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _gap(start: float | None, end: float | None) -> float | None:
    if start is None or end is None:
        return None
    return max(0.0, end - start)


def release_time(item: ItemTimes) -> float | None:
    """When the item's agent slot became free, with the simulated binder's delay taken out.

    A DataUpload's agent writes Completed before it sends its result; the coordinator may count
    the slot free at either. A DataDownload stays InProgress until the coordinator has handed the
    restored PV to the target PVC and the (simulated) binder bound it: the binder's delay is not
    the coordinator's, so the release is moved later by it.
    """
    if item.kind == UPLOAD:
        moments = [t for t in (item.result, item.agent_final, item.completed) if t is not None]
        return min(moments) if moments else None
    if item.result is None:
        return None
    binder = _gap(item.handed_over, item.target_bound) or 0.0
    return item.result + binder


@dataclass(frozen=True)
class Slotted:
    """An item holding one slot of ``pool`` from ``start`` to ``release``, wanting it from ``ready``."""

    key: str
    pool: str
    ready: float
    start: float
    release: float | None


@dataclass(frozen=True)
class QueueSplit:
    queue: dict[str, float]  # key -> seconds waiting for a slot (caused by the configured limit)
    dispatch: dict[str, float]  # key -> seconds from eligible to start (the controller's own latency)
    violations: int  # starts while every slot was taken: the limit was not honoured
    peak: dict[str, int]  # pool -> most slots held at once


def queue_split(entries: Iterable[Slotted], capacity: int, origin: float) -> QueueSplit:
    """Split each wait ``start - ready`` into queue time and dispatch latency (module docstring).

    Every pool starts with ``capacity`` slots free since ``origin``. Events are replayed in time
    order, a release before a start at the same moment.
    """
    if capacity < 1:
        raise ValueError("a pool needs at least one slot")
    events: dict[str, list[tuple[float, int, Slotted]]] = defaultdict(list)
    for entry in entries:
        events[entry.pool].append((entry.start, 1, entry))
        if entry.release is not None:
            events[entry.pool].append((entry.release, 0, entry))
    queue: dict[str, float] = {}
    dispatch: dict[str, float] = {}
    peak: dict[str, int] = {}
    violations = 0
    for pool, timeline in events.items():
        free = [origin] * capacity
        held = 0
        peak[pool] = 0
        started: set[str] = set()
        for moment, order, entry in sorted(timeline, key=lambda e: (e[0], e[1], e[2].key)):
            if order == 0:
                if entry.key in started:  # a release before its own start would be a clock glitch
                    started.discard(entry.key)
                    held -= 1
                    heapq.heappush(free, moment)
                continue
            started.add(entry.key)
            held += 1
            peak[pool] = max(peak[pool], held)
            if free:
                slot_free_since = heapq.heappop(free)
            else:
                violations += 1
                slot_free_since = entry.ready
            eligible = max(entry.ready, slot_free_since)
            eligible = min(eligible, moment)
            queue[entry.key] = max(0.0, eligible - entry.ready)
            dispatch[entry.key] = max(0.0, moment - eligible)
    return QueueSplit(queue, dispatch, violations, peak)


def apply_queue_split(items: Sequence[ItemTimes], load_concurrency: int, origin: float) -> QueueSplit:
    """``queue_split`` over the nodes' agent slots; sets ``queue_s`` and ``dispatch_s`` on the items."""
    entries = [
        Slotted(f"{i.kind}/{i.name}", i.node, i.prepared, i.assigned, release_time(i))
        for i in items
        if i.prepared is not None and i.assigned is not None and i.node
    ]
    split = queue_split(entries, load_concurrency, origin)
    for item in items:
        key = f"{item.kind}/{item.name}"
        item.queue_s = split.queue.get(key)
        item.dispatch_s = split.dispatch.get(key)
    return split


def apply_prepare_queue_split(items: Sequence[ItemTimes], limit: int | None, origin: float) -> QueueSplit:
    """``queue_split`` of New -> Accepted over the prepare queue: at most ``limit`` items hold an
    exposure without moving data (Accepted, or Prepared and not yet assigned); a slot frees when its
    item is assigned (or ends first). None: no limit, nothing is queue. Sets ``accept_queue_s`` and
    ``accept_s`` on the items."""
    entries = []
    for i in items:
        if i.created is None or i.accepted is None:
            continue
        ends = [t for t in (i.assigned, i.final) if t is not None and t >= i.accepted]
        entries.append(Slotted(f"{i.kind}/{i.name}", "", i.created, i.accepted, min(ends, default=None)))
    split = queue_split(entries, limit or max(1, len(entries)), origin)
    for item in items:
        key = f"{item.kind}/{item.name}"
        item.accept_queue_s = split.queue.get(key)
        item.accept_s = split.dispatch.get(key)
    return split


# -- the step table ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    name: str
    owner: str  # COORDINATOR, SIMULATOR, AGENT, QUEUE, TOTAL
    kinds: tuple[str, ...]
    start: str = ""  # ItemTimes field names; empty: a computed value (queue_s, dispatch_s)
    end: str = ""
    computed: str = ""
    note: str = ""


STEPS: tuple[Step, ...] = (
    Step("New -> Accepted: prepareQueueLength queue", QUEUE, (UPLOAD, DOWNLOAD), computed="accept_queue_s"),
    Step("New -> Accepted: admission", COORDINATOR, (UPLOAD, DOWNLOAD), computed="accept_s"),
    Step("New -> Accepted (whole)", TOTAL, (UPLOAD, DOWNLOAD), "created", "accepted"),
    Step("Accepted -> exposer pod created", COORDINATOR, (UPLOAD, DOWNLOAD), "accepted", "pod_created"),
    Step(
        "exposer pod created -> Running",
        SIMULATOR,
        (UPLOAD, DOWNLOAD),
        "pod_created",
        "pod_running",
        note="snapshot ready, provisioning, scheduling, kubelet",
    ),
    Step("exposer pod Running -> Prepared", COORDINATOR, (UPLOAD, DOWNLOAD), "pod_running", "prepared"),
    Step("Accepted -> Prepared (whole)", TOTAL, (UPLOAD, DOWNLOAD), "accepted", "prepared"),
    Step("Prepared -> assigned: loadConcurrency queue", QUEUE, (UPLOAD, DOWNLOAD), computed="queue_s"),
    Step("Prepared -> assigned: dispatch", COORDINATOR, (UPLOAD, DOWNLOAD), computed="dispatch_s"),
    Step("Prepared -> assigned (whole)", TOTAL, (UPLOAD, DOWNLOAD), "prepared", "assigned"),
    Step("assigned -> InProgress written", AGENT, (UPLOAD, DOWNLOAD), "assigned", "in_progress"),
    Step(
        "assigned -> result sent",
        AGENT,
        (UPLOAD, DOWNLOAD),
        "assigned",
        "result",
        note="the simulated transfer and the agent's status writes",
    ),
    Step("result -> restored PV handed over", COORDINATOR, (DOWNLOAD,), "result", "handed_over"),
    Step("hand-over -> target PVC Bound", SIMULATOR, (DOWNLOAD,), "handed_over", "target_bound"),
    Step("target PVC Bound -> Completed", COORDINATOR, (DOWNLOAD,), "target_bound", "completed"),
    Step("result -> Completed (whole)", TOTAL, (DOWNLOAD,), "result", "completed"),
    Step(
        "final -> cleaned up",
        TOTAL,
        (UPLOAD, DOWNLOAD),
        "final",
        "cleaned",
        note="exposure deleted and finalizer removed; includes simulated deletions",
    ),
    Step("New -> Completed", TOTAL, (UPLOAD, DOWNLOAD), "created", "completed"),
)


def step_values(items: Iterable[ItemTimes], step: Step) -> list[float]:
    values: list[float] = []
    for item in items:
        if item.kind not in step.kinds:
            continue
        if step.computed:
            value = getattr(item, step.computed)
        else:
            value = _gap(getattr(item, step.start), getattr(item, step.end))
        if value is not None:
            values.append(value)
    return values


@dataclass(frozen=True)
class StepRow:
    step: str
    owner: str
    kind: str
    summary: Summary | None
    note: str = ""


def step_table(items: Sequence[ItemTimes]) -> list[StepRow]:
    rows = []
    for step in STEPS:
        for kind in step.kinds:
            values = step_values([i for i in items if i.kind == kind], step)
            rows.append(StepRow(step.name, step.owner, kind, summarize(values), step.note))
    return rows


# -- fairness ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GroupWait:
    kind: str
    group: str
    items: int
    completed: int
    first_created: float
    last_final: float | None  # None while any item is not final
    wait_s: float | None  # first created -> last final
    median_done_s: float | None  # from first created, the median item's completion


def group_waits(items: Sequence[ItemTimes]) -> list[GroupWait]:
    """Per backup (or restore): from its first item's creation to its last item's Completed."""
    groups: dict[tuple[str, str], list[ItemTimes]] = defaultdict(list)
    for item in items:
        if item.created is not None:
            groups[(item.kind, item.group)].append(item)
    rows = []
    for (kind, group), members in groups.items():
        first = min(i.created for i in members if i.created is not None)
        done = [i.completed for i in members if i.completed is not None]
        finals = [i.final for i in members if i.final is not None]
        last = max(finals) if len(finals) == len(members) else None
        median = percentile([t - first for t in done], 50) if done else None
        rows.append(
            GroupWait(
                kind,
                group,
                len(members),
                len(done),
                first,
                last,
                None if last is None else last - first,
                median,
            )
        )
    return sorted(rows, key=lambda r: (r.kind, r.first_created, r.group))


# -- the audit log -------------------------------------------------------------------------------


@dataclass(frozen=True)
class AuditRecord:
    user: str
    verb: str
    resource: str  # "pods", "pods/status", "datauploads/status", ... ("" for non-resource URLs)
    code: int
    at: float  # requestReceivedTimestamp


def parse_time(text: str) -> float:
    """RFC 3339 (``2026-01-02T03:04:05.123456Z``, fractional part optional) as POSIX seconds."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def parse_audit_line(line: str | bytes) -> AuditRecord | None:
    """One audit event as one counted request, or None when this stage does not count.

    A request is counted once: at ResponseComplete, except long-running ones (watch), which are
    counted at ResponseStarted (their ResponseComplete comes when the watch ends, possibly never
    within the run). Panics count too.
    """
    try:
        event = json.loads(line)
    except ValueError:
        return None
    if not isinstance(event, dict) or event.get("kind") != "Event":
        return None
    stage, verb = event.get("stage"), str(event.get("verb", ""))
    long_running = verb == "watch"
    if not (
        (stage == "ResponseComplete" and not long_running)
        or (stage == "ResponseStarted" and long_running)
        or stage == "Panic"
    ):
        return None
    ref = event.get("objectRef") or {}
    resource = str(ref.get("resource", ""))
    if ref.get("subresource"):
        resource = f"{resource}/{ref['subresource']}"
    user = str((event.get("user") or {}).get("username", ""))
    code = int((event.get("responseStatus") or {}).get("code", 0))
    return AuditRecord(user, verb, resource, code, parse_time(str(event["requestReceivedTimestamp"])))


@dataclass
class RequestCounts:
    by_verb: Counter[str] = field(default_factory=Counter)
    by_resource_verb: Counter[tuple[str, str]] = field(default_factory=Counter)
    not_found: int = 0
    conflicts: int = 0
    lease: Counter[str] = field(default_factory=Counter)  # leader election, kept apart

    @property
    def writes(self) -> int:
        return sum(self.by_verb[v] for v in WRITE_VERBS)

    @property
    def total(self) -> int:
        return sum(self.by_verb.values())


def count_requests(records: Iterable[AuditRecord], user: str, start: float, end: float) -> RequestCounts:
    """The requests ``user`` made in [start, end]; Lease requests (leader election) counted apart."""
    counts = RequestCounts()
    for record in records:
        if record.user != user or not start <= record.at <= end:
            continue
        if record.resource == "leases":
            counts.lease[record.verb] += 1
            continue
        counts.by_verb[record.verb] += 1
        counts.by_resource_verb[(record.resource, record.verb)] += 1
        counts.not_found += record.code == 404
        counts.conflicts += record.code == 409
    return counts


# -- /proc ---------------------------------------------------------------------------------------


def cpu_seconds_from_stat(stat: str, clock_ticks: int) -> float:
    """utime + stime of ``/proc/<pid>/stat`` in seconds (the command name may hold spaces or ')')."""
    fields = stat[stat.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15
    return (int(fields[11]) + int(fields[12])) / clock_ticks


def machine_cpu_seconds(proc_stat: str, clock_ticks: int) -> tuple[float, float]:
    """(busy, all) CPU seconds of the whole machine since boot, from the ``cpu`` line of /proc/stat
    (busy: everything but idle and iowait; guest time is already counted in user)."""
    for line in proc_stat.splitlines():
        if line.startswith("cpu "):
            values = [int(v) for v in line.split()[1:9]]
            idle = values[3] + values[4]
            return (sum(values) - idle) / clock_ticks, sum(values) / clock_ticks
    raise ValueError("no aggregate cpu line in /proc/stat")


def vm_hwm_mib(status: str) -> float:
    """Peak resident set size (VmHWM) from ``/proc/<pid>/status``, in MiB."""
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            parts = line.split()
            if parts[2].lower() != "kb":
                raise ValueError(f"unexpected unit in {line!r}")
            return int(parts[1]) / 1024
    raise ValueError("no VmHWM line")


# -- growth and targets --------------------------------------------------------------------------


def growth_exponent(x1: float, y1: float, x2: float, y2: float) -> float | None:
    """k in y ~ x^k between two measurements (None when a value is not positive)."""
    if min(x1, x2, y1, y2) <= 0 or x1 == x2:
        return None
    return math.log(y2 / y1) / math.log(x2 / x1)


def per_ten_x(exponent: float | None) -> float | None:
    """How much the figure grows per 10x items: 10**k."""
    return None if exponent is None else 10.0**exponent


def growth_verdict(exponent: float | None, per_item: bool, slack: float = 0.15) -> str:
    """A total must grow at most linearly (k <= 1), a per-item figure must not grow (k <= 0)."""
    if exponent is None:
        return "n/a"
    limit = 0.0 if per_item else 1.0
    return "linear or better" if exponent <= limit + slack else "worse than linear"


@dataclass(frozen=True)
class TargetCheck:
    target: str
    measured: str
    met: bool | None  # None: not measured in this run


def check_targets(
    coordinator_p99: Mapping[str, float],
    writes_per_upload: float | None,
    peak_rss_mib: float | None,
    uploads: int,
    failover: Mapping[str, Any] | None = None,
) -> list[TargetCheck]:
    """The issue's targets, each against what this run measured. ``coordinator_p99``: step -> p99 s."""
    scale = "" if uploads >= 2000 else f" (measured at {uploads} uploads; the target is for 2,000)"
    outage = " (this run killed the leader: the outage is in it)" if failover else ""
    checks = []
    for step, p99 in coordinator_p99.items():
        checks.append(TargetCheck(f"{step}: p99 < 1 s{scale}{outage}", f"{p99:.3f} s", p99 < 1.0))
    if writes_per_upload is not None:
        checks.append(
            TargetCheck(
                f"API writes per DataUpload <= 12{scale}", f"{writes_per_upload:.1f}", writes_per_upload <= 12
            )
        )
    if peak_rss_mib is not None:
        checks.append(
            TargetCheck(
                f"coordinator peak RSS <= 256 MiB{scale}", f"{peak_rss_mib:.0f} MiB", peak_rss_mib <= 256
            )
        )
    if failover:
        resumed = failover.get("resumed_after_s")
        checks.append(
            TargetCheck(
                "failover: new leader resumes within 15 s",
                "never" if resumed is None else f"{resumed:.1f} s",
                resumed is not None and resumed <= 15.0,
            )
        )
        resent = int(failover.get("finished_work_resent", 0))
        checks.append(TargetCheck("failover: no finished work re-sent", str(resent), resent == 0))
    return checks
