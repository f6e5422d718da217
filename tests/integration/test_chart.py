"""charts/barge installed into the real kube-apiserver: every object accepted, RBAC as intended.

There is no kubelet, so nothing runs and `helm install` does not --wait; what is checked is that
the API server admits every rendered object and that the chart's ServiceAccounts may do exactly
what Barge needs (SubjectAccessReviews against the installed Roles and bindings).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml
from kubernetes import client, dynamic
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic.exceptions import NotFoundError

from devenv.controlplane import ControlPlaneEndpoints
from devenv.helm import CHART_DIR, Helm

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Release:
    name: str
    namespace: str
    velero_namespace: str
    app_namespace: str

    @property
    def coordinator(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.name}-coordinator"

    @property
    def agent(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.name}-agent"


@dataclass(frozen=True)
class Access:
    """One request a ServiceAccount might make; namespace "" means cluster scope."""

    verb: str
    resource: str
    namespace: str = ""
    group: str = ""
    subresource: str = ""
    name: str = ""


@pytest.fixture(scope="module")
def helm(control_plane: ControlPlaneEndpoints) -> Helm:
    return Helm.installed(control_plane.kubeconfig)


def create_namespace(kube: client.ApiClient, name: str) -> None:
    client.CoreV1Api(kube).create_namespace({"metadata": {"name": name}})


@pytest.fixture(scope="module")
def release(helm: Helm, kube: client.ApiClient) -> Iterator[Release]:
    suffix = uuid.uuid4().hex[:8]
    installed = Release(f"barge-{suffix}", f"barge-{suffix}", f"velero-{suffix}", f"app-{suffix}")
    create_namespace(kube, installed.velero_namespace)
    create_namespace(kube, installed.app_namespace)
    helm.run(
        "install",
        installed.name,
        str(CHART_DIR),
        "--namespace",
        installed.namespace,
        "--create-namespace",
        values={"veleroNamespace": installed.velero_namespace},
    )
    yield installed
    helm.run("uninstall", installed.name, "--namespace", installed.namespace, check=False)


def manifest_objects(helm: Helm, release: Release) -> list[dict[str, Any]]:
    text = helm.run("get", "manifest", release.name, "--namespace", release.namespace).stdout
    return [doc for doc in yaml.safe_load_all(text) if doc]


def fetch(kube: client.ApiClient, obj: dict[str, Any]) -> Any:
    """The object as stored by the API server (NotFoundError if absent)."""
    api = dynamic.DynamicClient(kube).resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
    namespace = obj["metadata"].get("namespace") if api.namespaced else None
    return api.get(name=obj["metadata"]["name"], namespace=namespace)


def allowed(kube: client.ApiClient, user: str, namespace_of_user: str, access: Access) -> bool:
    attributes = {
        "verb": access.verb,
        "resource": access.resource,
        "group": access.group,
        "subresource": access.subresource,
        "name": access.name,
        "namespace": access.namespace,
    }
    review = client.AuthorizationV1Api(kube).create_subject_access_review(
        {
            "spec": {
                "user": user,
                # The groups every ServiceAccount token carries: no grant may come through them either.
                "groups": [
                    "system:serviceaccounts",
                    f"system:serviceaccounts:{namespace_of_user}",
                    "system:authenticated",
                ],
                "resourceAttributes": {key: value for key, value in attributes.items() if value},
            }
        }
    )
    return bool(review.status.allowed)


def coordinator_needs(r: Release) -> list[Access]:
    velero = r.velero_namespace
    needs = [
        Access(v, p, velero, "velero.io")
        for p in ("datauploads", "datadownloads")
        for v in ("get", "list", "watch", "update", "patch")
    ]
    needs += [
        Access(v, p, velero, "velero.io", "status")
        for p in ("datauploads", "datadownloads")
        for v in ("update", "patch")
    ]
    needs += [
        Access(v, p, velero)
        for p in ("pods", "persistentvolumeclaims")
        for v in ("get", "list", "watch", "create", "delete", "patch")
    ]
    needs += [Access(v, "persistentvolumes") for v in ("get", "list", "watch", "update", "patch")]
    # Read the source snapshots, and delete them once released to the clone (or never cloned).
    needs += [
        Access(v, "volumesnapshots", r.app_namespace, "snapshot.storage.k8s.io")
        for v in ("get", "list", "watch", "delete")
    ]
    needs += [Access(v, "volumesnapshots", velero, "snapshot.storage.k8s.io") for v in ("create", "delete")]
    needs += [
        Access(v, "volumesnapshotcontents", "", "snapshot.storage.k8s.io")
        for v in ("get", "list", "watch", "create", "delete", "patch")
    ]
    needs += [Access(v, "nodes") for v in ("get", "list", "watch")]
    needs += [Access(v, "backupstoragelocations", velero, "velero.io") for v in ("get", "list", "watch")]
    needs += [Access("create", "secrets", velero)]  # the repository password, generated once
    needs += [Access("create", "leases", r.namespace, "coordination.k8s.io")]
    needs += [
        Access(v, "leases", r.namespace, "coordination.k8s.io", name="barge-coordinator")
        for v in ("get", "update")
    ]
    needs += [Access("create", "tokenreviews", "", "authentication.k8s.io")]
    needs += [Access("get", "pods", r.namespace)]  # the agent's pod, when checking its token
    needs += [Access(v, "persistentvolumeclaims", r.app_namespace) for v in ("get", "list", "watch")]
    needs += [Access(v, "storageclasses", "", "storage.k8s.io") for v in ("get", "list", "watch")]
    needs += [Access(v, "events", velero) for v in ("create", "patch")]
    needs += [
        Access(v, "poddisruptionbudgets", velero, "policy")
        for v in ("get", "list", "watch", "create", "delete", "patch")  # patch: an earlier version's
    ]
    return needs


def coordinator_must_not(r: Release) -> list[Access]:
    return [
        Access("get", "secrets", r.velero_namespace, name="barge-repository-password"),
        Access("get", "secrets", r.velero_namespace, name="cloud-credentials"),
        Access("update", "secrets", r.velero_namespace, name="barge-repository-password"),
        Access("get", "secrets", r.namespace),
        Access("get", "secrets", r.app_namespace),
        Access("get", "secrets", "kube-system"),
        Access("list", "secrets", r.velero_namespace),
        Access("create", "pods", r.app_namespace),
        Access("delete", "pods", r.namespace),
        Access("list", "pods", r.namespace),
        Access("update", "persistentvolumeclaims", r.app_namespace),
        Access("delete", "persistentvolumeclaims", r.app_namespace),
        Access("create", "pods", r.velero_namespace, subresource="exec"),
        Access("create", "volumesnapshots", r.app_namespace, "snapshot.storage.k8s.io"),
        Access("update", "volumesnapshots", r.app_namespace, "snapshot.storage.k8s.io"),
        Access("patch", "volumesnapshots", r.app_namespace, "snapshot.storage.k8s.io"),
        Access("deletecollection", "volumesnapshots", r.app_namespace, "snapshot.storage.k8s.io"),
        Access("create", "datauploads", r.velero_namespace, "velero.io"),
        Access("delete", "datauploads", r.velero_namespace, "velero.io"),
        Access("get", "datauploads", r.app_namespace, "velero.io"),
        Access("update", "leases", r.namespace, "coordination.k8s.io", name="kube-scheduler"),
        Access("get", "leases", "kube-system", "coordination.k8s.io", name="barge-coordinator"),
        Access("delete", "nodes"),
        Access("create", "persistentvolumes"),
        Access("delete", "persistentvolumes"),
        Access("update", "backupstoragelocations", r.velero_namespace, "velero.io"),
        Access("create", "clusterrolebindings", "", "rbac.authorization.k8s.io"),
        Access("impersonate", "serviceaccounts", r.namespace),
    ]


def agent_needs(r: Release) -> list[Access]:
    velero = r.velero_namespace
    needs = [
        Access(v, p, velero, "velero.io")
        for p in ("datauploads", "datadownloads")
        for v in ("get", "list", "watch", "update", "patch")
    ]
    needs += [
        Access(v, p, velero, "velero.io", "status")
        for p in ("datauploads", "datadownloads")
        for v in ("update", "patch")
    ]
    needs += [Access("get", "backupstoragelocations", velero, "velero.io")]
    readable = ("barge-repository-password", "cloud-credentials")  # by name only: rbac.agentSecrets
    needs += [Access("get", "secrets", velero, name=secret) for secret in readable]
    return needs


def agent_must_not(r: Release) -> list[Access]:
    return [
        Access("delete", "pods", r.velero_namespace),
        Access("delete", "pods", r.namespace),
        Access("get", "pods", r.velero_namespace),
        Access("get", "secrets", r.velero_namespace, name="velero-repo-credentials"),
        Access("get", "secrets", r.velero_namespace, name="another-tenants-secret"),
        Access("create", "secrets", r.velero_namespace),
        Access("get", "secrets", r.namespace),
        Access("get", "secrets", r.app_namespace),
        Access("get", "secrets", "kube-system"),
        Access("list", "secrets", r.velero_namespace),
        Access("list", "backupstoragelocations", r.velero_namespace, "velero.io"),
        Access("create", "datauploads", r.velero_namespace, "velero.io"),
        Access("delete", "datadownloads", r.velero_namespace, "velero.io"),
        Access("get", "datauploads", r.app_namespace, "velero.io"),
        Access("get", "nodes"),
        Access("get", "persistentvolumes"),
        Access("create", "tokenreviews", "", "authentication.k8s.io"),
        Access("create", "leases", r.namespace, "coordination.k8s.io"),
        Access("get", "volumesnapshotcontents", "", "snapshot.storage.k8s.io"),
    ]


def test_every_rendered_object_is_accepted(helm: Helm, kube: client.ApiClient, release: Release) -> None:
    objects = manifest_objects(helm, release)
    kinds = {obj["kind"] for obj in objects}
    assert {
        "Deployment",
        "DaemonSet",
        "Service",
        "Secret",
        "ConfigMap",
        "PodDisruptionBudget",
        "ClusterRole",
        "Role",
        "RoleBinding",
        "ServiceAccount",
        "NetworkPolicy",  # on by default: only agents reach the coordinator's gRPC port
    } <= kinds
    for obj in objects:
        stored = fetch(kube, obj)
        assert stored.metadata.labels["app.kubernetes.io/instance"] == release.name, obj["metadata"]
    status = helm.run("status", release.name, "--namespace", release.namespace).stdout
    assert "STATUS: deployed" in status
    assert "helm test" in status, "NOTES.txt tells how to check the installation"


def test_daemonset_stored_with_its_host_mounts_and_token(kube: client.ApiClient, release: Release) -> None:
    daemonset = client.AppsV1Api(kube).read_namespaced_daemon_set(f"{release.name}-agent", release.namespace)
    pod = daemonset.spec.template.spec
    mounts = {m.name: m for m in pod.containers[0].volume_mounts}
    assert mounts["kubelet-root"].mount_propagation == "HostToContainer"
    token = next(v for v in pod.volumes if v.name == "coordinator-token").projected.sources[0]
    assert (token.service_account_token.audience, token.service_account_token.expiration_seconds) == (
        "barge",
        3600,
    )


@pytest.mark.parametrize("who", ["coordinator", "agent"])
def test_service_accounts_may_do_what_barge_needs(kube: client.ApiClient, release: Release, who: str) -> None:
    user = release.coordinator if who == "coordinator" else release.agent
    needs = coordinator_needs(release) if who == "coordinator" else agent_needs(release)
    denied = [access for access in needs if not allowed(kube, user, release.namespace, access)]
    assert denied == []


@pytest.mark.parametrize("who", ["coordinator", "agent"])
def test_service_accounts_may_not_do_more(kube: client.ApiClient, release: Release, who: str) -> None:
    user = release.coordinator if who == "coordinator" else release.agent
    forbidden = coordinator_must_not(release) if who == "coordinator" else agent_must_not(release)
    granted = [access for access in forbidden if allowed(kube, user, release.namespace, access)]
    assert granted == []


def test_installed_rbac_has_no_wildcards(kube: client.ApiClient, helm: Helm, release: Release) -> None:
    rbac = client.RbacAuthorizationV1Api(kube)
    roles = [obj for obj in manifest_objects(helm, release) if obj["kind"] in {"Role", "ClusterRole"}]
    assert len(roles) == 4
    for obj in roles:
        name, namespace = obj["metadata"]["name"], obj["metadata"].get("namespace")
        stored = (
            rbac.read_cluster_role(name) if namespace is None else rbac.read_namespaced_role(name, namespace)
        )
        for rule in stored.rules:
            for values in (rule.api_groups, rule.resources, rule.verbs, rule.resource_names or []):
                assert not any("*" in value for value in values), f"{name}: {rule}"


def test_upgrade_keeps_the_generated_ca_and_rolls_on_config_change(
    helm: Helm, kube: client.ApiClient, release: Release
) -> None:
    core, apps = client.CoreV1Api(kube), client.AppsV1Api(kube)
    secret_name = f"{release.name}-coordinator-tls"
    before = core.read_namespaced_secret(secret_name, release.namespace).data
    checksum_before = apps.read_namespaced_deployment(
        f"{release.name}-coordinator", release.namespace
    ).spec.template.metadata.annotations["checksum/config"]
    helm.run(
        "upgrade",
        release.name,
        str(CHART_DIR),
        "--namespace",
        release.namespace,
        "--reuse-values",
        "--set",
        "config.maxReexposures=5",
    )
    after = core.read_namespaced_secret(secret_name, release.namespace).data
    assert after == before, "agents must keep trusting the coordinator across upgrades"
    deployment = apps.read_namespaced_deployment(f"{release.name}-coordinator", release.namespace)
    assert deployment.spec.template.metadata.annotations["checksum/config"] != checksum_before
    config = core.read_namespaced_config_map(f"{release.name}-coordinator-config", release.namespace)
    assert yaml.safe_load(config.data["config.yaml"])["maxReexposures"] == 5


def test_other_values_install_and_uninstall_removes_every_object(helm: Helm, kube: client.ApiClient) -> None:
    suffix = uuid.uuid4().hex[:8]
    name = f"barge-gone-{suffix}"
    create_namespace(kube, f"velero-{suffix}")
    values = {
        "veleroNamespace": f"velero-{suffix}",
        "networkPolicy": {"metricsFrom": [{"namespaceSelector": {"matchLabels": {"a": "b"}}}]},
        "agent": {"privileged": True, "priorityClassName": "system-node-critical", "maxUnavailable": "10%"},
        "coordinator": {"replicas": 3, "affinity": {"podAntiAffinity": {}}},
        "tls": {"mode": "existingSecret", "existingSecret": "byo-tls"},
        "serviceAccount": {"agent": {"name": "custom-agent"}},
    }
    helm.run("install", name, str(CHART_DIR), "--namespace", name, "--create-namespace", values=values)
    objects = manifest_objects(helm, Release(name, name, f"velero-{suffix}", ""))
    assert {"NetworkPolicy"} <= {obj["kind"] for obj in objects}
    assert "Secret" not in {obj["kind"] for obj in objects}
    daemonset = client.AppsV1Api(kube).read_namespaced_daemon_set(f"{name}-agent", name)
    assert daemonset.spec.template.spec.service_account_name == "custom-agent"
    assert daemonset.spec.template.spec.containers[0].security_context.privileged is True
    helm.run("uninstall", name, "--namespace", name)
    leftovers = []
    for obj in objects:
        try:
            fetch(kube, obj)
            leftovers.append(obj["metadata"]["name"])
        except NotFoundError:
            pass
    assert leftovers == []
    with pytest.raises(ApiException) as raised:
        client.CoreV1Api(kube).read_namespaced_secret(f"sh.helm.release.v1.{name}.v1", name)
    assert raised.value.status == 404
