"""The decisions of the simulated scheduler and disruption controller, as pure functions of objects.

Kept apart from the I/O so they can be tested without a cluster and read against the upstream
rules they imitate (label selectors, node affinity, PodDisruptionBudget arithmetic).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

Obj = dict[str, Any]

TERMINAL_PHASES = ("Succeeded", "Failed")
DISRUPTED_POD_TIMEOUT = timedelta(minutes=2)


def _expression_matches(expression: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    key, operator = expression["key"], expression["operator"]
    values = expression.get("values") or []
    if operator == "In":
        return key in labels and labels[key] in values
    if operator == "NotIn":
        return key not in labels or labels[key] not in values
    if operator == "Exists":
        return key in labels
    if operator == "DoesNotExist":
        return key not in labels
    if operator in ("Gt", "Lt") and key in labels and labels[key].lstrip("-").isdigit():
        value, bound = int(labels[key]), int(values[0])
        return value > bound if operator == "Gt" else value < bound
    return False


def selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """A metav1.LabelSelector: matchLabels and matchExpressions ANDed; ``{}`` matches all, None none."""
    if selector is None:
        return False
    match_labels = selector.get("matchLabels") or {}
    if any(labels.get(key) != value for key, value in match_labels.items()):
        return False
    return all(_expression_matches(e, labels) for e in selector.get("matchExpressions") or [])


def _term_matches(term: Mapping[str, Any], node: Obj) -> bool:
    """One NodeSelectorTerm: its requirements ANDed; an empty term matches no node (as upstream)."""
    expressions = term.get("matchExpressions") or []
    fields = term.get("matchFields") or []
    if not expressions and not fields:
        return False
    labels = node["metadata"].get("labels") or {}
    node_fields = {"metadata.name": node["metadata"]["name"]}
    return all(_expression_matches(e, labels) for e in expressions) and all(
        _expression_matches(f, node_fields) for f in fields
    )


def node_is_schedulable(node: Obj) -> bool:
    """Ready and not cordoned."""
    if (node.get("spec") or {}).get("unschedulable"):
        return False
    conditions = (node.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _tolerates(tolerations: list[Obj], taint: Obj) -> bool:
    for toleration in tolerations:
        if toleration.get("effect") and toleration["effect"] != taint.get("effect"):
            continue
        if toleration.get("operator") == "Exists":
            if not toleration.get("key") or toleration["key"] == taint.get("key"):
                return True
        elif toleration.get("key") == taint.get("key") and toleration.get("value", "") == taint.get(
            "value", ""
        ):
            return True
    return False


def node_fits_pod(pod: Obj, node: Obj) -> bool:
    """nodeSelector, required node affinity (terms ORed) and NoSchedule/NoExecute taints."""
    spec = pod.get("spec") or {}
    labels = node["metadata"].get("labels") or {}
    if any(labels.get(key) != value for key, value in (spec.get("nodeSelector") or {}).items()):
        return False
    required = ((spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    )
    if required is not None and not any(
        _term_matches(t, node) for t in required.get("nodeSelectorTerms") or []
    ):
        return False
    taints = (node.get("spec") or {}).get("taints") or []
    blocking = [t for t in taints if t.get("effect") in ("NoSchedule", "NoExecute")]
    return all(_tolerates(spec.get("tolerations") or [], taint) for taint in blocking)


def pick_node(pod: Obj, nodes: Iterable[Obj], load: Mapping[str, int]) -> str | None:
    """The least-loaded schedulable node that fits ``pod`` (ties broken by name), or None."""
    fitting = [n["metadata"]["name"] for n in nodes if node_is_schedulable(n) and node_fits_pod(pod, n)]
    if not fitting:
        return None
    best: str = min(fitting, key=lambda name: (load.get(name, 0), name))
    return best


def claim_names(pod: Obj) -> list[str]:
    """The PVCs a pod mounts, in volume order."""
    volumes = (pod.get("spec") or {}).get("volumes") or []
    return [v["persistentVolumeClaim"]["claimName"] for v in volumes if v.get("persistentVolumeClaim")]


def pod_is_active(pod: Obj) -> bool:
    """Counts as running on its node: bound and not finished (upstream's 'uses its volumes')."""
    phase = (pod.get("status") or {}).get("phase")
    return bool((pod.get("spec") or {}).get("nodeName")) and phase not in TERMINAL_PHASES


def pod_is_ready(pod: Obj) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _resolve_int_or_percent(value: int | str, total: int, round_up: bool) -> int:
    if isinstance(value, int):
        return value
    if value.endswith("%"):
        scaled = int(value[:-1]) * total / 100
        return math.ceil(scaled) if round_up else math.floor(scaled)
    return int(value)


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def pdb_status(pdb: Obj, pods: Iterable[Obj], now: datetime) -> Obj:
    """The status the disruption controller would write for ``pdb`` given the namespace's pods.

    Pods the API server just evicted (``disruptedPods``, younger than two minutes, not yet
    terminating) are not healthy, so concurrent evictions cannot overrun the budget.
    """
    metadata, spec = pdb["metadata"], pdb.get("spec") or {}
    status = pdb.get("status") or {}
    matching = [p for p in pods if selector_matches(spec.get("selector"), p["metadata"].get("labels") or {})]
    matching = [p for p in matching if (p.get("status") or {}).get("phase") not in TERMINAL_PHASES]
    disrupted = {
        name: stamp
        for name, stamp in (status.get("disruptedPods") or {}).items()
        if now - parse_time(stamp) < DISRUPTED_POD_TIMEOUT
        and any(
            p["metadata"]["name"] == name and not p["metadata"].get("deletionTimestamp") for p in matching
        )
    }
    healthy = sum(
        1
        for p in matching
        if pod_is_ready(p)
        and not p["metadata"].get("deletionTimestamp")
        and p["metadata"]["name"] not in disrupted
    )
    expected = len(matching)
    if spec.get("maxUnavailable") is not None:
        desired = max(0, expected - _resolve_int_or_percent(spec["maxUnavailable"], expected, round_up=True))
    elif spec.get("minAvailable") is not None:
        desired = _resolve_int_or_percent(spec["minAvailable"], expected, round_up=True)
    else:
        desired = expected
    allowed = max(0, healthy - desired)
    return {
        "observedGeneration": metadata.get("generation", 0),
        "disruptedPods": disrupted,
        "currentHealthy": healthy,
        "desiredHealthy": desired,
        "expectedPods": expected,
        "disruptionsAllowed": allowed,
    }
