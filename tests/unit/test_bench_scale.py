"""The pure parts of ``make bench-scale``: percentiles, step and queue attribution, audit-log counting,
/proc parsing, growth verdicts, targets, the workload plan and the report's rendering. No servers."""

from __future__ import annotations

import json
import math

import pytest

from bench import scale_stats as st
from bench.scale import backup_of_namespaces, plan_workload
from bench.scale_report import failover_figures, grpc_figures, merge_fleet_records, render, render_sweep
from bench.scale_sim import steady
from devenv.simworld import World

# -- percentiles ----------------------------------------------------------------------------------


def test_percentile_interpolates_between_closest_ranks() -> None:
    values = [4.0, 1.0, 3.0, 2.0]
    assert st.percentile(values, 0) == 1.0
    assert st.percentile(values, 100) == 4.0
    assert st.percentile(values, 50) == pytest.approx(2.5)
    assert st.percentile(list(range(101)), 99) == pytest.approx(99.0)
    assert st.percentile([7.0], 99) == 7.0
    with pytest.raises(ValueError, match="no values"):
        st.percentile([], 50)
    with pytest.raises(ValueError, match="outside"):
        st.percentile([1.0], 101)


def test_histogram_quantiles_come_from_the_difference_of_two_scrapes() -> None:
    from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

    registry = CollectorRegistry()
    waits = Histogram("barge_coordinator_queue_wait_seconds", "", buckets=(0.1, 1, 10), registry=registry)
    for seconds in (0.05, 0.05, 20):  # before the phase
        waits.observe(seconds)
    before = st.histogram_buckets(generate_latest(registry).decode(), "barge_coordinator_queue_wait_seconds")
    for seconds in [0.05] * 98 + [0.5, 5]:
        waits.observe(seconds)
    after = st.histogram_buckets(generate_latest(registry).decode(), "barge_coordinator_queue_wait_seconds")
    phase = st.bucket_delta(after, before)
    assert phase == {0.1: 98, 1: 99, 10: 100, math.inf: 100}
    assert st.bucket_quantile(phase, 0.5) == 0.1
    assert st.bucket_quantile(phase, 0.99) == 1
    assert st.bucket_quantile(phase, 1.0) == 10
    assert st.bucket_quantile(st.bucket_sum([phase, {math.inf: 100}]), 0.99) == math.inf
    assert st.bucket_quantile({}, 0.99) is None
    assert st.histogram_buckets("", "barge_coordinator_queue_wait_seconds") == {}
    wakeups = Counter("barge_coordinator_wakeups", "", ["source"], registry=registry)
    wakeups.labels("Pod").inc(3)
    wakeups.labels("hub").inc()
    counted = st.counter_by_label(generate_latest(registry).decode(), "barge_coordinator_wakeups", "source")
    assert st.bucket_delta(counted, {"Pod": 1.0}) == {"Pod": 2, "hub": 1}


def test_summarize() -> None:
    assert st.summarize([]) is None
    summary = st.summarize([1.0, 2.0, 3.0])
    assert summary == st.Summary(3, 2.0, pytest.approx(2.98), 3.0, 2.0)


# -- steps ----------------------------------------------------------------------------------------


def _upload(name: str, **moments: float) -> st.ItemTimes:
    return st.ItemTimes(st.UPLOAD, name, group="b", node="n1", **moments)


def test_steps_measure_gaps_per_kind_and_skip_what_was_not_seen() -> None:
    items = [
        _upload("a", created=0.0, accepted=0.2, pod_created=0.5, pod_running=1.5, prepared=1.6),
        _upload("b", created=0.0, accepted=0.4),
        st.ItemTimes(
            st.DOWNLOAD,
            "c",
            created=0.0,
            accepted=1.0,
            result=5.0,
            handed_over=5.5,
            target_bound=6.5,
            completed=6.6,
        ),
    ]
    by_name = {(s.name, kind): s for s in st.STEPS for kind in s.kinds}
    new_accepted = by_name[("New -> Accepted (whole)", st.UPLOAD)]
    assert st.step_values(items, new_accepted) == [0.2, 0.4, 1.0]
    running_prepared = by_name[("exposer pod Running -> Prepared", st.UPLOAD)]
    assert st.step_values(items, running_prepared) == [pytest.approx(0.1)]
    binder = by_name[("hand-over -> target PVC Bound", st.DOWNLOAD)]
    assert st.step_values([i for i in items if i.kind == st.DOWNLOAD], binder) == [1.0]
    rows = {(r.step, r.kind): r for r in st.step_table(items)}
    assert rows[("New -> Accepted (whole)", st.UPLOAD)].summary is not None
    assert rows[("New -> Accepted (whole)", st.UPLOAD)].summary.count == 2  # type: ignore[union-attr]
    assert rows[("hand-over -> target PVC Bound", st.DOWNLOAD)].owner == st.SIMULATOR


def test_a_step_that_went_backwards_counts_as_zero() -> None:
    item = _upload("a", created=10.0, accepted=9.99)  # observer lag: seen before the POST returned
    whole = next(s for s in st.STEPS if s.name == "New -> Accepted (whole)")
    assert st.step_values([item], whole) == [0.0]


def test_every_coordinator_step_is_owned_by_the_coordinator_and_named_once() -> None:
    names = [s.name for s in st.STEPS]
    assert len(names) == len(set(names))
    owners = {s.owner for s in st.STEPS}
    assert owners <= {st.COORDINATOR, st.SIMULATOR, st.AGENT, st.QUEUE, st.TOTAL}


# -- queue attribution ----------------------------------------------------------------------------


def test_queue_split_one_slot_two_items_prepared_together() -> None:
    entries = [
        st.Slotted("a", "n1", ready=1.0, start=1.2, release=3.0),
        st.Slotted("b", "n1", ready=1.0, start=3.3, release=5.0),
    ]
    split = st.queue_split(entries, capacity=1, origin=0.0)
    assert split.queue == {"a": 0.0, "b": pytest.approx(2.0)}
    assert split.dispatch == {"a": pytest.approx(0.2), "b": pytest.approx(0.3)}
    assert split.violations == 0
    assert split.peak == {"n1": 1}


def test_queue_split_takes_the_earliest_freed_slot_and_counts_violations() -> None:
    entries = [
        st.Slotted("a", "n1", ready=0.0, start=0.1, release=1.0),
        st.Slotted("b", "n1", ready=0.0, start=0.2, release=2.0),
        st.Slotted("c", "n1", ready=0.5, start=2.5, release=None),  # slots freed at 1.0 and 2.0
        st.Slotted("d", "n2", ready=0.0, start=0.1, release=0.5),
        st.Slotted("e", "n2", ready=0.0, start=0.3, release=None),  # n2 has 2 slots: no violation
    ]
    split = st.queue_split(entries, capacity=2, origin=0.0)
    assert split.queue["c"] == pytest.approx(0.5)  # eligible at 1.0, the earliest free slot
    assert split.dispatch["c"] == pytest.approx(1.5)
    assert split.violations == 0
    over = st.queue_split(entries[:2], capacity=1, origin=0.0)
    assert over.violations == 1
    assert over.peak["n1"] == 2


def test_queue_split_rejects_a_pool_without_slots() -> None:
    with pytest.raises(ValueError, match="one slot"):
        st.queue_split([], capacity=0, origin=0.0)


def test_release_time_of_an_upload_is_its_first_ending_and_a_download_skips_the_binder() -> None:
    upload = _upload("a", result=5.0, agent_final=4.9, completed=4.95)
    assert st.release_time(upload) == 4.9
    assert st.release_time(_upload("b")) is None
    download = st.ItemTimes(st.DOWNLOAD, "c", result=5.0, handed_over=5.2, target_bound=6.0)
    assert st.release_time(download) == pytest.approx(5.8)  # the binder's 0.8 s is not the coordinator's
    assert st.release_time(st.ItemTimes(st.DOWNLOAD, "d", result=5.0)) == 5.0


def test_apply_queue_split_fills_the_items() -> None:
    items = [
        _upload("a", prepared=1.0, assigned=1.1, result=2.0),
        _upload("b", prepared=1.0, assigned=2.4, result=3.5),
        _upload("c", prepared=1.0),  # never assigned
    ]
    split = st.apply_queue_split(items, load_concurrency=1, origin=0.0)
    assert split.violations == 0
    assert items[0].queue_s == 0.0
    assert items[1].queue_s == pytest.approx(1.0)
    assert items[1].dispatch_s == pytest.approx(0.4)
    assert items[2].queue_s is None


def test_prepare_queue_split_charges_the_wait_for_an_exposure_slot_to_the_queue() -> None:
    items = [
        _upload("a", created=0.0, accepted=0.1, assigned=5.0),
        _upload("b", created=0.0, accepted=0.2, assigned=6.0),
        _upload("c", created=0.0, accepted=5.3),  # waited for a's slot (freed at 5.0)
        _upload("d", created=0.0, accepted=0.3, final=2.0),  # failed before it was assigned
    ]
    split = st.apply_prepare_queue_split(items, limit=3, origin=0.0)
    assert split.violations == 0
    assert items[2].accept_queue_s == pytest.approx(2.0)  # d's slot freed first, at 2.0
    assert items[2].accept_s == pytest.approx(3.3)
    assert items[0].accept_queue_s == 0.0
    assert items[0].accept_s == pytest.approx(0.1)
    unlimited = st.apply_prepare_queue_split(items, limit=None, origin=0.0)
    assert unlimited.violations == 0
    assert items[2].accept_queue_s == 0.0
    assert items[2].accept_s == pytest.approx(5.3)


# -- fairness -------------------------------------------------------------------------------------


def test_group_waits_per_backup() -> None:
    items = [
        st.ItemTimes(st.UPLOAD, "a", group="big", created=0.0, completed=10.0, final=10.0),
        st.ItemTimes(st.UPLOAD, "b", group="big", created=0.1, completed=20.0, final=20.0),
        st.ItemTimes(st.UPLOAD, "c", group="small", created=1.0, completed=3.0, final=3.0),
        st.ItemTimes(st.UPLOAD, "d", group="open", created=1.0),
    ]
    rows = {r.group: r for r in st.group_waits(items)}
    assert rows["big"].wait_s == 20.0
    assert rows["big"].median_done_s == pytest.approx(15.0)
    assert rows["small"].wait_s == 2.0
    assert rows["open"].wait_s is None
    assert rows["open"].completed == 0


# -- the audit log --------------------------------------------------------------------------------


def _event(
    stage: str, verb: str, resource: str = "pods", user: str = "barge-coordinator", **extra: object
) -> str:
    ref = {"resource": resource, "namespace": "velero", "name": "x", **extra}
    return json.dumps(
        {
            "kind": "Event",
            "apiVersion": "audit.k8s.io/v1",
            "stage": stage,
            "verb": verb,
            "user": {"username": user, "groups": ["system:masters"]},
            "objectRef": ref,
            "responseStatus": {"code": 404 if verb == "get" else 200},
            "requestReceivedTimestamp": "2026-01-02T03:04:05.250000Z",
        }
    )


def test_audit_events_count_once_per_request() -> None:
    record = st.parse_audit_line(_event("ResponseComplete", "update", "datauploads", subresource="status"))
    assert record is not None
    assert (record.user, record.verb, record.resource, record.code) == (
        "barge-coordinator",
        "update",
        "datauploads/status",
        200,
    )
    assert record.at == pytest.approx(st.parse_time("2026-01-02T03:04:05Z") + 0.25)
    assert st.parse_audit_line(_event("RequestReceived", "get")) is None
    assert st.parse_audit_line(_event("ResponseStarted", "watch")) is not None
    assert st.parse_audit_line(_event("ResponseComplete", "watch")) is None
    assert st.parse_audit_line(_event("Panic", "get")) is not None
    assert st.parse_audit_line("not json") is None
    assert st.parse_audit_line(json.dumps({"kind": "EventList"})) is None


def test_count_requests_by_user_window_and_verb() -> None:
    at = st.parse_time("2026-01-02T03:04:05.25Z")
    lines = [
        _event("ResponseComplete", "get"),
        _event("ResponseComplete", "create", "pods"),
        _event("ResponseComplete", "patch", "persistentvolumes"),
        _event("ResponseComplete", "delete", "pods"),
        _event("ResponseComplete", "update", "leases"),
        _event("ResponseComplete", "get", user="someone-else"),
        _event("ResponseStarted", "watch"),
    ]
    records = [r for r in map(st.parse_audit_line, lines) if r is not None]
    counts = st.count_requests(records, "barge-coordinator", at - 1, at + 1)
    assert counts.by_verb == {"get": 1, "create": 1, "patch": 1, "delete": 1, "watch": 1}
    assert counts.writes == 3
    assert counts.total == 5
    assert counts.not_found == 1
    assert counts.lease == {"update": 1}
    assert counts.by_resource_verb[("pods", "create")] == 1
    assert st.count_requests(records, "barge-coordinator", at + 1, at + 2).total == 0


# -- /proc ----------------------------------------------------------------------------------------


def test_cpu_seconds_from_stat_survives_odd_command_names() -> None:
    fields = ["S", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "250", "150", "0", "0"]
    stat = "4242 (python (x) y) " + " ".join(fields)
    assert st.cpu_seconds_from_stat(stat, 100) == pytest.approx(4.0)


def test_vm_hwm_and_machine_cpu() -> None:
    status = "Name:\tpython\nVmPeak:\t  999 kB\nVmHWM:\t  262144 kB\nVmRSS:\t 1000 kB\n"
    assert st.vm_hwm_mib(status) == 256.0
    with pytest.raises(ValueError, match="VmHWM"):
        st.vm_hwm_mib("Name:\tx\n")
    proc_stat = "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 50 0 25 400 25 0 0 0 0 0\n"
    assert st.machine_cpu_seconds(proc_stat, 100) == (1.5, 10.0)


# -- growth and targets ---------------------------------------------------------------------------


def test_growth_exponent_and_verdicts() -> None:
    assert st.growth_exponent(20, 1.0, 200, 10.0) == pytest.approx(1.0)
    assert st.growth_exponent(20, 1.0, 200, 100.0) == pytest.approx(2.0)
    assert st.growth_exponent(20, 0.0, 200, 1.0) is None
    assert st.per_ten_x(2.0) == pytest.approx(100.0)
    assert st.growth_verdict(1.0, per_item=False) == "linear or better"
    assert st.growth_verdict(2.0, per_item=False) == "worse than linear"
    assert st.growth_verdict(math.log10(2.0), per_item=True) == "worse than linear"
    assert st.growth_verdict(math.log10(1.2), per_item=True) == "linear or better"  # within the slack
    assert st.growth_verdict(0.0, per_item=True) == "linear or better"
    assert st.growth_verdict(None, per_item=True) == "n/a"


def test_targets_are_marked_met_or_missed() -> None:
    checks = st.check_targets({"DataUpload: New -> Accepted": 0.4, "x": 1.5}, 13.0, 100.0, 2000)
    assert [c.met for c in checks] == [True, False, False, True]
    assert "2,000" not in checks[0].target
    small = st.check_targets({}, 10.0, None, 200)
    assert "measured at 200 uploads" in small[0].target
    failover = st.check_targets({}, None, None, 2000, {"resumed_after_s": 9.0, "finished_work_resent": 2})
    assert [c.met for c in failover] == [True, False]


# -- the workload ---------------------------------------------------------------------------------


def test_backups_of_unequal_size_cover_every_namespace() -> None:
    owners = backup_of_namespaces(20)
    assert len(owners) == 20
    assert owners.count("backup-big") == 10
    assert owners.count("backup-small-2") == 1
    assert backup_of_namespaces(1) == ["backup-big"]
    assert len(set(backup_of_namespaces(3))) == 3


def test_plan_workload_is_ordered_by_backup_and_unique() -> None:
    plan = plan_workload(50, 20)
    assert len(plan) == len({v.pvc for v in plan}) == 50
    assert len({v.namespace for v in plan}) == 20
    assert plan[0].backup == "backup-big"
    assert plan[-1].backup == "backup-small-2"


# -- merging and rendering ------------------------------------------------------------------------


def _record(
    name: str, epoch: int, received: float, result: float, outcome: str = "completed"
) -> dict[str, object]:
    return {
        "kind": st.UPLOAD,
        "name": name,
        "node": "n1",
        "id": f"uid-{name}",
        "epoch": epoch,
        "received": received,
        "in_progress": received + 0.1,
        "result_sent": result,
        "outcome": outcome,
    }


def test_merge_fleet_records_takes_the_first_assignment_and_the_completing_result() -> None:
    items = [_upload("a", prepared=1.0), _upload("b", prepared=1.0)]
    records = [
        _record("a", 2, 5.0, 6.0),
        _record("a", 1, 2.0, 3.0, outcome="handed_off"),
        _record("b", 1, 1.5, 2.5),
    ]
    merge_fleet_records(items, records)
    assert (items[0].assigned, items[0].result, items[0].assignments) == (2.0, 6.0, 2)
    assert (items[1].assigned, items[1].in_progress, items[1].assignments) == (1.5, 1.6, 1)


def test_failover_figures_count_finished_work_sent_again() -> None:
    records = [
        _record("a", 1, 1.0, 2.0),
        _record("a", 2, 12.0, 13.0),  # finished at 2.0, assigned again after the kill
        _record("b", 1, 11.0, 12.5),
    ]
    summary = {"welcomes": [["n1", "coordinator-0", 0.5], ["n1", "coordinator-1", 10.5]]}
    event = {"killed": "coordinator-0", "at": 10.0, "in_flight": 5, "completed_before": 1}
    figures = failover_figures(event, summary, records, [])
    assert figures["new_leader"] == "coordinator-1"
    assert figures["first_welcome_after_s"] == pytest.approx(0.5)
    assert figures["resumed_after_s"] == pytest.approx(1.0)
    assert figures["finished_work_resent"] == 1
    assert figures["reassigned_after_kill"] == 1


def _report(uploads: int, writes: int, p99: float) -> dict[str, object]:
    summary = {"count": uploads, "p50": p99 / 2, "p99": p99, "max": p99, "mean": p99 / 2}
    counts = {
        "items": uploads,
        "by_verb": {"get": uploads * 2, "create": writes},
        "by_resource_verb": {"pods get": 3},
        "writes": writes,
        "total": writes + uploads * 2,
        "not_found": 0,
        "conflicts": 0,
        "lease": {"update": 4},
        "seconds": 60.0,
    }
    summary_fleet = {
        "received_per_assignment": {"x": 1},
        "sent_per_assignment": {"x": 3},
        "commands": {"Assignment": 1, "Welcome": 1},
        "events": {"AssignmentResult": 1},
        "hellos_and_heartbeats": 2,
        "max_running": {"n1": 1},
        "over_capacity": 0,
    }
    report: dict[str, object] = {
        "date": "2026-01-01",
        "coordinator_source": "abc",
        "timed_out": False,
        "options": {
            "nodes": 2,
            "uploads": uploads,
            "namespaces": 2,
            "transfer_s": 1.0,
            "load_concurrency": 1,
            "prepare_queue_length": None,
            "sim_mode": "watch",
        },
        "phases": {
            "uploads": {
                "kind": st.UPLOAD,
                "count": uploads,
                "burst_start": 0.0,
                "burst_end": 1.0,
                "all_final": 10.0 * uploads,
                "all_cleaned": 11.0 * uploads,
                "end": 12.0,
            }
        },
        "outcomes": {"uploads": {"Completed": uploads, "cleaned": uploads}},
        "steps": [
            {
                "step": "New -> Accepted",
                "owner": st.COORDINATOR,
                "kind": st.UPLOAD,
                "note": "",
                "summary": summary,
            }
        ],
        "queue": {"uploads": {"violations": 0, "max_per_node": 1}},
        "coordinator_own": {
            "uploads": {
                "barge_coordinator_queue_wait_seconds": st.histogram_summary({0.1: 90, 1: 99, math.inf: 100}),
                "barge_coordinator_reconcile_duration_seconds": st.histogram_summary({}),
                "wakeups_by_source": {"Pod": 3.0 * uploads, "hub": 1.0 * uploads},
            }
        },
        "requests": {"uploads/barge-coordinator": counts},
        "processes": {"coordinator-0": {"cpu_uploads_s": 1.0 * uploads, "peak_rss_mib": 100.0}},
        "machine": {
            "uploads": {
                "cpus": 2,
                "seconds": 10.0,
                "busy_cpu_s": 10.0,
                "benchmark_cpu_s": 9.0,
                "other_cpu_s": 1.0,
                "loadavg_before": "0.1",
                "loadavg_after": "1.0",
            }
        },
        "grpc": grpc_figures(summary_fleet, [{"id": "x"}]),
        "fairness": [],
        "simulator": {
            "mode": "watch",
            "passes": 3,
            "pass_seconds": summary,
            "full_list_probes": [],
            "errors": [],
        },
        "fleet_errors": [],
    }
    report["targets"] = [{"target": "t", "measured": "1", "met": True}]
    return report


def test_render_and_sweep_print_every_section() -> None:
    small, big = _report(20, 200, 0.2), _report(200, 2000, 0.3)
    text = render(small)
    for expected in (
        "New -> Accepted",
        "barge-coordinator",
        "coordinator-0",
        "gRPC messages per assignment",
        "| t | 1 | met |",
        "| uploads | waiting for a worker | 100 | <= 0.1 | <= 1 |",
        "uploads: wakeups per item by source: Pod 3.0, hub 1.0",
    ):
        assert expected in text
    sweep = render_sweep([small, big])
    assert "coordinator API writes per DataUpload" in sweep
    assert "linear or better" in sweep


# -- the simulator's steady-state filter ----------------------------------------------------------


def _obj(uid: str, phase: str = "", **fields: object) -> dict[str, object]:
    return {
        "metadata": {"uid": uid, "name": uid, "namespace": "ns", **fields.pop("meta", {})},  # type: ignore[dict-item]
        "spec": fields.pop("spec", {}),
        "status": {"phase": phase} if phase else {},
    }


def test_steady_skips_only_what_the_stock_controllers_would_leave_alone() -> None:
    pvc = _obj("c1", "Bound", spec={"volumeName": "pv1"})
    pv = _obj("pv1", "Bound", spec={"claimRef": {"namespace": "ns", "name": "c1", "uid": "c1"}})
    world = World(
        nodes={}, pvs={"pv1": pv}, contents={}, pvcs={("ns", "c1"): pvc}, snapshots={}, pods=[], pdbs=[]
    )
    assert steady("_claim", (pvc, world))
    assert steady("_volume", (pv, world))
    released = _obj("pv1", "Released", spec=pv["spec"])
    assert not steady("_claim", (pvc, World({}, {"pv1": released}, {}, {("ns", "c1"): pvc}, {}, [], [])))
    assert not steady("_volume", (pv, World({}, {"pv1": pv}, {}, {}, {}, [], [])))  # its claim is gone
    assert not steady("_claim", (_obj("c2", "Pending"), world))
    assert steady("_sync", (_obj("p", "Running"), world))
    assert not steady("_sync", (_obj("p", "Pending"), world))
    deleting = _obj("p", "Running", meta={"deletionTimestamp": "2026-01-01T00:00:00Z"})
    assert not steady("_sync", (deleting, world))
    content = _obj(
        "vsc", meta={"finalizers": ["snapshot.storage.kubernetes.io/volumesnapshotcontent-bound-protection"]}
    )
    assert steady("_protect", (content,))
    assert not steady("_protect", (_obj("vsc"),))
    assert not steady("_schedule", (pvc, world))  # unknown steps always run
