"""Figures and tables of ``make bench-scale`` from what ``bench.scale`` collected (no servers here).

``render`` prints one run, ``render_sweep`` how each figure grows across runs of several sizes.
The arithmetic itself is in ``bench.scale_stats``.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import scale_stats as st

Obj = dict[str, Any]
COORDINATOR_USER = "barge-coordinator"
AGENTS_USER = "barge-bench-agents"
UPLOAD_KIND = st.UPLOAD


# -- turning raw records into figures ------------------------------------------------------------


def read_json(path: Path) -> Obj | None:
    try:
        data: Obj = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data


def read_jsonl(path: Path) -> list[Obj]:
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except OSError:
        return []


def parse_audit(path: Path) -> list[st.AuditRecord]:
    records = []
    with contextlib.suppress(OSError), path.open("rb") as log_file:
        for line in log_file:
            record = st.parse_audit_line(line)
            if record is not None:
                records.append(record)
    return records


def merge_fleet_records(items: Sequence[st.ItemTimes], records: Sequence[Obj]) -> None:
    """The fake agents' moments onto the items: the first assignment after Prepared, the completing
    result (or the last one), and how many assignments each item got."""
    by_item: dict[tuple[str, str], list[Obj]] = {}
    for record in records:
        by_item.setdefault((record["kind"], record["name"]), []).append(record)
    for item in items:
        runs = sorted(by_item.get((item.kind, item.name), []), key=lambda r: (r["epoch"], r["received"]))
        if not runs:
            continue
        item.assignments = len(runs)
        first = runs[0]
        item.assigned, item.in_progress = first["received"], first.get("in_progress")
        item.node = item.node or first["node"]
        finishing = [r for r in runs if r.get("outcome") == "completed"] or runs
        item.result = finishing[-1].get("result_sent")
        item.agent_final = finishing[-1].get("final_written")
        if first["node"] != finishing[-1]["node"]:
            item.node = finishing[-1]["node"]


def grpc_figures(summary: Obj | None, records: Sequence[Obj], seconds: float = 0.0) -> Obj:
    """Messages per assignment (those naming it: Assignment, Cancel, progress, result) and, apart,
    what keeps the streams up (Hello, Welcome, heartbeats), which grows with time, not with items."""
    if not summary:
        return {}
    ids = {r["id"] for r in records}
    received = summary.get("received_per_assignment", {})
    sent = summary.get("sent_per_assignment", {})
    per_received = [received.get(i, 0) for i in ids]
    per_sent = [sent.get(i, 0) for i in ids]
    count = max(1, len(ids))
    commands = summary.get("commands") or {}
    streams = max(1, int(summary.get("streams") or 0))
    upkeep = summary.get("hellos_and_heartbeats", 0) + commands.get("Welcome", 0)
    return {
        "assignments": len(ids),
        "received_per_assignment": sum(per_received) / count,
        "sent_per_assignment": sum(per_sent) / count,
        "received_max": max(per_received, default=0),
        "sent_max": max(per_sent, default=0),
        "messages_per_assignment": (sum(per_received) + sum(per_sent)) / count,
        "commands": commands,
        "events": summary.get("events"),
        "stream_messages": upkeep,
        "stream_messages_per_stream_minute": upkeep / streams / (seconds / 60) if seconds > 0 else None,
        "max_running_per_node": max((summary.get("max_running") or {}).values(), default=0),
        "over_capacity": summary.get("over_capacity", 0),
    }


def failover_figures(
    event: Obj, summary: Obj | None, records: Sequence[Obj], items: Sequence[st.ItemTimes]
) -> Obj:
    killed_at = float(event["at"])
    welcomes = [
        w for w in (summary or {}).get("welcomes", []) if w[2] > killed_at and w[1] != event["killed"]
    ]
    after = sorted(r["received"] for r in records if r["received"] > killed_at)
    finished_before: dict[str, float] = {}  # assignment id -> when it first finished
    for r in records:
        if r.get("outcome") == "completed" and r.get("result_sent"):
            finished_before[r["id"]] = min(r["result_sent"], finished_before.get(r["id"], math.inf))
    resent = sum(
        1 for r in records if r["id"] in finished_before and r["received"] > finished_before[r["id"]]
    )
    nodes = {w[0] for w in welcomes}
    lease_taken = event.get("lease_taken_at")
    first_welcome = welcomes[0][2] if welcomes else None
    return {
        **event,
        "lease_taken_after_s": lease_taken - killed_at if lease_taken else None,
        "welcome_after_lease_s": first_welcome - lease_taken if lease_taken and first_welcome else None,
        "resumed_after_lease_s": after[0] - lease_taken if lease_taken and after else None,
        "new_leader": welcomes[0][1] if welcomes else None,
        "first_welcome_after_s": welcomes[0][2] - killed_at if welcomes else None,
        "all_agents_back_after_s": max(w[2] for w in welcomes) - killed_at if welcomes else None,
        "agents_back": len(nodes),
        "resumed_after_s": after[0] - killed_at if after else None,
        "finished_work_resent": resent,
        "reassigned_after_kill": sum(1 for r in records if r["received"] > killed_at and r["epoch"] > 1),
    }


def targets_of(report: Obj) -> list[st.TargetCheck]:
    p99: dict[str, float] = {}
    for row in report["steps"]:
        if row["owner"] == st.COORDINATOR and row["summary"] is not None:
            name = f"{row['kind']}: {row['step']}"
            p99[name] = row["summary"]["p99"]
    uploads = report["requests"].get(f"uploads/{COORDINATOR_USER}")
    writes = uploads["writes"] / uploads["items"] if uploads and uploads["items"] else None
    rss = max(
        (v.get("peak_rss_mib", 0.0) for n, v in report["processes"].items() if n.startswith("coordinator-")),
        default=None,
    )
    return st.check_targets(p99, writes, rss, int(report["options"]["uploads"]), report.get("failover"))


# -- printing -------------------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def render(report: Obj) -> str:
    """One run as Markdown tables (what ``make bench-scale`` prints and docs/performance.md keeps)."""
    sections = (_header, _outcomes, _steps, _requests, _processes, _grpc, _fairness, _failover, _targets)
    return "\n".join(line for section in sections for line in section(report))


def _header(report: Obj) -> list[str]:
    o = report["options"]
    queue = o["prepare_queue_length"]
    return [
        "",
        f"## Control plane at scale: {o['nodes']} nodes, {o['uploads']} DataUploads + DataDownloads",
        "",
        f"{o['namespaces']} namespaces, transfer {o['transfer_s']} s, loadConcurrency {o['load_concurrency']}"
        + ("" if queue is None else f", prepareQueueLength {queue}")
        + f"; {report['date']}; coordinator {report['coordinator_source']}; simulator: {o['sim_mode']}"
        + (
            f"; **STOPPED EARLY**: {report.get('stopped_early') or 'timed out'}"
            if report["timed_out"]
            else ""
        ),
    ]


def _outcomes(report: Obj) -> list[str]:
    lines = [
        "",
        "| phase | items | outcome | burst created in s | all final after s | all cleaned up after s |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for key, phase in report["phases"].items():
        outcome = ", ".join(f"{k} {v}" for k, v in sorted(report["outcomes"][key].items()) if k != "cleaned")
        start = phase["burst_start"]
        final, cleaned = phase["all_final"], phase["all_cleaned"]
        lines.append(
            f"| {key} | {phase['count']} | {outcome} | {phase['burst_end'] - start:.1f} | "
            f"{_fmt(final and final - start, 1)} | {_fmt(cleaned and cleaned - start, 1)} |"
        )
    return lines


def _steps(report: Obj) -> list[str]:
    lines = [
        "",
        "| step (s) | kind | controlled by | n | p50 | p99 | max |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for row in report["steps"]:
        s = row["summary"]
        if s is not None:
            lines.append(
                f"| {row['step']} | {row['kind']} | {row['owner']} | {s['count']} | {s['p50']:.3f} | "
                f"{s['p99']:.3f} | {s['max']:.3f} |"
            )
    lines.extend(_coordinator_own(report))
    limit = report["options"]["load_concurrency"]
    for key, split in report["queue"].items():
        queue = split.get("prepare_queue_limit")
        lines.append(
            f"\n{key}: at most {split['max_per_node']} assignment(s) at once on a node (loadConcurrency "
            f"{limit}); assignments beyond the limit: {split['violations']}"
            + (
                ""
                if queue is None
                else f"; at most {split['prepare_queue_peak']} items exposed and not yet running (prepare "
                f"queue {queue}); acceptances beyond it: {split['prepare_queue_violations']}"
            )
        )
    return lines


def _coordinator_own(report: Obj) -> list[str]:
    """The share of every coordinator step spent inside the coordinator, from its own histograms:
    the wait for a reconcile worker, then the reconcile (bucket bounds, so each is "at most")."""
    own = report.get("coordinator_own") or {}
    rows = []
    for key, histograms in own.items():
        for name, label in (
            ("barge_coordinator_queue_wait_seconds", "waiting for a worker"),
            ("barge_coordinator_reconcile_duration_seconds", "reconcile"),
        ):
            h = histograms.get(name) or {}
            if h.get("count"):
                rows.append(f"| {key} | {label} | {h['count']:.0f} | <= {h['p50_le']} | <= {h['p99_le']} |")
    if not rows:
        return []
    header = [
        "",
        "Inside the coordinator (its own histograms; a leader killed mid-phase is not counted):",
        "",
    ]
    lines = [*header, "| phase | time (s) | n | p50 | p99 |", "|---|---|---:|---:|---:|", *rows]
    for key, histograms in own.items():
        wakeups = histograms.get("wakeups_by_source") or {}
        items = max(1, report["phases"][key]["count"])
        if wakeups:
            ranked = sorted(wakeups.items(), key=lambda entry: -entry[1])
            shown = ", ".join(f"{source} {n / items:.1f}" for source, n in ranked)
            lines.append(f"\n{key}: wakeups per item by source: {shown}")
    return lines


def _requests(report: Obj) -> list[str]:
    lines = ["", "API requests per item by verb, per identity (leader-election Lease requests apart):", ""]
    lines.append(
        "| identity, phase | " + " | ".join(st.VERB_ORDER) + " | writes | all | 404 | 409 | Lease/min |"
    )
    lines.append("|---|" + "---:|" * (len(st.VERB_ORDER) + 5))
    for key, counts in report["requests"].items():
        n = max(1, counts["items"])
        minutes = max(counts["seconds"], 1e-9) / 60
        verbs = " | ".join(f"{counts['by_verb'].get(v, 0) / n:.1f}" for v in st.VERB_ORDER)
        lines.append(
            f"| {key} | {verbs} | {counts['writes'] / n:.1f} | {counts['total'] / n:.1f} | "
            f"{counts['not_found'] / n:.1f} | {counts['conflicts'] / n:.1f} | "
            f"{sum(counts['lease'].values()) / minutes:.0f} |"
        )
    for phase, kind in (("uploads", "DataUpload"), ("downloads", "DataDownload")):
        counts = report["requests"].get(f"{phase}/{COORDINATOR_USER}")
        if counts and counts["items"]:
            top = list(counts["by_resource_verb"].items())[:14]
            shown = ", ".join(
                f"{'(discovery)' if k.startswith(' ') else ''}{k} {v / counts['items']:.1f}" for k, v in top
            )
            lines.append(f"\ncoordinator per {kind}, by resource: {shown}")
    return lines


def _processes(report: Obj) -> list[str]:
    lines = ["", "| process | CPU s (uploads) | CPU s (downloads) | peak RSS MiB |", "|---|---:|---:|---:|"]
    for name, figures in report["processes"].items():
        lines.append(
            f"| {name} | {_fmt(figures.get('cpu_uploads_s'), 1)} | "
            f"{_fmt(figures.get('cpu_downloads_s'), 1)} | {_fmt(figures.get('peak_rss_mib'), 0)} |"
        )
    for key, m in (report.get("machine") or {}).items():
        share = m["busy_cpu_s"] / max(m["seconds"] * (m["cpus"] or 1), 1e-9)
        lines.append(
            f"\nmachine during {key}: {m['cpus']} CPUs, {m['busy_cpu_s']:.0f} CPU-s busy in "
            f"{m['seconds']:.0f} s ({share:.0%}), of which "
            f"{m['other_cpu_s']:.0f} CPU-s outside this benchmark; load average {m['loadavg_before']} -> "
            f"{m['loadavg_after']}"
        )
    sim = report.get("simulator") or {}
    if sim.get("pass_seconds"):
        passes = sim["pass_seconds"]
        line = (
            f"\nsimulator ({sim['mode']}): {sim['passes']} passes, p50 {passes['p50'] * 1000:.0f} ms, "
            f"p99 {passes['p99'] * 1000:.0f} ms, max {passes['max'] * 1000:.0f} ms"
        )
        worst = max(sim.get("full_list_probes") or [], key=lambda p: p["seconds"], default=None)
        if worst:
            line += (
                f"; one full listing (what each pass of the polling simulator pays) took up to "
                f"{worst['seconds']:.2f} s for {worst['objects']} objects"
            )
        if sim.get("controllers"):
            spent = sorted(sim["controllers"].items(), key=lambda c: -c[1]["total_s"])
            line += "; time per controller (total / worst pass): " + ", ".join(
                f"{name} {c['total_s']:.1f} / {c['max_s']:.1f} s" for name, c in spent
            )
        if sim.get("errors"):
            line += f"; errors: {sim['errors'][:3]}"
        lines.append(line)
    return lines


def _grpc(report: Obj) -> list[str]:
    g = report.get("grpc") or {}
    if not g:
        return []
    n = max(1, g["assignments"])
    per_type = {**(g.get("commands") or {}), **(g.get("events") or {})}
    shown = ", ".join(f"{k} {v / n:.2f}" for k, v in sorted(per_type.items()) if k != "Welcome")
    upkeep = g.get("stream_messages_per_stream_minute")
    return [
        "",
        f"gRPC messages per assignment ({g['assignments']} assignments): {g['messages_per_assignment']:.2f} "
        f"(received {g['received_per_assignment']:.2f}, max {g['received_max']}; sent "
        f"{g['sent_per_assignment']:.2f}, max {g['sent_max']}); by type: {shown}. Stream upkeep (Hello, "
        f"Welcome, heartbeats) apart: {g['stream_messages']} in all"
        + ("" if upkeep is None else f", {upkeep:.1f} per stream per minute"),
    ]


def _fairness(report: Obj) -> list[str]:
    lines = [
        "",
        "| waiting per backup / restore | items | Completed | first created -> last final s | "
        "median item Completed after s |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in report["fairness"]:
        lines.append(
            f"| {row['kind']} {row['group']} | {row['items']} | {row['completed']} | "
            f"{_fmt(row['wait_s'], 1)} | {_fmt(row['median_done_s'], 1)} |"
        )
    return lines


def _failover(report: Obj) -> list[str]:
    f = report.get("failover")
    if not f:
        return []
    return [
        "",
        f"failover: killed {f['killed']} with {f['in_flight']} DataUploads in flight; new leader "
        f"{f['new_leader']}: first Welcome after {_fmt(f['first_welcome_after_s'], 1)} s, {f['agents_back']} "
        f"agents back after {_fmt(f['all_agents_back_after_s'], 1)} s, first assignment after "
        f"{_fmt(f['resumed_after_s'], 1)} s; finished work re-sent {f['finished_work_resent']}, "
        f"reassigned (epoch > 1) {f['reassigned_after_kill']}",
        f"failover: the Lease changed hands {_fmt(f.get('lease_taken_after_s'), 1)} s after the kill "
        f"(its duration's doing); from then, first Welcome after {_fmt(f.get('welcome_after_lease_s'), 1)} s "
        f"and first assignment after {_fmt(f.get('resumed_after_lease_s'), 1)} s (the new leader's own)",
    ]


def _targets(report: Obj) -> list[str]:
    lines = ["", "| target | measured | met? |", "|---|---:|---|"]
    for t in report["targets"]:
        lines.append(f"| {t['target']} | {t['measured']} | {'met' if t['met'] else '**missed**'} |")
    if report.get("fleet_errors"):
        lines.append(f"\nagent fleet errors ({len(report['fleet_errors'])}): {report['fleet_errors'][:3]}")
    return lines


def sweep_figures(report: Obj) -> dict[str, tuple[bool, float | None]]:
    """figure -> (per item?, value) for the growth table."""
    figures: dict[str, tuple[bool, float | None]] = {}
    up = report["phases"].get("uploads", {})
    if up.get("all_final"):
        figures["uploads: all final after s"] = (False, up["all_final"] - up["burst_start"])
    down = report["phases"].get("downloads", {})
    if down.get("all_final"):
        figures["downloads: all final after s"] = (False, down["all_final"] - down["burst_start"])
    for phase in ("uploads", "downloads"):
        cpu = [
            v.get(f"cpu_{phase}_s") for n, v in report["processes"].items() if n.startswith("coordinator-")
        ]
        known = [c for c in cpu if c is not None]
        if known:
            figures[f"coordinator CPU s ({phase})"] = (False, sum(known))
    rss = [v.get("peak_rss_mib", 0.0) for n, v in report["processes"].items() if n.startswith("coordinator-")]
    figures["coordinator peak RSS MiB"] = (False, max(rss, default=None))
    requests = report["requests"].get(f"uploads/{COORDINATOR_USER}")
    if requests and requests["items"]:
        figures["coordinator API requests per DataUpload"] = (True, requests["total"] / requests["items"])
        figures["coordinator API writes per DataUpload"] = (True, requests["writes"] / requests["items"])
    for row in report["steps"]:
        if row["owner"] == st.COORDINATOR and row["kind"] == UPLOAD_KIND and row["summary"]:
            figures[f"p99 {row['step']}"] = (True, row["summary"]["p99"])
    if report.get("grpc"):
        figures["gRPC messages per assignment"] = (True, report["grpc"]["messages_per_assignment"])
    return figures


def render_sweep(reports: Sequence[Obj]) -> str:
    """Each figure at each size, and its growth per 10x items: over the last step of the sweep and
    over the whole sweep; the verdict is the last step's (the largest sizes matter most)."""
    sizes = [int(r["options"]["uploads"]) for r in reports]
    figures = [sweep_figures(r) for r in reports]
    names = list(dict.fromkeys(name for f in figures for name in f))
    head = " | ".join(f"U={u}" for u in sizes)
    lines = [
        "",
        "## How each figure grows",
        "",
        f"| figure | {head} | per 10x items (last step) | per 10x items (whole sweep) | verdict |",
        "|---|" + "---:|" * len(sizes) + "---:|---:|---|",
    ]
    for name in names:
        values = [f.get(name, (False, None)) for f in figures]
        per_item = any(v[0] for v in values)
        shown = " | ".join(_fmt(v[1], 3) for v in values)
        known = [(size, v[1]) for size, v in zip(sizes, values, strict=True) if v[1] is not None]
        last = whole = None
        if len(known) >= 2:
            last = st.growth_exponent(known[-2][0], known[-2][1], known[-1][0], known[-1][1])
            whole = st.growth_exponent(known[0][0], known[0][1], known[-1][0], known[-1][1])
        lines.append(
            f"| {name} | {shown} | {_fmt(st.per_ten_x(last), 2)}x | {_fmt(st.per_ten_x(whole), 2)}x | "
            f"{st.growth_verdict(last, per_item)} |"
        )
    return "\n".join(lines)
