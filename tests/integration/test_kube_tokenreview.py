"""KubeAuthenticator against real TokenRequest/TokenReview: a pod-bound token proves the caller's node."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from kubernetes import client

from barge.errors import PermissionDenied, Unauthenticated
from barge.kube.resources import NODE, POD, TOKEN_REVIEW, KubeObjects
from barge.kube.tokenreview import EXTRA_NODE_NAME, EXTRA_POD_NAME, EXTRA_POD_UID, KubeAuthenticator
from tests.integration.kubetest import fresh_namespace, unique

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Cluster:
    namespace: str
    node_a: str
    node_b: str


@pytest.fixture(scope="module")
def cluster(kube: client.ApiClient) -> Iterator[Cluster]:
    objects = KubeObjects(kube)
    node_a, node_b = unique("node-a"), unique("node-b")
    for node in (node_a, node_b):
        objects.create(NODE, {"metadata": {"name": node}})
    for namespace in fresh_namespace(kube, "auth"):
        for account in ("agent", "other"):
            client.CoreV1Api(kube).create_namespaced_service_account(
                namespace, {"metadata": {"name": account}}
            )
        yield Cluster(namespace, node_a, node_b)
    for node in (node_a, node_b):
        objects.delete(NODE, None, node)


def make_pod(
    kube: client.ApiClient, cluster: Cluster, account: str, node: str, **meta: Any
) -> dict[str, Any]:
    return KubeObjects(kube).create(
        POD,
        {
            "metadata": {"name": unique(account), "namespace": cluster.namespace, **meta},
            "spec": {
                "nodeName": node,
                "serviceAccountName": account,
                "containers": [{"name": "agent", "image": "barge"}],
            },
        },
    )


def token_for(
    kube: client.ApiClient,
    cluster: Cluster,
    account: str,
    pod: dict[str, Any] | None = None,
    audiences: list[str] | None = None,
) -> str:
    """A TokenRequest token, bound to ``pod`` like the kubelet's projected tokens when given."""
    spec: dict[str, Any] = {"expirationSeconds": 3600}
    if pod is not None:
        meta = pod["metadata"]
        spec["boundObjectRef"] = {"kind": "Pod", "apiVersion": "v1", "name": meta["name"], "uid": meta["uid"]}
    if audiences:
        spec["audiences"] = audiences
    request = client.CoreV1Api(kube).create_namespaced_service_account_token(
        account, cluster.namespace, {"spec": spec}
    )
    token: str = request.status.token
    return token


@pytest.fixture
def authenticator(kube: client.ApiClient, cluster: Cluster) -> KubeAuthenticator:
    return KubeAuthenticator(kube, f"{cluster.namespace}/agent")


def test_the_api_server_puts_the_pod_binding_in_the_token_review(
    kube: client.ApiClient, cluster: Cluster
) -> None:
    """The premise of the node check: a pod-bound token reviews with the pod's name, uid and node."""
    pod = make_pod(kube, cluster, "agent", cluster.node_a)
    review = KubeObjects(kube).create(
        TOKEN_REVIEW, {"metadata": {}, "spec": {"token": token_for(kube, cluster, "agent", pod)}}
    )
    extra = review["status"]["user"]["extra"]
    assert extra[EXTRA_POD_NAME] == [pod["metadata"]["name"]]
    assert extra[EXTRA_POD_UID] == [pod["metadata"]["uid"]]
    assert extra[EXTRA_NODE_NAME] == [cluster.node_a]


def test_a_token_bound_to_a_pod_on_the_claimed_node_is_accepted(
    kube: client.ApiClient, cluster: Cluster, authenticator: KubeAuthenticator
) -> None:
    pod = make_pod(kube, cluster, "agent", cluster.node_a)
    identity = authenticator.authenticate(token_for(kube, cluster, "agent", pod), cluster.node_a)
    assert identity == f"{cluster.namespace}/{pod['metadata']['name']}"


def test_claiming_another_node_is_denied(
    kube: client.ApiClient, cluster: Cluster, authenticator: KubeAuthenticator
) -> None:
    pod = make_pod(kube, cluster, "agent", cluster.node_a)
    with pytest.raises(
        PermissionDenied, match=f"node '{cluster.node_a}', not the claimed '{cluster.node_b}'"
    ):
        authenticator.authenticate(token_for(kube, cluster, "agent", pod), cluster.node_b)


def test_a_garbage_or_empty_token_is_unauthenticated(
    authenticator: KubeAuthenticator, cluster: Cluster
) -> None:
    with pytest.raises(Unauthenticated, match="token rejected by the API server"):
        authenticator.authenticate("not-a-token", cluster.node_a)
    with pytest.raises(Unauthenticated, match="no bearer token"):
        authenticator.authenticate("", cluster.node_a)


def test_another_service_accounts_token_is_denied(
    kube: client.ApiClient, cluster: Cluster, authenticator: KubeAuthenticator
) -> None:
    pod = make_pod(kube, cluster, "other", cluster.node_a)
    with pytest.raises(PermissionDenied, match=f"system:serviceaccount:{cluster.namespace}:other"):
        authenticator.authenticate(token_for(kube, cluster, "other", pod), cluster.node_a)


def test_a_token_bound_to_no_pod_is_denied(
    kube: client.ApiClient, cluster: Cluster, authenticator: KubeAuthenticator
) -> None:
    with pytest.raises(PermissionDenied, match="not bound to a pod"):
        authenticator.authenticate(token_for(kube, cluster, "agent"), cluster.node_a)


def test_a_token_of_a_terminating_pod_is_denied(
    kube: client.ApiClient, cluster: Cluster, authenticator: KubeAuthenticator
) -> None:
    objects = KubeObjects(kube)
    pod = make_pod(kube, cluster, "agent", cluster.node_a, finalizers=["barge.io/test-hold"])
    token = token_for(kube, cluster, "agent", pod)
    objects.delete(POD, cluster.namespace, pod["metadata"]["name"])  # the finalizer keeps it, terminating
    try:
        with pytest.raises(PermissionDenied, match="being deleted"):
            authenticator.authenticate(token, cluster.node_a)
    finally:
        objects.patch(POD, cluster.namespace, pod["metadata"]["name"], {"metadata": {"finalizers": None}})


def test_a_token_of_a_deleted_pod_is_rejected(
    kube: client.ApiClient, cluster: Cluster, authenticator: KubeAuthenticator
) -> None:
    pod = make_pod(kube, cluster, "agent", cluster.node_a)
    token = token_for(kube, cluster, "agent", pod)
    client.CoreV1Api(kube).delete_namespaced_pod(
        pod["metadata"]["name"], cluster.namespace, grace_period_seconds=0
    )
    # The API server's token validator reads pods from its informer cache: for a moment after the
    # deletion it may still accept the token, and then the live pod look-up refuses it instead.
    with pytest.raises(
        (Unauthenticated, PermissionDenied), match=r"token has been invalidated|no longer exists"
    ):
        authenticator.authenticate(token, cluster.node_a)


def test_a_reused_review_still_refuses_the_token_once_its_pod_is_gone(
    kube: client.ApiClient, cluster: Cluster, authenticator: KubeAuthenticator
) -> None:
    """Accepted reviews are reused (``CachedReviews``), the pod look-up never is: within the reuse
    window a token whose pod was deleted is refused all the same."""
    pod = make_pod(kube, cluster, "agent", cluster.node_a)
    token = token_for(kube, cluster, "agent", pod)
    assert authenticator.authenticate(token, cluster.node_a).endswith(pod["metadata"]["name"])
    client.CoreV1Api(kube).delete_namespaced_pod(
        pod["metadata"]["name"], cluster.namespace, grace_period_seconds=0
    )
    with pytest.raises(PermissionDenied, match="no longer exists"):
        authenticator.authenticate(token, cluster.node_a)


def test_audiences_are_checked_when_configured(kube: client.ApiClient, cluster: Cluster) -> None:
    pod = make_pod(kube, cluster, "agent", cluster.node_a)
    token = token_for(kube, cluster, "agent", pod, audiences=["barge-coordinator"])
    scoped = KubeAuthenticator(kube, f"{cluster.namespace}/agent", audiences=("barge-coordinator",))
    assert scoped.authenticate(token, cluster.node_a).endswith(pod["metadata"]["name"])
    with pytest.raises(Unauthenticated):
        KubeAuthenticator(kube, f"{cluster.namespace}/agent").authenticate(token, cluster.node_a)


def test_the_service_account_must_be_namespace_slash_name(kube: client.ApiClient) -> None:
    from barge.errors import InvalidInput

    for bad in ("agent", "ns/", "/agent", "a/b/c"):
        with pytest.raises(InvalidInput, match="not '<namespace>/<name>'"):
            KubeAuthenticator(kube, bad)
