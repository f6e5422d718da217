"""Authenticating agents: a pod-bound ServiceAccount token must prove *which node* the caller runs on.

A valid token of the agent ServiceAccount is not enough: any pod of that ServiceAccount could claim
to be any node and receive another node's volumes. The token must be bound to a pod (the kubelet's
projected tokens are), and that pod, looked up live, must be the same uid, not terminating, and
scheduled on the node the caller claims. Accepted reviews are reused for a short while
(``CachedReviews``); the pod look-up never is.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from kubernetes import client

from barge.clock import Clock, SystemClock
from barge.errors import InvalidInput, NotFound, PermissionDenied, Unauthenticated
from barge.kube.resources import POD, TOKEN_REVIEW, KubeObjects, Obj

EXTRA_POD_NAME = "authentication.kubernetes.io/pod-name"
EXTRA_POD_UID = "authentication.kubernetes.io/pod-uid"
EXTRA_NODE_NAME = "authentication.kubernetes.io/node-name"

REVIEW_TTL_S = 60.0  # how long an accepted review is reused (the pod is still looked up live)
REVIEW_CACHE_SIZE = 4096  # reviews kept at most (one current token per agent, plus rotations)


@dataclass(frozen=True)
class Review:
    """What a TokenReview says of a token: ``authenticated`` and, if so, whose it is."""

    authenticated: bool
    username: str = ""
    extra: Obj | None = None
    error: str = ""


class CachedReviews:
    """TokenReviews of accepted tokens, reused for ``ttl_s`` and never past the token's own expiry.

    Keyed by the token's SHA-256, so the cache holds no token. A rejected token is never cached: it
    costs a review each time, and a token the API server does not know yet is accepted as soon as
    it does. Reuse is safe because the review only says whose token it is: the pod it is bound to is
    still looked up live on every authentication (``KubeAuthenticator._check_pod``), so a deleted or
    replaced agent pod is refused at once."""

    def __init__(
        self,
        review: Callable[[str], Review],
        clock: Clock,
        *,
        ttl_s: float = REVIEW_TTL_S,
        max_entries: int = REVIEW_CACHE_SIZE,
    ) -> None:
        self._review, self._clock = review, clock
        self._ttl_s, self._max_entries = ttl_s, max_entries
        self._lock = threading.Lock()
        self._entries: OrderedDict[bytes, tuple[float, Review]] = OrderedDict()  # key -> (until, review)

    def review(self, token: str) -> Review:
        key = hashlib.sha256(token.encode()).digest()
        now = self._clock.monotonic()
        with self._lock:
            cached = self._entries.get(key)
            if cached is not None and now < cached[0]:
                self._entries.move_to_end(key)
                return cached[1]
            self._entries.pop(key, None)
        fresh = self._review(token)
        lifetime = self._lifetime(token)
        if fresh.authenticated and lifetime > 0:
            with self._lock:
                self._entries[key] = (self._clock.monotonic() + lifetime, fresh)
                while len(self._entries) > self._max_entries:
                    self._entries.popitem(last=False)
        return fresh

    def _lifetime(self, token: str) -> float:
        expires = token_expiry(token)
        if expires is None:
            return self._ttl_s
        return min(self._ttl_s, expires - self._clock.now().timestamp())


def token_expiry(token: str) -> float | None:
    """The ``exp`` claim (Unix seconds) of a JWT, read without checking the signature (the API
    server did that; this only shortens how long its answer is reused), or None if it has none."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload))
    except (binascii.Error, ValueError):
        return None
    expires = claims.get("exp") if isinstance(claims, dict) else None
    return float(expires) if isinstance(expires, int | float) and not isinstance(expires, bool) else None


@dataclass(frozen=True)
class _BoundPod:
    namespace: str
    name: str
    uid: str
    node_name: str  # from the token's claims; "" when the API server does not add it


class KubeAuthenticator:
    """``authenticate(token, claimed_node)`` through TokenReview plus a live look-up of the bound pod."""

    def __init__(
        self,
        api: client.ApiClient,
        service_account: str,
        audiences: tuple[str, ...] = (),
        *,
        clock: Clock | None = None,
        review_ttl_s: float = REVIEW_TTL_S,
    ) -> None:
        namespace, sep, name = service_account.partition("/")
        if not sep or not namespace or not name or "/" in name:
            raise InvalidInput(f"service account {service_account!r} is not '<namespace>/<name>'")
        self._objects = KubeObjects(api)
        self._namespace = namespace
        self._username = f"system:serviceaccount:{namespace}:{name}"
        self._audiences = list(audiences)
        self._reviews = CachedReviews(self._token_review, clock or SystemClock(), ttl_s=review_ttl_s)

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
        review = self._reviews.review(token)
        if not review.authenticated:
            raise Unauthenticated(f"token rejected by the API server: {review.error or 'not authenticated'}")
        if review.username != self._username:
            raise PermissionDenied(f"token belongs to {review.username!r}, not the agent {self._username!r}")
        return _bound_pod(self._namespace, review.extra or {}, claimed_node)

    def _token_review(self, token: str) -> Review:
        spec: Obj = {"token": token}
        if self._audiences:
            spec["audiences"] = self._audiences
        status = self._objects.create(TOKEN_REVIEW, {"metadata": {}, "spec": spec}).get("status") or {}
        if not status.get("authenticated"):
            return Review(False, error=str(status.get("error") or ""))
        user = status.get("user") or {}
        return Review(True, str(user.get("username") or ""), dict(user.get("extra") or {}))

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
