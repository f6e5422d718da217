"""Barge running for real on one machine: coordinator and agent processes, a simulated cluster.

Shared by the end-to-end tests and the demo (``make demo``). Against a local control plane (real etcd +
kube-apiserver) and ``SimCluster`` (which plays the kubelet, scheduler and CSI driver), it creates
what the Helm chart would (namespaces, the agents' ServiceAccount and pods, a BackupStorageLocation
with a local-directory repository), starts coordinator replicas (which generate the repository
password Secret, as the chart's do, unless a test supplies the password as an operator would) and
one agent process per simulated node, and plays Velero's part on request.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from barge.control.naming import PLURALS
from barge.errors import BargeError, Conflict, NotFound
from barge.kube.resources import (
    BACKUP_STORAGE_LOCATION,
    DAEMON_SET,
    DATA_DOWNLOAD,
    DATA_UPLOAD,
    NAMESPACE,
    PERSISTENT_VOLUME_CLAIM,
    POD,
    SECRET,
    SERVICE_ACCOUNT,
    STORAGE_CLASS,
    KubeObjects,
    Resource,
)
from barge.velero.bsl import repository_url
from barge.velero.password import DEFAULT_PASSWORD_SECRET as PASSWORD_SECRET
from devenv.controlplane import ControlPlaneEndpoints
from devenv.pki import make_serving_pki
from devenv.processes import ServerProcess, free_port
from devenv.service import Backend, LocalService
from devenv.simcluster import SimCluster
from devenv.waiting import wait_for, wait_for_deletion, wait_for_phase

Obj = dict[str, Any]
AGENT_LABELS = {"app.kubernetes.io/name": "barge-agent"}
AGENT_SERVICE_ACCOUNT = "barge-agent"
TOKEN_AUDIENCE = "barge"  # noqa: S105 - an audience name, not a secret
FINAL_PHASES = ("Completed", "Failed", "Canceled")


@dataclass
class Processes:
    coordinators: dict[str, ServerProcess] = field(default_factory=dict)
    coordinator_metrics: dict[str, int] = field(default_factory=dict)
    agents: dict[str, ServerProcess] = field(default_factory=dict)
    agent_metrics: dict[str, int] = field(default_factory=dict)


class LocalBarge:
    def __init__(
        self,
        endpoints: ControlPlaneEndpoints,
        sim: SimCluster,
        objects: KubeObjects,
        workdir: Path,
        *,
        nodes: tuple[str, ...] = ("node-a", "node-b"),
        coordinators: int = 1,
        velero_namespace: str = "velero",
        barge_namespace: str = "barge",
        coordinator_config: str = "",
        extra_agent_args: tuple[str, ...] = (),
        coordinator_kubeconfig: Path | None = None,
        agent_kubeconfig: Path | None = None,
        agent_command_prefix: tuple[str, ...] = (),
        bsl: Obj | None = None,
        password: str | None = None,
        extra_coordinator_args: tuple[str, ...] = (),
    ) -> None:
        """``*_kubeconfig``: the identities the processes use (default: the admin's), e.g. the
        chart's ServiceAccounts, to prove Barge needs no more than the chart grants. ``bsl``: the
        BackupStorageLocation to use (default: ``default`` on a local directory under ``workdir``).
        ``password``: the repository password Secret to create before Barge starts, as an operator
        restoring into a new cluster does (default: the coordinators generate one, as the chart
        has them do). ``extra_coordinator_args``: appended to every coordinator's command line (a
        repeated flag overrides the test defaults above it, e.g. ``--heartbeat-interval 5``)."""
        self.endpoints = endpoints
        self.sim = sim
        self.objects = objects
        self.workdir = workdir
        self.nodes = nodes
        self.coordinator_count = coordinators
        self.velero_namespace = velero_namespace
        self.barge_namespace = barge_namespace
        self.coordinator_config = coordinator_config
        self.extra_agent_args = extra_agent_args
        self.extra_coordinator_args = extra_coordinator_args
        self.coordinator_kubeconfig = coordinator_kubeconfig or endpoints.kubeconfig
        self.agent_kubeconfig = agent_kubeconfig or endpoints.kubeconfig
        self.agent_command_prefix = agent_command_prefix  # e.g. setpriv: run agents with fewer capabilities
        self.repository_root = workdir / "object-store"
        self.bsl = bsl or self._local_bsl()
        self.supplied_password = password
        self.password = ""  # the Secret's, known once Barge started
        self.processes = Processes()
        self.service: LocalService | None = None
        self._grpc_ports: dict[str, int] = {}

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> LocalBarge:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._install_cluster_objects()
        self.pki = make_serving_pki(self.workdir / "grpc-pki")
        backends = []
        for index in range(self.coordinator_count):
            name = f"coordinator-{index}"
            self._grpc_ports[name] = free_port()
            self.processes.coordinator_metrics[name] = free_port()
            backends.append(Backend(self._grpc_ports[name], self.processes.coordinator_metrics[name]))
        self.service = LocalService(backends).start()
        for name in self._grpc_ports:
            self.start_coordinator(name)
        for node in self.nodes:
            self.add_node(node)
        self.password = self.read_password()
        self.wait_agents_connected(len(self.nodes))
        return self

    def stop(self) -> None:
        """Stop the processes and remove the simulated nodes: a later environment on the same API
        server must not schedule exposer pods onto nodes whose agents are gone."""
        for process in [*self.processes.agents.values(), *self.processes.coordinators.values()]:
            process.stop(grace=10)
        if self.service is not None:
            self.service.stop()
        for node in self.nodes:
            with contextlib.suppress(BargeError):
                self.sim.remove_node(node)

    def __enter__(self) -> LocalBarge:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what the Helm chart would create -----------------------------------------------------------

    def _install_cluster_objects(self) -> None:
        for namespace in (self.velero_namespace, self.barge_namespace):
            self._ensure(NAMESPACE, {"metadata": {"name": namespace}})
        container = {"name": "agent", "image": "barge:dev"}
        self._ensure(
            DAEMON_SET,
            {
                "metadata": {"name": "barge-agent", "namespace": self.barge_namespace},
                "spec": {
                    "selector": {"matchLabels": AGENT_LABELS},
                    "template": {"metadata": {"labels": AGENT_LABELS}, "spec": {"containers": [container]}},
                },
            },
        )
        self._ensure(
            SERVICE_ACCOUNT, {"metadata": {"name": AGENT_SERVICE_ACCOUNT, "namespace": self.barge_namespace}}
        )
        self._ensure(
            STORAGE_CLASS,
            {
                "metadata": {"name": "standard"},
                "provisioner": "sim.csi.barge.io",
                "volumeBindingMode": "Immediate",
                "reclaimPolicy": "Delete",
            },
        )
        bsl = self.bsl = self._ensure(BACKUP_STORAGE_LOCATION, self.bsl)
        if self.supplied_password is not None:
            password = base64.b64encode(self.supplied_password.encode()).decode()
            self._ensure(
                SECRET,
                {
                    "metadata": {"name": PASSWORD_SECRET.name, "namespace": self.velero_namespace},
                    "data": {PASSWORD_SECRET.key: password},
                },
            )
        # An earlier environment on the same API server may have created both: what the agents will
        # use is what exists, so the tests must look there (and use that password).
        if bsl["spec"].get("provider") == "barge.io/local":
            self.repository_root = Path(bsl["spec"]["config"]["path"])

    def read_password(self) -> str:
        """The repository password as an operator saves it: from the Secret (generated by the
        coordinator at its start unless supplied)."""

        def secret() -> Obj | None:
            try:
                return self.objects.get(SECRET, self.velero_namespace, PASSWORD_SECRET.name)
            except NotFound:
                return None

        found = wait_for(secret, 30, what="the repository password Secret", interval=0.2)
        return base64.b64decode(found["data"][PASSWORD_SECRET.key]).decode()

    def _local_bsl(self) -> Obj:
        return {
            "metadata": {"name": "default", "namespace": self.velero_namespace},
            "spec": {
                "provider": "barge.io/local",
                "objectStorage": {"bucket": "backups", "prefix": "cluster"},
                "config": {"path": str(self.repository_root)},
                "default": True,
            },
        }

    def _ensure(self, resource: Resource, body: Obj) -> Obj:
        return self.objects.create(resource, body, exist_ok=True)

    # -- processes --------------------------------------------------------------------------------

    def start_coordinator(self, name: str) -> ServerProcess:
        config = self.workdir / "coordinator.yaml"
        config.write_text(self.coordinator_config or "{}\n")
        argv = [
            sys.executable,
            "-m",
            "coordinator.main",
            "--kubeconfig",
            str(self.coordinator_kubeconfig),
            "--watch-namespace",
            self.velero_namespace,
            "--grpc-address",
            "127.0.0.1",
            "--grpc-port",
            str(self._grpc_ports[name]),
            "--metrics-address",
            "127.0.0.1",
            "--metrics-port",
            str(self.processes.coordinator_metrics[name]),
            "--tls-cert-file",
            str(self.pki.serving.cert_path),
            "--tls-key-file",
            str(self.pki.serving.key_path),
            "--agent-service-account",
            f"{self.barge_namespace}/{AGENT_SERVICE_ACCOUNT}",
            "--token-audience",
            TOKEN_AUDIENCE,
            "--config",
            str(config),
            "--leader-election-namespace",
            self.barge_namespace,
            "--lease-duration",
            "6",
            "--heartbeat-interval",
            "1",
            "--agent-timeout",
            "5",
            "--log-format",
            "console",
            "--repository-password-secret",
            f"{PASSWORD_SECRET.name}/{PASSWORD_SECRET.key}",
            "--generate-repository-password",
            *self.extra_coordinator_args,
        ]
        process = ServerProcess(name, argv, self.workdir / f"{name}.log", env=self._env(name))
        process.start()
        self.processes.coordinators[name] = process
        return process

    def add_node(self, node: str) -> ServerProcess:
        """A simulated node with its agent pod (for the token binding) and the agent process."""
        self.sim.add_node(node)
        daemon_set = self.objects.get(DAEMON_SET, self.barge_namespace, "barge-agent")
        self.objects.create(POD, self._agent_pod(node, daemon_set["metadata"]["uid"]), exist_ok=True)
        return self.start_agent(node)

    def start_agent(self, node: str) -> ServerProcess:
        token = self.workdir / "agents" / node / "token"
        token.parent.mkdir(parents=True, exist_ok=True)
        token.write_text(self.agent_token(node))
        self.processes.agent_metrics.setdefault(node, free_port())
        assert self.service is not None
        argv = [
            *self.agent_command_prefix,
            sys.executable,
            "-m",
            "agent.main",
            "--node-name",
            node,
            "--coordinator",
            self.service.address,
            "--ca-file",
            str(self.pki.ca.cert_path),
            "--server-name",
            "localhost",
            "--token-file",
            str(token),
            "--kubeconfig",
            str(self.agent_kubeconfig),
            "--kubelet-root",
            str(self.sim.kubelet_root(node)),
            "--metrics-address",
            "127.0.0.1",
            "--metrics-port",
            str(self.processes.agent_metrics[node]),
            "--cache-dir",
            str(self.workdir / "agents" / node / "cache"),
            "--status-interval",
            "1",
            "--log-format",
            "console",
            "--repository-password-secret",
            f"{PASSWORD_SECRET.name}/{PASSWORD_SECRET.key}",
            *self.extra_agent_args,
        ]
        process = ServerProcess(
            f"agent-{node}", argv, self.workdir / f"agent-{node}.log", env=self._env(node)
        )
        process.start()
        self.processes.agents[node] = process
        return process

    def _agent_pod(self, node: str, daemon_set_uid: str) -> Obj:
        """Owned by the DaemonSet, so a drain leaves it alone (as ``kubectl drain`` does)."""
        owner = {
            "apiVersion": "apps/v1",
            "kind": "DaemonSet",
            "name": "barge-agent",
            "uid": daemon_set_uid,
            "controller": True,
        }
        return {
            "metadata": {
                "name": f"barge-agent-{node}",
                "namespace": self.barge_namespace,
                "labels": AGENT_LABELS,
                "ownerReferences": [owner],
            },
            "spec": {
                "nodeName": node,
                "serviceAccountName": AGENT_SERVICE_ACCOUNT,
                "containers": [{"name": "agent", "image": "barge:dev"}],
            },
        }

    def agent_token(self, node: str) -> str:
        """A projected-style token bound to the agent pod on ``node``, as the kubelet would mount it."""
        pod = self.objects.get(POD, self.barge_namespace, f"barge-agent-{node}")
        request = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "audiences": [TOKEN_AUDIENCE],
                "expirationSeconds": 3600,
                "boundObjectRef": {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": pod["metadata"]["name"],
                    "uid": pod["metadata"]["uid"],
                },
            },
        }
        response = self.objects.create_subresource(
            SERVICE_ACCOUNT, self.barge_namespace, AGENT_SERVICE_ACCOUNT, "token", request
        )
        return str(response["status"]["token"])

    def _env(self, name: str) -> dict[str, str]:
        import os  # noqa: PLC0415 - only here: the children inherit the test's environment

        return {
            **os.environ,
            "POD_NAME": name,
            "POD_NAMESPACE": self.barge_namespace,
            "PYTHONUNBUFFERED": "1",
        }

    # -- watching it work -------------------------------------------------------------------------

    def metric(self, port: int, name: str, labels: dict[str, str] | None = None) -> float | None:
        """One sample from a process's /metrics (None when absent)."""
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            conn.request("GET", "/metrics")
            text = conn.getresponse().read().decode()
        finally:
            conn.close()
        want = ",".join(f'{k}="{v}"' for k, v in sorted((labels or {}).items()))
        for line in text.splitlines():
            if line.startswith("#"):
                continue
            series, _, value = line.rpartition(" ")
            metric, _, rest = series.partition("{")
            if metric == name and ",".join(sorted(p for p in rest.rstrip("}").split(",") if p)) == want:
                return float(value)
        return None

    def leader(self) -> str | None:
        for name, port in self.processes.coordinator_metrics.items():
            try:
                if self.metric(port, "barge_coordinator_is_leader") == 1.0:
                    return name
            except OSError:
                continue
        return None

    def wait_agents_connected(self, count: int, timeout: float = 90.0) -> None:
        def connected() -> bool:
            leader = self.leader()
            if leader is None:
                return False
            value = self.metric(
                self.processes.coordinator_metrics[leader], "barge_coordinator_agents_connected"
            )
            return (value or 0) >= count

        wait_for(
            connected, timeout, what=f"{count} agents connected to the leading coordinator", interval=0.2
        )

    # -- playing Velero ------------------------------------------------------------------------------

    def create(self, kind: str, body: Obj) -> Obj:
        resource = DATA_UPLOAD if kind == "DataUpload" else DATA_DOWNLOAD
        return self.objects.create(resource, body)

    def get(self, kind: str, name: str) -> Obj:
        resource = DATA_UPLOAD if kind == "DataUpload" else DATA_DOWNLOAD
        return self.objects.get(resource, self.velero_namespace, name)

    def wait_phase(
        self, kind: str, name: str, phases: tuple[str, ...] = FINAL_PHASES, timeout: float = 120.0
    ) -> Obj:
        return dict(wait_for_phase(lambda: self.get(kind, name), phases, timeout, what=f"{kind} {name}"))

    def wait_gone(self, kind: str, name: str, timeout: float = 60.0) -> None:
        wait_for_deletion(lambda: self.get(kind, name), timeout, what=f"{kind} {name}")

    def wait_pvc_bound(self, namespace: str, name: str, timeout: float = 30.0) -> Obj:
        """The PVC once bound to a volume: where a DataDownload's restored PV ends up."""

        def bound() -> Obj | None:
            pvc = self.objects.get(PERSISTENT_VOLUME_CLAIM, namespace, name)
            done = (pvc.get("spec") or {}).get("volumeName") and (pvc.get("status") or {}).get(
                "phase"
            ) == "Bound"
            return pvc if done else None

        return wait_for(bound, timeout, what=f"PVC {namespace}/{name} to bind", interval=0.2)

    def patch_spec(self, kind: str, name: str, spec: Obj) -> Obj:
        resource = DATA_UPLOAD if kind == "DataUpload" else DATA_DOWNLOAD
        return self.objects.patch(resource, self.velero_namespace, name, {"spec": spec})

    def repository_dir(self, source_namespace: str) -> Path:
        """Where a local-directory BSL keeps ``source_namespace``'s repository, as the agents compute
        it (``barge.velero.bsl``); it must exist, so a test can never measure an empty folder."""
        url = repository_url(self.bsl, source_namespace)
        path = Path(unquote(urlsplit(url).path))
        if not (path / "config").is_file():
            raise NotFound(f"no repository for namespace {source_namespace} at {path}")
        return path

    def plural(self, kind: str) -> str:
        return PLURALS[kind]


__all__ = ["Conflict", "LocalBarge"]
