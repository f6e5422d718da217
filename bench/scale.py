"""The coordinator at cluster scale (``make bench-scale``): thousands of DataUploads over hundreds of nodes.

Setup (none of it measured): the real etcd + kube-apiserver (``LocalControlPlane``, with an audit
policy that logs the coordinator's and the agents' requests at Metadata level), Barge's CRDs, what
the chart would create (``LocalBarge``'s namespaces, agent DaemonSet/ServiceAccount/pods, BSL,
password Secret, gRPC TLS), N simulated nodes, and for every DataUpload its source PVC and ready
VolumeSnapshot (``SimCluster.snapshot_source``). Then, each in its own process:

* the simulated cluster (``bench.scale_sim``): SimCluster's controllers, fed by watches;
* the real coordinator (``python -m coordinator.main``, started by ``LocalBarge.start_coordinator``)
  under its own client-certificate identity ``barge-coordinator``, with its default timings;
* the agent fleet (``bench.scale_fleet``): one real ``AgentClient`` stream per node, fenced status
  writes as the agent makes them, a simulated transfer of ``--transfer-seconds``.

This process watches DataUploads, DataDownloads, exposer pods, PVs and PVCs and stamps every
change with its arrival time. Measured: U DataUploads created in one burst across ``--namespaces``
namespaces and five backups of unequal size (labels and owner as Velero's CSI plugin creates
them), to the end of their cleanup; then U DataDownloads (each with its Velero-style target PVC,
created before the burst) to the end of theirs.

Reported (a table, and JSON with ``--json``): time to complete; p50/p99 per step, each step
labelled with who controls it; the coordinator's API requests per item by verb (from the audit
log); CPU seconds and peak RSS of every process; gRPC messages per assignment; waiting time per
backup; the issue's targets, met or missed. ``--sweep`` repeats it for several sizes and reports
how each figure grows. ``--failover`` runs two coordinator replicas and kills the leader with the
uploads in flight. ``bench/scale_stats.py`` holds the arithmetic and its rules.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from barge.control.naming import FINALIZER, LABEL_MANAGED_BY, LABEL_OWNER_KIND, LABEL_OWNER_NAME, MANAGED_BY
from barge.kube.resources import (
    DAEMON_SET,
    DATA_DOWNLOAD,
    DATA_UPLOAD,
    LEASE,
    NAMESPACE,
    PERSISTENT_VOLUME,
    PERSISTENT_VOLUME_CLAIM,
    POD,
    KubeObjects,
)
from bench import scale_stats as st
from bench.scale_report import (
    AGENTS_USER,
    COORDINATOR_USER,
    failover_figures,
    grpc_figures,
    merge_fleet_records,
    parse_audit,
    read_json,
    read_jsonl,
    render,
    render_sweep,
    targets_of,
)
from bench.scale_watch import Watcher, bench_api_client
from devenv.controlplane import ControlPlaneEndpoints, LocalControlPlane, write_kubeconfig
from devenv.crds import install_crds
from devenv.localbarge import LocalBarge
from devenv.pki import CertificateAuthority, KeyPair, make_serving_pki
from devenv.processes import ServerProcess, free_port
from devenv.simcluster import SimCluster
from devenv.velero import data_download, data_upload, restore_target_pvc
from devenv.veleroserver import install_velero_crds

Obj = dict[str, Any]
ROOT = Path(__file__).resolve().parent.parent
VELERO_NAMESPACE = "velero"
AUDIT_POLICY: Obj = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [{"level": "Metadata", "users": [COORDINATOR_USER, AGENTS_USER]}, {"level": "None"}],
}
LEASE_NAME = "barge-coordinator"


def _coordinator_defaults() -> tuple[str, ...]:
    """The coordinator's own defaults (``coordinator.main``), not the tests' quick ones: its
    timings, and JSON logs (the test environment's console logs cost more to render than a
    production coordinator pays). The one deviation: every agent of the fleet reaches the
    coordinator from one address (through LocalService, as behind a NAT), so the per-address
    handshake limit is raised to the fleet's size."""
    from coordinator.main import build_parser  # noqa: PLC0415

    parser = build_parser()
    timings = ("heartbeat_interval", "agent_timeout", "lease_duration")
    return (
        *(arg for name in timings for arg in (f"--{name.replace('_', '-')}", str(parser.get_default(name)))),
        *("--log-format", "json"),
        *("--max-handshakes-per-peer", "256"),
    )


# Backups of unequal size, created biggest first: a fair coordinator finishes the small ones early.
BACKUP_SHARES = (
    ("backup-big", 0.5),
    ("backup-mid-1", 0.2),
    ("backup-mid-2", 0.2),
    ("backup-small-1", 0.05),
    ("backup-small-2", 0.05),
)
TERMINAL = ("Completed", "Failed", "Canceled")
CREATE_THREADS = 8
# What wakes the coordinator's reconciles (a counter by source).
WAKEUPS = "barge_coordinator_wakeups"
# The coordinator's own share of each step: waiting for a worker, then the reconcile itself.
COORDINATOR_HISTOGRAMS = (
    "barge_coordinator_queue_wait_seconds",
    "barge_coordinator_reconcile_duration_seconds",
)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- the workload ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlannedVolume:
    backup: str
    namespace: str
    pvc: str


def backup_of_namespaces(namespaces: int) -> list[str]:
    """Which backup each namespace belongs to: shares of BACKUP_SHARES, every backup at least one."""
    if namespaces < 1:
        raise ValueError("at least one namespace")
    shares = BACKUP_SHARES[:namespaces]
    counts = [max(1, round(share * namespaces)) for _, share in shares]
    while sum(counts) > namespaces:
        counts[counts.index(max(counts))] -= 1
    counts[0] += namespaces - sum(counts)
    return [name for (name, _), count in zip(shares, counts, strict=True) for _ in range(count)]


def plan_workload(uploads: int, namespaces: int) -> list[PlannedVolume]:
    """``uploads`` volumes spread round-robin over the namespaces, in creation order (by backup)."""
    owner = backup_of_namespaces(namespaces)
    volumes = [
        PlannedVolume(owner[i % namespaces], f"app-{i % namespaces:02d}", f"data-{i:05d}")
        for i in range(uploads)
    ]
    order = {name: rank for rank, (name, _) in enumerate(BACKUP_SHARES)}
    return sorted(volumes, key=lambda v: (order[v.backup], v.pvc))


def restore_name(backup: str) -> str:
    return backup.replace("backup-", "restore-", 1)


# -- identities -----------------------------------------------------------------------------------


class LoadedCertificateAuthority(CertificateAuthority):
    """The control plane's CA, read back from its files, to issue more client identities."""

    def __init__(self, pair: KeyPair) -> None:  # no super().__init__: that would make a new CA
        key = serialization.load_pem_private_key(pair.key_path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise TypeError("the local CA key is not an EC key")
        self.key = key
        self.cert = x509.load_pem_x509_certificate(pair.cert_path.read_bytes())


def client_kubeconfig(endpoints: ControlPlaneEndpoints, directory: Path, user: str) -> Path:
    """A kubeconfig for ``user`` (a client certificate in ``system:masters``): its own audit identity."""
    directory.mkdir(parents=True, exist_ok=True)
    pair = LoadedCertificateAuthority(endpoints.pki.ca).issue(
        directory, user, user, organization="system:masters"
    )
    return write_kubeconfig(
        directory / f"{user}.kubeconfig",
        endpoints.url,
        endpoints.pki.ca.cert_path,
        {"client-certificate": str(pair.cert_path), "client-key": str(pair.key_path)},
        user,
    )


# -- processes ------------------------------------------------------------------------------------


class BenchBarge(LocalBarge):
    """LocalBarge's cluster objects and coordinators, with the agents left to the fleet process."""

    def prepare(self, tokens: Path) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._install_cluster_objects()
        self.pki = make_serving_pki(self.workdir / "grpc-pki")
        tokens.mkdir(parents=True, exist_ok=True)
        daemon_set = self.objects.get(DAEMON_SET, self.barge_namespace, "barge-agent")

        def add(node: str) -> None:
            self.sim.add_node(node)
            self.objects.create(POD, self._agent_pod(node, daemon_set["metadata"]["uid"]), exist_ok=True)
            (tokens / node).write_text(self.agent_token(node))

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(add, self.nodes))

    def start_coordinators(self) -> None:
        for index in range(self.coordinator_count):
            name = f"coordinator-{index}"
            self._grpc_ports[name] = free_port()
            self.processes.coordinator_metrics[name] = free_port()
            self.start_coordinator(name)

    def backends(self) -> list[str]:
        return [f"{self._grpc_ports[n]}:{self.processes.coordinator_metrics[n]}" for n in self._grpc_ports]

    def stop(self) -> None:
        for process in self.processes.coordinators.values():
            process.stop(grace=10)


def child(name: str, module: str, args: Sequence[str], workdir: Path) -> ServerProcess:
    argv = [sys.executable, "-m", module, *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
    process = ServerProcess(name, argv, workdir / f"{name}.log", env=env)
    process.start()
    return process


def wait_file(process: ServerProcess, path: Path, timeout: float) -> None:
    process.wait_ready(path.exists, timeout, f"ready ({path.name})")


class ProcessMeter:
    """CPU seconds and peak RSS of named processes from /proc, remembering the last values read;
    and the coordinators' own latency histograms from their /metrics."""

    def __init__(self) -> None:
        self.pids: dict[str, int] = {}
        self.last: dict[str, tuple[float, float]] = {}
        self.metrics_ports: dict[str, int] = {}
        self._ticks = os.sysconf("SC_CLK_TCK")

    def histograms(self) -> dict[str, dict[str, dict[Any, float]]]:
        """coordinator -> metric -> buckets (``COORDINATOR_HISTOGRAMS``) or values by source
        (``WAKEUPS``); a coordinator that does not answer is left out."""
        scraped: dict[str, dict[str, dict[Any, float]]] = {}
        for name, port in self.metrics_ports.items():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
                    text = answer.read().decode()
            except OSError:
                continue
            scraped[name] = {h: st.histogram_buckets(text, h) for h in COORDINATOR_HISTOGRAMS}
            # A counter as one "bucket" per label value: the same difference of two scrapes.
            scraped[name][WAKEUPS] = st.counter_by_label(text, WAKEUPS, "source")
        return scraped

    def add(self, name: str, pid: int) -> None:
        self.pids[name] = pid

    def machine(self) -> tuple[float, float]:
        """(busy, all) CPU seconds of the whole machine so far."""
        return st.machine_cpu_seconds(Path("/proc/stat").read_text(), self._ticks)

    def read(self) -> dict[str, tuple[float, float]]:
        for name, pid in self.pids.items():
            try:
                cpu = st.cpu_seconds_from_stat(Path(f"/proc/{pid}/stat").read_text(), self._ticks)
                hwm = st.vm_hwm_mib(Path(f"/proc/{pid}/status").read_text())
            except (OSError, ValueError):
                continue  # gone (killed, or a zombie without memory): keep the last values read
            self.last[name] = (cpu, hwm)
        return dict(self.last)


# -- watching ------------------------------------------------------------------------------------


class Observer:
    """Stamps every observed change of the items, their exposer pods and restore targets."""

    def __init__(self, objects: KubeObjects) -> None:
        self._objects = objects
        self._lock = threading.Lock()
        self.items: dict[tuple[str, str], st.ItemTimes] = {}
        self.targets: dict[tuple[str, str], str] = {}  # (namespace, pvc) -> DataDownload name
        self.snapshot_ids: dict[str, str] = {}  # DataUpload name -> snapshotID
        self._pod_uid: dict[tuple[str, str], str] = {}
        self._watchers: list[Watcher] = []

    def start(self, timeout: float = 60.0) -> None:
        selector = f"{LABEL_MANAGED_BY}={MANAGED_BY}"
        self._watchers = [
            Watcher(self._objects, DATA_UPLOAD, self._on_cr, namespace=VELERO_NAMESPACE),
            Watcher(self._objects, DATA_DOWNLOAD, self._on_cr, namespace=VELERO_NAMESPACE),
            Watcher(self._objects, POD, self._on_pod, namespace=VELERO_NAMESPACE, label_selector=selector),
            Watcher(self._objects, PERSISTENT_VOLUME, self._on_pv),
            Watcher(self._objects, PERSISTENT_VOLUME_CLAIM, self._on_pvc),
        ]
        for watcher in self._watchers:
            watcher.start()
        for watcher in self._watchers:
            if not watcher.synced.wait(timeout):
                raise TimeoutError("the observer's watches did not sync")

    def stop(self) -> None:
        for watcher in self._watchers:
            watcher.stop()

    def item(self, kind: str, name: str) -> st.ItemTimes:
        with self._lock:
            return self._item(kind, name)

    def _item(self, kind: str, name: str) -> st.ItemTimes:
        found = self.items.get((kind, name))
        if found is None:
            found = self.items[(kind, name)] = st.ItemTimes(kind, name)
        return found

    def created(self, kind: str, name: str, group: str, at: float) -> None:
        with self._lock:
            item = self._item(kind, name)
            item.created, item.group = at, group

    def expect_target(self, namespace: str, pvc: str, download: str) -> None:
        with self._lock:
            self.targets[(namespace, pvc)] = download

    def _on_cr(self, event: str, obj: Obj, at: float) -> None:
        meta, status = obj["metadata"], obj.get("status") or {}
        kind = str(obj.get("kind") or "")
        phase = status.get("phase") or "New"
        with self._lock:
            item = self._item(kind, meta["name"])
            item.node = status.get("node") or item.node
            if phase == "Accepted" and item.accepted is None:
                item.accepted = at
            elif phase == "Prepared" and item.prepared is None:
                item.prepared = at
            elif phase in TERMINAL:
                if item.final is None:
                    item.final, item.final_phase = at, phase
                if phase == "Completed" and item.completed is None:
                    item.completed = at
                    if status.get("snapshotID"):
                        self.snapshot_ids[meta["name"]] = str(status["snapshotID"])
                gone = event == "DELETED" or FINALIZER not in (meta.get("finalizers") or [])
                if gone and item.cleaned is None:
                    item.cleaned = at

    def _on_pod(self, event: str, obj: Obj, at: float) -> None:
        meta, labels = obj["metadata"], obj["metadata"].get("labels") or {}
        kind, owner = labels.get(LABEL_OWNER_KIND), labels.get(LABEL_OWNER_NAME)
        if not kind or not owner or event == "DELETED":
            return
        with self._lock:
            item = self._item(kind, owner)
            if item.prepared is not None:
                return  # a later exposure's pod does not change how this one was prepared
            if self._pod_uid.get((kind, owner)) != meta["uid"]:
                self._pod_uid[(kind, owner)] = meta["uid"]
                item.pod_created, item.pod_running = at, None
            if (obj.get("status") or {}).get("phase") == "Running" and item.pod_running is None:
                item.pod_running = at

    def _on_pv(self, event: str, obj: Obj, at: float) -> None:
        ref = obj.get("spec", {}).get("claimRef") or {}
        with self._lock:
            download = self.targets.get((ref.get("namespace", ""), ref.get("name", "")))
            if download is not None:
                item = self._item(DATA_DOWNLOAD.kind, download)
                item.handed_over = item.handed_over or at

    def _on_pvc(self, event: str, obj: Obj, at: float) -> None:
        meta = obj["metadata"]
        bound = (obj.get("status") or {}).get("phase") == "Bound"
        with self._lock:
            download = self.targets.get((meta.get("namespace", ""), meta["name"]))
            if download is not None and bound:
                item = self._item(DATA_DOWNLOAD.kind, download)
                item.target_bound = item.target_bound or at

    def latest(self, kind: str, moment: str) -> float | None:
        with self._lock:
            values = [
                getattr(i, moment) for i in self.items.values() if i.kind == kind and i.created is not None
            ]
        return max((v for v in values if v is not None), default=None)

    def completed_snapshots(self) -> dict[str, str]:
        with self._lock:
            return dict(self.snapshot_ids)

    def snapshot(self) -> list[st.ItemTimes]:
        with self._lock:
            return [i for i in self.items.values() if i.created is not None]

    def phases(self, kind: str) -> Counter[str]:
        with self._lock:
            counts: Counter[str] = Counter()
            for (item_kind, _), item in self.items.items():
                if item_kind != kind or item.created is None:
                    continue
                if item.final is not None:
                    counts[item.final_phase] += 1
                    counts["cleaned"] += item.cleaned is not None
                elif item.prepared is not None:
                    counts["Prepared+"] += 1
                elif item.accepted is not None:
                    counts["Accepted"] += 1
                else:
                    counts["New"] += 1
            return counts


# -- one run --------------------------------------------------------------------------------------


@dataclass
class Options:
    nodes: int
    uploads: int
    transfer_s: float
    namespaces: int
    load_concurrency: int
    prepare_queue_length: int | None
    timeout_s: float
    failover: bool
    sim_mode: str
    operation_timeout: str
    crds: str
    keep: bool
    workdir: Path | None


@dataclass
class Phase:
    kind: str
    count: int
    burst_start: float = 0.0
    burst_end: float = 0.0
    all_final: float | None = None
    all_cleaned: float | None = None
    end: float = 0.0
    cpu_before: dict[str, tuple[float, float]] = field(default_factory=dict)
    cpu_after: dict[str, tuple[float, float]] = field(default_factory=dict)
    machine_before: tuple[float, float] = (0.0, 0.0)  # (busy, all) CPU seconds of the machine
    machine_after: tuple[float, float] = (0.0, 0.0)
    load_before: str = ""  # /proc/loadavg
    load_after: str = ""
    histograms_before: dict[str, dict[str, dict[Any, float]]] = field(default_factory=dict)
    histograms_after: dict[str, dict[str, dict[Any, float]]] = field(default_factory=dict)

    def start(self, meter: ProcessMeter) -> None:
        self.cpu_before, self.machine_before = meter.read(), meter.machine()
        self.histograms_before = meter.histograms()
        self.load_before = _loadavg()
        self.burst_start = time.time()

    def finish(self, meter: ProcessMeter) -> None:
        self.end = time.time()
        self.cpu_after, self.machine_after = meter.read(), meter.machine()
        self.histograms_after = meter.histograms()
        self.load_after = _loadavg()

    def coordinator_histogram(self, name: str) -> dict[Any, float]:
        """What the coordinators observed in this phase (a leader killed during it: not counted):
        a histogram's buckets, or a counter's values by label."""
        return st.bucket_sum(
            st.bucket_delta(after[name], self.histograms_before.get(coordinator, {}).get(name, {}))
            for coordinator, after in self.histograms_after.items()
        )


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return ""


class Run:
    def __init__(self, options: Options) -> None:
        self.o = options
        self.meter = ProcessMeter()
        self.phases: dict[str, Phase] = {}
        self.failover: Obj | None = None
        self.deadline = 0.0
        self.upload_volumes: dict[str, PlannedVolume] = {}
        self.children: dict[str, ServerProcess] = {}
        self.stopped_early = ""
        self.interrupted = False

    # -- setup ------------------------------------------------------------------------------------

    def execute(self, workdir: Path) -> Obj:
        o = self.o
        with contextlib.ExitStack() as stack:
            plane = LocalControlPlane(workdir / "control-plane", audit_policy=AUDIT_POLICY)
            endpoints = stack.enter_context(plane)
            assert plane.apiserver is not None and plane.etcd is not None
            self.meter.add("kube-apiserver", plane.apiserver.pid)
            self.meter.add("etcd", plane.etcd.pid)
            self.meter.add("bench (observer)", os.getpid())
            api = stack.enter_context(bench_api_client(endpoints.kubeconfig))
            if o.crds == "velero":
                install_velero_crds(api)
            else:
                install_crds(api)
            objects = KubeObjects(api)
            identities = workdir / "identities"
            coordinator_kubeconfig = client_kubeconfig(endpoints, identities, COORDINATOR_USER)
            agents_kubeconfig = client_kubeconfig(endpoints, identities, AGENTS_USER)
            sim_root = workdir / "sim"
            setup_sim = SimCluster(api, sim_root)  # never started: its methods set the cluster up
            nodes = tuple(f"node-{i:03d}" for i in range(o.nodes))
            config: Obj = {"loadConcurrency": {"globalConfig": o.load_concurrency}}
            if o.prepare_queue_length is not None:
                config["prepareQueueLength"] = o.prepare_queue_length
            barge = BenchBarge(
                endpoints,
                setup_sim,
                objects,
                workdir / "barge",
                nodes=nodes,
                coordinators=2 if o.failover else 1,
                velero_namespace=VELERO_NAMESPACE,
                coordinator_config=yaml.safe_dump(config),
                coordinator_kubeconfig=coordinator_kubeconfig,
                extra_coordinator_args=_coordinator_defaults(),
            )
            started = time.monotonic()
            tokens = workdir / "tokens"
            barge.prepare(tokens)
            log(f"setup: {o.nodes} nodes with agent pods and tokens in {time.monotonic() - started:.0f} s")
            plan = plan_workload(o.uploads, o.namespaces)
            sources = self._snapshot_sources(api, sim_root, objects, plan, workdir)
            log(f"setup: {len(plan)} source PVCs + ready snapshots in {time.monotonic() - started:.0f} s")

            sim = self._start_simulator(endpoints.kubeconfig, sim_root, workdir)
            stack.callback(sim.stop, 20)
            stack.callback(barge.stop)
            barge.start_coordinators()
            for name, process in barge.processes.coordinators.items():
                self.meter.add(name, process.pid)
            self.meter.metrics_ports = dict(barge.processes.coordinator_metrics)
            fleet = self._start_fleet(barge, tokens, agents_kubeconfig, sim_root, workdir)
            stack.callback(fleet.stop, 30)
            self.children = {"simulator": sim, "agent fleet": fleet, **barge.processes.coordinators}
            barge.wait_agents_connected(o.nodes, timeout=60 + o.nodes)
            log(f"setup: coordinator leading, {o.nodes} agents connected")
            observer = Observer(objects)
            observer.start()
            stack.callback(observer.stop)

            timed_out = self._measure(objects, observer, plan, sources, barge)
            coordinators = {n: p for n, p in self.meter.read().items() if n.startswith("coordinator-")}
            fleet.stop(grace=30)  # first: its summary is written on SIGTERM
        # Everything stopped (the API server too: the audit log is complete).
        return self._report(workdir, observer, coordinators, timed_out)

    def _measure(
        self,
        objects: KubeObjects,
        observer: Observer,
        plan: list[PlannedVolume],
        sources: dict[str, str],
        barge: BenchBarge,
    ) -> bool:
        """The upload burst, then the download burst; True when they did not finish."""
        self.deadline = time.monotonic() + self.o.timeout_s
        try:
            if self._uploads(objects, observer, plan, sources, barge):
                log("uploads did not finish: downloads not run")
                return True
            return self._downloads(objects, observer, plan)
        except KeyboardInterrupt as err:  # SIGINT/SIGTERM: still report what was measured
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # let the report be written; SIGKILL still works
            self.interrupted = True
            self.stopped_early = f"interrupted ({err or 'SIGINT'})"
            log(f"{self.stopped_early}: stopping, then reporting what was measured")
            for phase in self.phases.values():
                if not phase.end:
                    phase.finish(self.meter)
            return True

    def _start_simulator(self, kubeconfig: Path, sim_root: Path, workdir: Path) -> ServerProcess:
        args = ["--kubeconfig", str(kubeconfig), "--root", str(sim_root), "--mode", self.o.sim_mode]
        args += ["--ready-file", str(workdir / "sim.ready"), "--stats-file", str(workdir / "sim-stats.json")]
        return self._start_measured("simulator", "bench.scale_sim", args, workdir / "sim.ready")

    def _start_fleet(
        self, barge: BenchBarge, tokens: Path, kubeconfig: Path, sim_root: Path, workdir: Path
    ) -> ServerProcess:
        o = self.o
        args = ["--ca-file", str(barge.pki.ca.cert_path), "--tokens-dir", str(tokens)]
        args += ["--kubeconfig", str(kubeconfig), "--sim-root", str(sim_root)]
        args += ["--transfer-seconds", str(o.transfer_s), "--load-concurrency", str(o.load_concurrency)]
        args += ["--records", str(workdir / "fleet-records.jsonl")]
        args += [
            "--summary",
            str(workdir / "fleet-summary.json"),
            "--ready-file",
            str(workdir / "fleet.ready"),
        ]
        for backend in barge.backends():
            args += ["--backend", backend]
        return self._start_measured("agent fleet", "bench.scale_fleet", args, workdir / "fleet.ready")

    def _start_measured(self, label: str, module: str, args: list[str], ready: Path) -> ServerProcess:
        """A helper process of the benchmark, once it wrote ``ready``; its CPU and RSS are metered."""
        process = child(label.replace(" ", "-"), module, args, ready.parent)
        try:
            wait_file(process, ready, 120)
        except BaseException:
            process.stop()
            raise
        self.meter.add(label, process.pid)
        return process

    @staticmethod
    def _fleet_seconds(workdir: Path) -> float:
        """How long the agent streams were up: from the fleet's start to its summary."""
        try:
            return (workdir / "fleet-summary.json").stat().st_mtime - (
                workdir / "fleet.ready"
            ).stat().st_mtime
        except OSError:
            return 0.0

    def _snapshot_sources(
        self, api: Any, sim_root: Path, objects: KubeObjects, plan: list[PlannedVolume], workdir: Path
    ) -> dict[str, str]:
        """Per planned volume, the name of its ready source VolumeSnapshot (setup, not measured)."""
        source = workdir / "source-data"
        source.mkdir(parents=True, exist_ok=True)
        (source / "file.txt").write_text("bench-scale\n")
        for namespace in sorted({v.namespace for v in plan}):
            objects.create(NAMESPACE, {"metadata": {"name": namespace}}, exist_ok=True)
        local = threading.local()

        def make(volume: PlannedVolume) -> tuple[str, str]:
            if not hasattr(local, "sim"):
                local.sim = SimCluster(api, sim_root)  # one per thread: snapshot_source serialises
            name, _ = local.sim.snapshot_source(volume.namespace, volume.pvc, source)
            return volume.pvc, name

        with ThreadPoolExecutor(4) as pool:
            return dict(pool.map(make, plan))

    # -- the measured phases -----------------------------------------------------------------------

    def _burst(
        self, bodies: list[tuple[Obj, str]], kind: str, observer: Observer, objects: KubeObjects
    ) -> list[str]:
        """Create every body from a few threads (in order, roughly); returns the names given."""
        resource = DATA_UPLOAD if kind == DATA_UPLOAD.kind else DATA_DOWNLOAD

        def create(entry: tuple[Obj, str]) -> str:
            body, group = entry
            at = time.time()
            created = objects.create(resource, body)
            name = str(created["metadata"]["name"])
            observer.created(kind, name, group, at)
            return name

        with ThreadPoolExecutor(CREATE_THREADS) as pool:
            return list(pool.map(create, bodies))

    def _wait_phase(self, phase: Phase, observer: Observer, on_tick: Callable[[Counter[str]], None]) -> bool:
        """Until every item is final and cleaned up; False when the deadline came first."""
        last_log = 0.0
        cleanup_deadline: float | None = None
        while True:
            counts = observer.phases(phase.kind)
            final = sum(counts[p] for p in TERMINAL)
            now = time.monotonic()
            if final >= phase.count and phase.all_final is None:
                phase.all_final = observer.latest(phase.kind, "final")
                cleanup_deadline = now + 300
            if counts["cleaned"] >= phase.count:
                phase.all_cleaned = observer.latest(phase.kind, "cleaned")
                return True
            if now - last_log >= 10:
                last_log = now
                cpu = self.meter.read()
                coordinator = sum(
                    v[0] - phase.cpu_before.get(n, (0.0, 0.0))[0]
                    for n, v in cpu.items()
                    if n.startswith("coordinator-")
                )
                shown = " ".join(f"{k} {v}" for k, v in sorted(counts.items()))
                log(
                    f"{phase.kind}s after {time.time() - phase.burst_start:.0f} s: {shown}; "
                    f"coordinator CPU {coordinator:.0f} s"
                )
            on_tick(counts)
            if now >= self.deadline or (cleanup_deadline is not None and now >= cleanup_deadline):
                self.stopped_early = f"deadline reached in the {phase.kind} phase"
                return False
            if dead := self._dead_child():
                self.stopped_early = dead
                log(dead)
                return False
            time.sleep(0.25)

    def _dead_child(self) -> str:
        """Why waiting is pointless: a child that exited (not the leader a failover killed), or ""."""
        killed = (self.failover or {}).get("killed")
        for name, process in self.children.items():
            code = process.exit_code()
            if code is not None and name != killed:
                return f"{name} exited with code {code}; its log ends:\n{process.log_tail(15)}"
        return ""

    def _uploads(
        self,
        objects: KubeObjects,
        observer: Observer,
        plan: list[PlannedVolume],
        sources: dict[str, str],
        barge: BenchBarge,
    ) -> bool:
        bodies = [
            (
                data_upload(
                    backup=v.backup,
                    pvc=v.pvc,
                    source_namespace=v.namespace,
                    volume_snapshot=sources[v.pvc],
                    namespace=VELERO_NAMESPACE,
                    operation_timeout=self.o.operation_timeout,
                ),
                v.backup,
            )
            for v in plan
        ]
        # One backup uid per backup, as Velero sets (data_upload() makes one per call).
        uids: dict[str, Obj] = {}
        for body, backup in bodies:
            first = uids.setdefault(backup, body)
            body["metadata"]["labels"]["velero.io/backup-uid"] = first["metadata"]["labels"][
                "velero.io/backup-uid"
            ]
            body["metadata"]["ownerReferences"] = first["metadata"]["ownerReferences"]
        phase = self.phases["uploads"] = Phase(DATA_UPLOAD.kind, len(bodies))
        phase.start(self.meter)
        log(f"burst: creating {len(bodies)} DataUploads")
        names = self._burst(bodies, DATA_UPLOAD.kind, observer, objects)
        self.upload_volumes = dict(zip(names, plan, strict=True))
        phase.burst_end = time.time()
        log(f"burst: {len(bodies)} DataUploads created in {phase.burst_end - phase.burst_start:.1f} s")
        on_tick = (
            self._failover_trigger(barge, objects, len(bodies)) if self.o.failover else (lambda counts: None)
        )
        done = self._wait_phase(phase, observer, on_tick)
        phase.finish(self.meter)
        return not done

    def _failover_trigger(
        self, barge: BenchBarge, objects: KubeObjects, count: int
    ) -> Callable[[Counter[str]], None]:
        def tick(counts: Counter[str]) -> None:
            if self.failover is not None or counts["Completed"] < count // 4:
                return
            leader = barge.leader()
            if leader is None:
                return
            self.meter.read()  # the leader's last CPU and RSS, before it goes
            process = barge.processes.coordinators[leader]
            in_flight = count - sum(counts[p] for p in TERMINAL)
            os.killpg(process.pid, signal.SIGKILL)
            self.failover = {
                "killed": leader,
                "at": time.time(),
                "in_flight": in_flight,
                "completed_before": counts["Completed"],
            }
            log(f"failover: killed the leader {leader} with {in_flight} DataUploads in flight")
            lease = threading.Thread(
                target=self._note_lease_taken, args=(barge, objects, leader), daemon=True
            )
            lease.start()

        return tick

    def _note_lease_taken(self, barge: BenchBarge, objects: KubeObjects, killed: str) -> None:
        """When another replica holds the Lease: what of the outage is the Lease's expiry (set by
        its duration), apart from what the new leader itself takes to resume."""
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and self.failover is not None:
            with contextlib.suppress(Exception):
                spec = objects.get(LEASE, barge.barge_namespace, LEASE_NAME).get("spec") or {}
                if spec.get("holderIdentity") not in (None, "", killed):
                    self.failover["lease_taken_at"] = time.time()
                    return
            time.sleep(0.1)

    def _downloads(self, objects: KubeObjects, observer: Observer, plan: list[PlannedVolume]) -> bool:
        order = {v.pvc: rank for rank, v in enumerate(plan)}
        wanted = [
            (self.upload_volumes[name], snapshot_id)
            for name, snapshot_id in observer.completed_snapshots().items()
            if name in self.upload_volumes
        ]
        wanted.sort(key=lambda w: order[w[0].pvc])
        started = time.monotonic()

        def target(entry: tuple[PlannedVolume, str]) -> None:
            volume, _ = entry
            body = restore_target_pvc(
                restore=restore_name(volume.backup),
                name=f"{volume.pvc}-restored",
                namespace=volume.namespace,
                size="1Gi",
            )
            objects.create(PERSISTENT_VOLUME_CLAIM, body, exist_ok=True)

        with ThreadPoolExecutor(CREATE_THREADS) as pool:
            list(pool.map(target, wanted))
        log(f"setup: {len(wanted)} restore target PVCs in {time.monotonic() - started:.0f} s")
        bodies = []
        for volume, snapshot_id in wanted:
            restore = restore_name(volume.backup)
            body = data_download(
                restore=restore,
                snapshot_id=snapshot_id,
                target_pvc=f"{volume.pvc}-restored",
                target_namespace=volume.namespace,
                source_namespace=volume.namespace,
                namespace=VELERO_NAMESPACE,
                operation_timeout=self.o.operation_timeout,
            )
            bodies.append((body, restore))
        phase = self.phases["downloads"] = Phase(DATA_DOWNLOAD.kind, len(bodies))
        phase.start(self.meter)
        log(f"burst: creating {len(bodies)} DataDownloads")

        def create(entry: tuple[Obj, str]) -> None:
            body, group = entry
            at = time.time()
            spec = body["spec"]["targetVolume"]
            created = objects.create(DATA_DOWNLOAD, body)
            name = str(created["metadata"]["name"])
            observer.expect_target(spec["namespace"], spec["pvc"], name)
            observer.created(DATA_DOWNLOAD.kind, name, group, at)

        with ThreadPoolExecutor(CREATE_THREADS) as pool:
            list(pool.map(create, bodies))
        phase.burst_end = time.time()
        log(f"burst: {len(bodies)} DataDownloads created in {phase.burst_end - phase.burst_start:.1f} s")
        done = self._wait_phase(phase, observer, lambda counts: None)
        phase.finish(self.meter)
        return not done

    # -- the report --------------------------------------------------------------------------------

    def _report(
        self, workdir: Path, observer: Observer, coordinators: dict[str, tuple[float, float]], timed_out: bool
    ) -> Obj:
        o = self.o
        items = observer.snapshot()
        fleet_summary = read_json(workdir / "fleet-summary.json")
        records = read_jsonl(workdir / "fleet-records.jsonl")
        merge_fleet_records(items, records)
        splits = {}
        prepare_limit = prepare_queue_limit(o)
        for key, phase in self.phases.items():
            members = [i for i in items if i.kind == phase.kind]
            split = st.apply_queue_split(members, o.load_concurrency, phase.burst_start)
            accept = st.apply_prepare_queue_split(members, prepare_limit, phase.burst_start)
            splits[key] = {
                "violations": split.violations,
                "max_per_node": max(split.peak.values(), default=0),
                "prepare_queue_limit": prepare_limit,
                "prepare_queue_peak": max(accept.peak.values(), default=0),
                "prepare_queue_violations": accept.violations,
            }
        audit = parse_audit(workdir / "control-plane" / "audit.log")
        requests = {}
        for key, phase in self.phases.items():
            for user in (COORDINATOR_USER, AGENTS_USER):
                counts = st.count_requests(audit, user, phase.burst_start, phase.end)
                requests[f"{key}/{user}"] = {
                    "items": phase.count,
                    "by_verb": dict(counts.by_verb),
                    "by_resource_verb": {
                        f"{r or '(discovery)'} {v}": n for (r, v), n in counts.by_resource_verb.most_common()
                    },
                    "writes": counts.writes,
                    "total": counts.total,
                    "not_found": counts.not_found,
                    "conflicts": counts.conflicts,
                    "lease": dict(counts.lease),
                    "seconds": phase.end - phase.burst_start,
                }
        processes: dict[str, dict[str, float]] = {}
        for key, phase in self.phases.items():
            for name, (cpu, hwm) in phase.cpu_after.items():
                before = phase.cpu_before.get(name, (0.0, 0.0))[0]
                processes.setdefault(name, {})[f"cpu_{key}_s"] = cpu - before
                processes[name]["peak_rss_mib"] = hwm
        for name, (_, hwm) in coordinators.items():
            processes.setdefault(name, {})["peak_rss_mib"] = hwm
        machine = {}
        for key, phase in self.phases.items():
            busy = phase.machine_after[0] - phase.machine_before[0]
            ours = sum(v.get(f"cpu_{key}_s", 0.0) for v in processes.values())
            machine[key] = {
                "cpus": os.cpu_count(),
                "seconds": phase.end - phase.burst_start,
                "busy_cpu_s": busy,
                "benchmark_cpu_s": ours,
                "other_cpu_s": max(0.0, busy - ours),
                "loadavg_before": phase.load_before,
                "loadavg_after": phase.load_after,
            }
        report: Obj = {
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(o).items()},
            "coordinator_source": coordinator_source(),
            "timed_out": timed_out,
            "stopped_early": self.stopped_early,
            "interrupted": self.interrupted,
            "phases": {
                k: asdict(v)
                | {"cpu_before": None, "cpu_after": None, "histograms_before": None, "histograms_after": None}
                for k, v in self.phases.items()
            },
            "coordinator_own": {
                k: {
                    **{
                        name: st.histogram_summary(v.coordinator_histogram(name))
                        for name in COORDINATOR_HISTOGRAMS
                    },
                    "wakeups_by_source": v.coordinator_histogram(WAKEUPS),
                }
                for k, v in self.phases.items()
            },
            "outcomes": {k: dict(observer.phases(v.kind)) for k, v in self.phases.items()},
            "steps": [
                {
                    "step": r.step,
                    "owner": r.owner,
                    "kind": r.kind,
                    "note": r.note,
                    "summary": None if r.summary is None else asdict(r.summary),
                }
                for r in st.step_table(items)
            ],
            "queue": splits,
            "requests": requests,
            "processes": processes,
            "machine": machine,
            "grpc": grpc_figures(fleet_summary, records, self._fleet_seconds(workdir)),
            "fairness": [asdict(g) for g in st.group_waits(items)],
            "simulator": read_json(workdir / "sim-stats.json"),
            "fleet_errors": (fleet_summary or {}).get("errors", []),
            "audit_events": len(audit),
        }
        if self.failover is not None:
            report["failover"] = failover_figures(self.failover, fleet_summary, records, items)
        report["targets"] = [asdict(t) for t in targets_of(report)]
        report["items"] = [i.to_json() for i in items]
        return report


def prepare_queue_limit(o: Options) -> int | None:
    """How many items the coordinator lets hold an exposure without moving data in this setup: its
    own ``coordinator.scheduler.prepare_queue_limit`` (all nodes usable), so the benchmark follows
    the coordinator's default; None (no limit, no queue) if that function is gone."""
    try:
        from coordinator.config import CoordinatorConfig  # noqa: PLC0415 - optional: may change
        from coordinator.scheduler import NodeState  # noqa: PLC0415
        from coordinator.scheduler import prepare_queue_limit as limit_of  # noqa: PLC0415
    except ImportError:
        return o.prepare_queue_length
    config: Obj = {"loadConcurrency": {"globalConfig": o.load_concurrency}}
    if o.prepare_queue_length is not None:
        config["prepareQueueLength"] = o.prepare_queue_length
    nodes = tuple(NodeState(f"node-{i:03d}", agent_connected=True) for i in range(o.nodes))
    try:
        return int(limit_of(nodes, CoordinatorConfig.from_dict(config)))
    except (TypeError, ValueError):
        return o.prepare_queue_length


def coordinator_source() -> str:
    """Which coordinator was measured: the commit, and a fingerprint of the code it runs (the
    coordinator and the adapters it uses) when that differs from the commit, so runs compare."""
    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        head = "unknown commit"
    digest = hashlib.sha256()
    for path in sorted(
        p for d in ("coordinator", "barge/control", "barge/kube", "barge/rpc") for p in ROOT.glob(f"{d}/*.py")
    ):
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    try:
        dirty = subprocess.run(
            [
                "git",
                "-C",
                str(ROOT),
                "status",
                "--porcelain",
                "--",
                "coordinator",
                "barge/kube",
                "barge/rpc",
                "barge/control",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        dirty = "?"
    changes = " + uncommitted changes" if dirty else ""
    return f"{head}{changes} (code {digest.hexdigest()[:10]})"


# -- command line ---------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench.scale", description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, default=200)
    p.add_argument("--uploads", type=int, default=2000, help="DataUploads, and as many DataDownloads")
    p.add_argument("--transfer-seconds", type=float, default=1.0, help="simulated data movement per item")
    p.add_argument("--namespaces", type=int, default=20)
    p.add_argument("--load-concurrency", type=int, default=1, help="coordinator loadConcurrency.globalConfig")
    p.add_argument("--prepare-queue-length", type=int, default=None, help="coordinator prepareQueueLength")
    p.add_argument("--operation-timeout", default="10m0s", help="spec.operationTimeout of each item")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds for the measured phases of one run")
    p.add_argument(
        "--sweep",
        nargs="?",
        const="20,200,2000",
        default=None,
        help="run for each of these upload counts (default 20,200,2000) and report growth",
    )
    p.add_argument("--failover", action="store_true", help="two replicas; kill the leader mid-burst")
    p.add_argument("--sim-mode", choices=("watch", "poll"), default="watch")
    p.add_argument(
        "--crds",
        choices=("velero", "barge"),
        default="velero",
        help="DataUpload/DataDownload CRDs: Velero's own (what users have; status through the main "
        "resource) or Barge's test copies (with a status subresource)",
    )
    p.add_argument("--json", type=Path, help="write the full report (every item's timeline too) here")
    p.add_argument("--workdir", type=Path, help="keep everything here (default: a temporary directory)")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, audit log)")
    p.add_argument(
        "--from-json",
        type=Path,
        nargs="+",
        help="run nothing: print the tables of reports saved with --json (several: how figures grow)",
    )
    return p


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run_one(options: Options) -> Obj:
    workdir = options.workdir or Path(tempfile.mkdtemp(prefix="barge-bench-scale-"))
    workdir.mkdir(parents=True, exist_ok=True)
    log(f"workdir {workdir}")
    try:
        return Run(options).execute(workdir)
    finally:
        if options.workdir is None and not options.keep:
            shutil.rmtree(workdir, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.from_json:
        saved: list[Obj] = []
        for path in args.from_json:
            data = json.loads(path.read_text())
            saved += data.get("runs", [data])
        saved.sort(key=lambda r: int(r["options"]["uploads"]))
        for report in saved:
            print(render(report))
        if len(saved) > 1:
            print(render_sweep(saved))
        return 0
    signal.signal(signal.SIGTERM, _terminate)
    sizes = [int(x) for x in args.sweep.split(",")] if args.sweep else [args.uploads]
    reports = []
    started = time.monotonic()
    for uploads in sizes:
        workdir = args.workdir / f"uploads-{uploads}" if args.workdir and len(sizes) > 1 else args.workdir
        options = Options(
            nodes=args.nodes,
            uploads=uploads,
            transfer_s=args.transfer_seconds,
            namespaces=args.namespaces,
            load_concurrency=args.load_concurrency,
            prepare_queue_length=args.prepare_queue_length,
            timeout_s=args.timeout,
            failover=args.failover,
            sim_mode=args.sim_mode,
            operation_timeout=args.operation_timeout,
            crds=args.crds,
            keep=args.keep,
            workdir=workdir,
        )
        run_started = time.monotonic()
        report = run_one(options)
        report["wall_s"] = time.monotonic() - run_started
        reports.append(report)
        print(render(report), flush=True)
        print(f"\n(run wall time {report['wall_s']:.0f} s)", flush=True)
        if args.json:  # after every run: a later one may not finish
            payload: Obj = reports[0] if len(sizes) == 1 else {"runs": reports}
            args.json.write_text(json.dumps(payload, indent=1))
        if report.get("interrupted"):
            break
    if len(reports) > 1:
        print(render_sweep(reports), flush=True)
    log(f"done in {time.monotonic() - started:.0f} s")
    return 1 if any(r["timed_out"] for r in reports) else 0


if __name__ == "__main__":
    sys.exit(main())
