"""The real Velero (server + CLI, built from pinned Go modules) driving Barge on the local cluster.

Velero runs as a process outside the cluster, as envtest users run controllers: its own CRDs (from
``velero install --crds-only``), its namespace, an ``aws`` BackupStorageLocation on the local MinIO
with a credentials Secret, the AWS object-store plugin, and a VolumeSnapshotClass labelled for it.
Facts this relies on (Velero v1.18.3's source):

* the CSI PVC backup action runs only with ``--features=EnableCSI``;
* a restore reads the image of the ``velero`` Deployment in its namespace
  (``pod_volume_restore_action.go``), so one exists with 0 replicas;
* the server re-runs itself as ``velero run-plugins`` and finds plugins in ``--plugin-dir``;
* controller-runtime's metrics server inside it binds ``:8080`` and cannot be configured, so one
  Velero runs at a time on a machine (``start`` says so when the port is taken).
"""

from __future__ import annotations

import base64
import contextlib
import os
import socket
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from barge.errors import InvalidInput, NotFound, TemporaryError
from barge.kube.client import ApiClient, api_client
from barge.kube.resources import (
    BACKUP_STORAGE_LOCATION,
    DEPLOYMENT,
    NAMESPACE,
    SECRET,
    VOLUME_SNAPSHOT_CLASS,
    KubeObjects,
    Resource,
)
from devenv.controlplane import ControlPlaneEndpoints
from devenv.crds import SNAPSHOT_CRDS, apply_crd, install_crds
from devenv.processes import ServerProcess, free_port, http_ok, namespace_port
from devenv.s3server import S3Endpoint
from devenv.tools import tool_path
from devenv.waiting import wait_for_deletion, wait_for_phase

Obj = dict[str, Any]
CREDENTIALS_SECRET = "cloud-credentials"  # noqa: S105 - a Secret's name, as `velero install` names it
_CONTROLLER_RUNTIME_METRICS_PORT = 8080
_CLI_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class S3Location:
    """Where the BackupStorageLocation points: a bucket/prefix on an S3 server."""

    endpoint: S3Endpoint
    bucket: str
    prefix: str = "velero"
    ca_cert_pem: bytes | None = None  # objectStorage.caCert, for a TLS endpoint with a private CA
    insecure_skip_tls_verify: bool = False


def create_bucket(location: S3Location, workdir: Path) -> None:
    """Velero needs the bucket to exist; create it with an independent S3 client (idempotent)."""
    s3 = _s3_client(location, workdir)
    with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
        s3.create_bucket(Bucket=location.bucket)


def folders(location: S3Location, workdir: Path, under: str = "") -> list[str]:
    """The folders directly below ``<prefix>/<under>`` in the bucket (what Velero validates)."""
    s3 = _s3_client(location, workdir)
    prefix = "/".join(p for p in (location.prefix, under) if p) + "/"
    answer = s3.list_objects_v2(Bucket=location.bucket, Prefix=prefix, Delimiter="/")
    return sorted(p["Prefix"].removeprefix(prefix) for p in answer.get("CommonPrefixes", []))


def _s3_client(location: S3Location, workdir: Path) -> Any:
    import boto3  # type: ignore[import-untyped]  # noqa: PLC0415 - a dev dependency (local env only)

    endpoint = location.endpoint
    verify: bool | str = True
    if location.insecure_skip_tls_verify:
        verify = False
    elif location.ca_cert_pem:
        ca_file = workdir / "s3-ca.pem"
        ca_file.parent.mkdir(parents=True, exist_ok=True)
        ca_file.write_bytes(location.ca_cert_pem)
        verify = str(ca_file)
    return boto3.client(
        "s3",
        endpoint_url=endpoint.url,
        aws_access_key_id=endpoint.access_key,
        aws_secret_access_key=endpoint.secret_key,
        region_name=endpoint.region,
        verify=verify,
    )


def velero_crds() -> list[Obj]:
    """Velero's own CRDs (no cluster, no Velero server needed): what a user's cluster has, so a
    benchmark measures Barge against the CRDs it meets there (no status subresource)."""
    with tempfile.TemporaryDirectory(prefix="barge-velero-crds-") as home:
        argv = [str(tool_path("velero")), "install", "--crds-only", "--dry-run", "-o", "yaml"]
        env = {**os.environ, "HOME": home, "TMPDIR": home}
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=_CLI_TIMEOUT_S, env=env, check=False
        )
    if done.returncode != 0:
        raise InvalidInput(f"`velero install --crds-only` exited {done.returncode}: {done.stderr.strip()}")
    documents = [doc for doc in yaml.safe_load_all(done.stdout) if doc]
    items = [item for doc in documents for item in (doc.get("items") or [doc])]
    crds = [item for item in items if item.get("kind") == "CustomResourceDefinition"]
    if not crds:
        raise TemporaryError("`velero install --crds-only --dry-run -o yaml` printed no CRDs")
    return crds


def install_velero_crds(api: ApiClient) -> None:
    """What a user's cluster has for Barge to serve: Velero's own CRDs (``velero_crds``) and the
    CSI snapshot CRDs, which Velero does not install."""
    install_crds(api, SNAPSHOT_CRDS)
    for crd in velero_crds():
        apply_crd(api, crd)


class LocalVelero:
    """Velero's server as a process plus its CLI, against a local control plane."""

    def __init__(
        self,
        endpoints: ControlPlaneEndpoints,
        objects: KubeObjects,
        workdir: Path,
        location: S3Location,
        *,
        namespace: str = "velero",
        snapshot_class: str = "csi-snapclass",
        csi_driver: str = "sim.csi.barge.io",
        store_validation_frequency: str = "3s",
        address: str = "127.0.0.1",
        command_prefix: Sequence[str] = (),
    ) -> None:
        """``address`` and ``command_prefix``: where the server runs and serves its metrics, e.g.
        inside a real node's network namespace (``RealNode.namespace.enter()``), where its
        controller-runtime metrics port is the node's own, not the host's."""
        self.endpoints = endpoints
        self.objects = objects
        self.workdir = workdir
        self.location = location
        self.namespace = namespace
        self.snapshot_class = snapshot_class
        self.csi_driver = csi_driver
        self.store_validation_frequency = store_validation_frequency
        self.address = address
        self.command_prefix = list(command_prefix)
        self.process: ServerProcess | None = None
        self.metrics_port = 0

    # -- what `velero install` would create ---------------------------------------------------------

    def install(self) -> LocalVelero:
        """CRDs, namespace, credentials, the BSL, the `velero` Deployment, the snapshot class."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        with api_client(self.endpoints.kubeconfig) as api:
            install_velero_crds(api)
        self.objects.create(NAMESPACE, {"metadata": {"name": self.namespace}}, exist_ok=True)
        endpoint = self.location.endpoint
        credentials = (
            f"[default]\naws_access_key_id={endpoint.access_key}\n"
            f"aws_secret_access_key={endpoint.secret_key}\n"
        )
        # The credentials and location an earlier Velero left on this API server (an earlier test
        # module's) name that Velero's object store: its keys (SignatureDoesNotMatch here) and its
        # endpoint, with the location's last status, a stale "Available" that would pass start()'s
        # readiness wait. Both are made afresh.
        self._recreate(
            SECRET,
            {
                "metadata": {"name": CREDENTIALS_SECRET, "namespace": self.namespace},
                "stringData": {"cloud": credentials},
            },
        )
        self._recreate(BACKUP_STORAGE_LOCATION, self.bsl())
        self.objects.create(DEPLOYMENT, self._deployment(), exist_ok=True)
        self.objects.create(VOLUME_SNAPSHOT_CLASS, self._snapshot_class(), exist_ok=True)
        return self

    def _recreate(self, resource: Resource, body: Obj) -> None:
        name = body["metadata"]["name"]
        if self.objects.delete(resource, self.namespace, name):
            what = f"the earlier {resource.kind} deleted"
            wait_for_deletion(lambda: self.get(resource, name), 30, what=what)
        self.objects.create(resource, body)

    def bsl(self, name: str = "default", location: S3Location | None = None) -> Obj:
        """The BackupStorageLocation for ``location`` (default: this Velero's)."""
        location = location or self.location
        config = {
            "region": location.endpoint.region,
            "s3ForcePathStyle": "true",
            "s3Url": location.endpoint.url,
        }
        if location.insecure_skip_tls_verify:
            config["insecureSkipTLSVerify"] = "true"
        storage: Obj = {"bucket": location.bucket, "prefix": location.prefix}
        if location.ca_cert_pem:
            storage["caCert"] = base64.b64encode(location.ca_cert_pem).decode()
        return {
            "apiVersion": "velero.io/v1",
            "kind": "BackupStorageLocation",
            "metadata": {"name": name, "namespace": self.namespace},
            "spec": {
                "provider": "aws",
                "default": True,
                "objectStorage": storage,
                "credential": {"name": CREDENTIALS_SECRET, "key": "cloud"},
                "config": config,
            },
        }

    def _deployment(self) -> Obj:
        labels = {"component": "velero"}
        return {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "velero", "namespace": self.namespace, "labels": labels},
            "spec": {
                "replicas": 0,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {"containers": [{"name": "velero", "image": "velero/velero:v1.18.3"}]},
                },
            },
        }

    def _snapshot_class(self) -> Obj:
        return {
            "apiVersion": "snapshot.storage.k8s.io/v1",
            "kind": "VolumeSnapshotClass",
            "metadata": {
                "name": self.snapshot_class,
                "labels": {"velero.io/csi-volumesnapshot-class": "true"},
            },
            "driver": self.csi_driver,
            "deletionPolicy": "Delete",
        }

    # -- the server ----------------------------------------------------------------------------------

    def start(self) -> LocalVelero:
        if not self.command_prefix:
            _require_free_port(_CONTROLLER_RUNTIME_METRICS_PORT)
        plugins = self.workdir / "plugins"
        plugins.mkdir(parents=True, exist_ok=True)
        plugin = plugins / "velero-plugin-for-aws"
        with contextlib.suppress(FileNotFoundError):
            plugin.unlink()
        plugin.symlink_to(tool_path("velero-plugin-for-aws"))
        self.metrics_port = namespace_port() if self.command_prefix else free_port()
        argv = [
            *self.command_prefix,
            str(tool_path("velero")),
            "server",
            "--kubeconfig",
            str(self.endpoints.kubeconfig),
            "--namespace",
            self.namespace,
            "--features=EnableCSI",
            "--plugin-dir",
            str(plugins),
            "--metrics-address",
            f"{self.address}:{self.metrics_port}",
            "--profiler-address",
            "",
            "--store-validation-frequency",
            self.store_validation_frequency,
            "--item-operation-sync-frequency",
            "2s",
            "--backup-sync-period",
            "5s",
            "--garbage-collection-frequency",  # backups past their --ttl are deleted within 5 s
            "5s",
            "--log-level",
            "info",
        ]
        self.process = ServerProcess("velero", argv, self.workdir / "velero.log", env=self._env())
        self.process.start()
        self.process.wait_ready(
            lambda: http_ok(self.address, self.metrics_port, "/metrics"), 90, "serving metrics"
        )
        # Ready as a user sees it: the location validated. A backup created in Velero's first second
        # can stay ReadyToStart for good (its backup controller reads a stale cache and never
        # requeues), so nothing is created before this.
        self.process.wait_ready(
            lambda: self.bsl_status().get("phase") == "Available", 90, "reporting its location Available"
        )
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(grace=10)
            self.process = None

    def __enter__(self) -> LocalVelero:
        try:
            return self.install().start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _env(self) -> dict[str, str]:
        temp = self.workdir / "tmp"  # the AWS plugin writes BSL credentials under $TMPDIR
        temp.mkdir(parents=True, exist_ok=True)
        return {**os.environ, "TMPDIR": str(temp), "HOME": str(self.workdir)}

    # -- the CLI, as a user runs it ---------------------------------------------------------------------

    def cli(self, *args: str) -> str:
        """``velero ARGS`` against this cluster; its stdout, or an error with everything it said."""
        return self._run_cli(*args)

    def _run_cli(self, *args: str, kube: bool = True) -> str:
        argv = [str(tool_path("velero")), *args]
        if kube:
            argv += ["--kubeconfig", str(self.endpoints.kubeconfig), "--namespace", self.namespace]
        try:
            done = subprocess.run(
                argv, capture_output=True, text=True, timeout=_CLI_TIMEOUT_S, env=self._env(), check=False
            )
        except subprocess.TimeoutExpired as err:
            command = " ".join(args)
            raise TemporaryError(f"`velero {command}` did not finish in {_CLI_TIMEOUT_S:.0f}s") from err
        if done.returncode != 0:
            raise InvalidInput(
                f"`velero {' '.join(args)}` exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
            )
        return done.stdout

    # -- watching it ------------------------------------------------------------------------------------

    def get(self, resource: Resource, name: str) -> Obj:
        return self.objects.get(resource, self.namespace, name)

    def wait_phase(self, resource: Resource, name: str, phases: tuple[str, ...], timeout: float) -> Obj:
        def read() -> Obj | None:
            try:
                return self.get(resource, name)
            except NotFound:
                return None  # Velero may not have created it yet

        return dict(wait_for_phase(read, phases, timeout, what=f"{resource.kind} {name}", interval=0.05))

    def wait_gone(self, resource: Resource, name: str, timeout: float) -> None:
        wait_for_deletion(
            lambda: self.get(resource, name), timeout, what=f"{resource.kind} {name}", interval=0.05
        )

    def bsl_status(self, name: str = "default") -> Obj:
        """A BackupStorageLocation's status as Velero's validation last set it."""
        status: Obj = self.get(BACKUP_STORAGE_LOCATION, name).get("status") or {}
        return status

    def describe(self, kind: str, name: str) -> str:
        return self.cli(kind, "describe", name, "--details", "--colorized=false")


def _require_free_port(port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("", port))
        except OSError as err:
            raise TemporaryError(
                f"port {port} is in use: velero server's controller-runtime metrics server binds it "
                "unconditionally (one Velero at a time on this machine)"
            ) from err
