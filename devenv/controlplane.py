"""A real etcd + kube-apiserver on loopback, the way controller-runtime's envtest runs them.

Secure serving with a throw-away CA, client-certificate authentication for an admin identity,
ServiceAccount tokens (TokenRequest works, so tests can act as a restricted ServiceAccount), and
RBAC authorization. There is no kubelet, scheduler or controller-manager: tests play those parts
by writing objects through the API. The ServiceAccount admission plugin is disabled for the same
reason envtest disables it: without the token controller no ``default`` ServiceAccount exists.
"""

from __future__ import annotations

import shutil
import ssl
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from devenv.pki import ControlPlanePki, make_control_plane_pki
from devenv.processes import ServerProcess, StartedWhileEntered, free_port, http_ok, namespace_port
from devenv.tools import tool_path

SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
_START_TIMEOUT = 90.0


@dataclass(frozen=True)
class ControlPlaneEndpoints:
    """What a client needs to reach the running control plane."""

    url: str
    kubeconfig: Path
    pki: ControlPlanePki
    etcd_url: str
    audit_log: Path | None = None  # JSON lines, when the control plane was started with an audit policy


def write_kubeconfig(path: Path, url: str, ca: Path, user: dict[str, str], name: str) -> Path:
    """A kubeconfig with one cluster, one user (cert or token) and one current context."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "local", "cluster": {"server": url, "certificate-authority": str(ca)}}],
        "users": [{"name": name, "user": user}],
        "contexts": [{"name": name, "context": {"cluster": "local", "user": name}}],
        "current-context": name,
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


class LocalControlPlane(StartedWhileEntered[ControlPlaneEndpoints]):
    """Starts etcd and kube-apiserver in a temporary directory; stops both and removes it."""

    def __init__(
        self,
        workdir: Path | None = None,
        keep_workdir: bool = False,
        *,
        audit_policy: dict[str, Any] | None = None,
        address: str = "127.0.0.1",
        command_prefix: Sequence[str] = (),
        apiserver_flags: Mapping[str, str] | None = None,
    ) -> None:
        """``audit_policy``: an ``audit.k8s.io/v1`` Policy; when given, the API server writes its audit
        events as JSON lines to ``<workdir>/audit.log`` (``ControlPlaneEndpoints.audit_log``). None
        (the default): no auditing.

        A real node (devenv.realnode) runs the control plane in its network namespace: etcd and
        the apiserver listen on ``address`` (which the serving certificate names), both start through
        ``command_prefix`` (``nsenter ...``), and ``apiserver_flags`` (``--flag``: value) replace or
        add to the defaults (the Node authorizer, the kubelet's client certificate)."""
        self._own_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="barge-controlplane-"))
        self._keep = keep_workdir
        self._audit_policy = audit_policy
        self._address = address
        self._prefix = list(command_prefix)
        self._apiserver_flags = dict(apiserver_flags or {})
        self.audit_log: Path | None = None
        self.etcd: ServerProcess | None = None
        self.apiserver: ServerProcess | None = None
        self.endpoints: ControlPlaneEndpoints | None = None

    def _port(self) -> int:
        return namespace_port() if self._prefix else free_port()

    def start(self) -> ControlPlaneEndpoints:
        serving_ips = () if self._address == "127.0.0.1" else (self._address,)
        pki = make_control_plane_pki(self.workdir / "pki", serving_ips)
        etcd_url = self._start_etcd()
        url = self._start_apiserver(pki, etcd_url)
        kubeconfig = write_kubeconfig(
            self.workdir / "admin.kubeconfig",
            url,
            pki.ca.cert_path,
            {"client-certificate": str(pki.admin.cert_path), "client-key": str(pki.admin.key_path)},
            "barge-admin",
        )
        self.endpoints = ControlPlaneEndpoints(url, kubeconfig, pki, etcd_url, self.audit_log)
        return self.endpoints

    def _start_etcd(self) -> str:
        client_port, peer_port = self._port(), self._port()
        client_url = f"http://{self._address}:{client_port}"
        peer_url = f"http://{self._address}:{peer_port}"
        self.etcd = ServerProcess(
            "etcd",
            [
                *self._prefix,
                str(tool_path("etcd")),
                "--name=default",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={client_url}",
                f"--advertise-client-urls={client_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=default={peer_url}",
                "--unsafe-no-fsync=true",
                "--log-level=warn",
            ],
            self.workdir / "etcd.log",
        )
        self.etcd.start()
        self.etcd.wait_ready(
            lambda: http_ok(self._address, client_port, "/health"), _START_TIMEOUT, "healthy"
        )
        return client_url

    def _audit_flags(self) -> list[str]:
        if self._audit_policy is None:
            return []
        policy = self.workdir / "audit-policy.yaml"
        policy.write_text(yaml.safe_dump(self._audit_policy))
        self.audit_log = self.workdir / "audit.log"
        return [
            f"--audit-policy-file={policy}",
            f"--audit-log-path={self.audit_log}",
            "--audit-log-format=json",
            "--audit-log-maxsize=0",
        ]

    def _start_apiserver(self, pki: ControlPlanePki, etcd_url: str) -> str:
        port = self._port()
        flags = {
            "--etcd-servers": etcd_url,
            "--bind-address": self._address,
            "--advertise-address": self._address,
            "--secure-port": str(port),
            "--cert-dir": str(self.workdir / "apiserver-certs"),
            "--tls-cert-file": str(pki.serving.cert_path),
            "--tls-private-key-file": str(pki.serving.key_path),
            "--client-ca-file": str(pki.ca.cert_path),
            "--service-account-issuer": SERVICE_ACCOUNT_ISSUER,
            "--service-account-key-file": str(pki.service_account_pub),
            "--service-account-signing-key-file": str(pki.service_account_key),
            "--authorization-mode": "RBAC",
            "--service-cluster-ip-range": "10.0.0.0/24",
            "--allow-privileged": "true",
            "--disable-admission-plugins": "ServiceAccount",
            "--enable-priority-and-fairness": "false",
            "--v": "0",
            **self._apiserver_flags,
        }
        self.apiserver = ServerProcess(
            "kube-apiserver",
            [
                *self._prefix,
                str(tool_path("kube-apiserver")),
                *(f"{flag}={value}" for flag, value in flags.items()),
                *self._audit_flags(),
            ],
            self.workdir / "kube-apiserver.log",
        )
        self.apiserver.start()
        context = ssl.create_default_context(cafile=str(pki.ca.cert_path))
        context.load_cert_chain(str(pki.admin.cert_path), str(pki.admin.key_path))
        self.apiserver.wait_ready(
            lambda: http_ok(self._address, port, "/readyz", context), _START_TIMEOUT, "ready (/readyz)"
        )
        return f"https://{self._address}:{port}"

    def stop(self) -> None:
        for process in (self.apiserver, self.etcd):
            if process is not None:
                process.stop()
        if self._own_workdir and not self._keep:
            shutil.rmtree(self.workdir, ignore_errors=True)
