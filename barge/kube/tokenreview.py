"""Authenticating agents: a pod-bound ServiceAccount token must prove *which node* the caller runs on.

A valid token of the agent ServiceAccount is not enough: any pod of that ServiceAccount could claim
to be any node and receive another node's volumes. The token must be bound to a pod (the kubelet's
projected tokens are), and that pod, looked up live, must be the same uid, not terminating, and
scheduled on the node the caller claims.
"""

from __future__ import annotations

from dataclasses import dataclass

from kubernetes import client

from barge.errors import InvalidInput, NotFound, PermissionDenied, Unauthenticated
from barge.kube.resources import POD, TOKEN_REVIEW, KubeObjects, Obj

EXTRA_POD_NAME = "authentication.kubernetes.io/pod-name"
EXTRA_POD_UID = "authentication.kubernetes.io/pod-uid"
EXTRA_NODE_NAME = "authentication.kubernetes.io/node-name"


@dataclass(frozen=True)
class _BoundPod:
    namespace: str
    name: str
    uid: str
    node_name: str  # from the token's claims; "" when the API server does not add it


class KubeAuthenticator:
    """``authenticate(token, claimed_node)`` through TokenReview plus a live look-up of the bound pod."""

    def __init__(self, api: client.ApiClient, service_account: str, audiences: tuple[str, ...] = ()) -> None:
        namespace, sep, name = service_account.partition("/")
        if not sep or not namespace or not name or "/" in name:
            raise InvalidInput(f"service account {service_account!r} is not '<namespace>/<name>'")
        self._objects = KubeObjects(api)
        self._namespace = namespace
        self._username = f"system:serviceaccount:{namespace}:{name}"
        self._audiences = list(audiences)

    def authenticate(self, token: str, claimed_node: str) -> str:
        """The caller's pod as ``"<namespace>/<pod>"`` when ``token`` proves it runs on ``claimed_node``.

        Raises Unauthenticated for a token the API server rejects, PermissionDenied for a valid token
        that is the wrong ServiceAccount, bound to no pod, or bound to a pod on another node.
        """
        if not token:
            raise Unauthenticated("no bearer token presented")
        bound = self._review(token, claimed_node)
        self._check_pod(bound, claimed_node)
        return f"{bound.namespace}/{bound.name}"

    def _review(self, token: str, claimed_node: str) -> _BoundPod:
        spec: Obj = {"token": token}
        if self._audiences:
            spec["audiences"] = self._audiences
        review = self._objects.create(TOKEN_REVIEW, {"metadata": {}, "spec": spec})
        status = review.get("status") or {}
        if not status.get("authenticated"):
            reason = status.get("error") or "not authenticated"
            raise Unauthenticated(f"token rejected by the API server: {reason}")
        user = status.get("user") or {}
        username = user.get("username")
        if username != self._username:
            raise PermissionDenied(f"token belongs to {username!r}, not the agent {self._username!r}")
        return _bound_pod(self._namespace, user.get("extra") or {}, claimed_node)

    def _check_pod(self, bound: _BoundPod, claimed_node: str) -> None:
        what = f"pod {bound.namespace}/{bound.name}"
        try:
            pod = self._objects.get(POD, bound.namespace, bound.name)
        except NotFound:
            raise PermissionDenied(f"token is bound to {what}, which no longer exists") from None
        meta, spec = pod["metadata"], pod.get("spec") or {}
        if meta.get("uid") != bound.uid:
            raise PermissionDenied(f"token is bound to an earlier {what} (uid {bound.uid}), since replaced")
        if meta.get("deletionTimestamp"):
            raise PermissionDenied(f"token is bound to {what}, which is being deleted")
        node = spec.get("nodeName")
        if node != claimed_node:
            raise PermissionDenied(f"{what} runs on node {node!r}, not the claimed {claimed_node!r}")


def _bound_pod(namespace: str, extra: Obj, claimed_node: str) -> _BoundPod:
    """The pod named by the token's extras; PermissionDenied when the token is not pod-bound."""
    pod_name, pod_uid = _single(extra, EXTRA_POD_NAME), _single(extra, EXTRA_POD_UID)
    if not pod_name or not pod_uid:
        raise PermissionDenied("token is not bound to a pod: use the pod's projected ServiceAccount token")
    node_name = _single(extra, EXTRA_NODE_NAME)
    if node_name and node_name != claimed_node:
        raise PermissionDenied(f"token was issued for node {node_name!r}, not the claimed {claimed_node!r}")
    return _BoundPod(namespace, pod_name, pod_uid, node_name)


def _single(extra: Obj, key: str) -> str:
    values = extra.get(key) or []
    return str(values[0]) if len(values) == 1 else ""
