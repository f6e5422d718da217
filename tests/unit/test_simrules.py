"""The simulator's pure decisions (selectors, affinity, PDB arithmetic) and the bounded wait helper."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from barge.clock import ManualClock
from barge.errors import TemporaryError
from devenv.simrules import node_fits_pod, pdb_status, pick_node, selector_matches
from devenv.simsnapshots import format_quantity, quantity_bytes
from devenv.waiting import wait_for

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def node(name: str, labels: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": labels or {}},
        "spec": spec,
        "status": {"conditions": [{"type": "Ready", "status": "True"}]},
    }


def pod(
    name: str = "p", labels: dict[str, str] | None = None, ready: bool = True, **spec: Any
) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": labels or {}},
        "spec": spec,
        "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": str(ready)}]},
    }


def requirement(key: str, operator: str, *values: str) -> dict[str, Any]:
    return {"key": key, "operator": operator, "values": list(values)}


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ({}, True),
        (None, False),
        ({"matchLabels": {"app": "db"}}, True),
        ({"matchLabels": {"app": "web"}}, False),
        ({"matchExpressions": [requirement("tier", "In", "gold", "silver")]}, True),
        ({"matchExpressions": [requirement("tier", "NotIn", "gold")]}, False),
        ({"matchExpressions": [requirement("missing", "NotIn", "x")]}, True),
        ({"matchExpressions": [requirement("tier", "Exists")]}, True),
        ({"matchExpressions": [requirement("tier", "DoesNotExist")]}, False),
        ({"matchLabels": {"app": "db"}, "matchExpressions": [requirement("tier", "In", "bronze")]}, False),
    ],
)
def test_label_selectors(selector: dict[str, Any] | None, expected: bool) -> None:
    assert selector_matches(selector, {"app": "db", "tier": "gold"}) is expected


def affinity(*terms: list[dict[str, Any]]) -> dict[str, Any]:
    required = {"nodeSelectorTerms": [{"matchExpressions": list(t)} for t in terms]}
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": required}}


def test_affinity_terms_are_ored_and_their_expressions_anded() -> None:
    spec = affinity(
        [requirement("zone", "In", "a")],
        [requirement("gpu", "Exists"), requirement("zone", "NotIn", "a", "b")],
    )
    candidate = pod(affinity=spec)
    assert node_fits_pod(candidate, node("n", {"zone": "a"}))
    assert node_fits_pod(candidate, node("n", {"zone": "c", "gpu": "1"}))
    assert not node_fits_pod(candidate, node("n", {"zone": "b", "gpu": "1"}))
    assert not node_fits_pod(candidate, node("n", {"zone": "c"}))


def test_an_empty_affinity_term_matches_no_node() -> None:
    assert not node_fits_pod(pod(affinity=affinity([])), node("n", {"zone": "a"}))


def test_node_selector_and_taints() -> None:
    tainted = node(
        "n", {"disk": "ssd"}, taints=[{"key": "dedicated", "value": "backup", "effect": "NoSchedule"}]
    )
    assert not node_fits_pod(pod(nodeSelector={"disk": "ssd"}), tainted)
    toleration = {"key": "dedicated", "operator": "Equal", "value": "backup", "effect": "NoSchedule"}
    assert node_fits_pod(pod(nodeSelector={"disk": "ssd"}, tolerations=[toleration]), tainted)
    assert not node_fits_pod(pod(nodeSelector={"disk": "hdd"}, tolerations=[toleration]), tainted)
    assert node_fits_pod(pod(tolerations=[{"operator": "Exists"}]), tainted)


def test_pick_node_prefers_the_least_loaded_ready_uncordoned_fit() -> None:
    nodes = [
        node("busy", {"pool": "x"}),
        node("idle", {"pool": "x"}),
        node("cordoned", {"pool": "x"}, unschedulable=True),
        node("other", {"pool": "y"}),
    ]
    not_ready = node("not-ready", {"pool": "x"})
    not_ready["status"]["conditions"][0]["status"] = "False"
    candidate = pod(nodeSelector={"pool": "x"})
    assert pick_node(candidate, [*nodes, not_ready], {"busy": 3, "idle": 1}) == "idle"
    assert pick_node(candidate, nodes, {"busy": 0, "idle": 1}) == "busy"
    assert pick_node(pod(nodeSelector={"pool": "z"}), nodes, {}) is None


def budget(spec: dict[str, Any], disrupted: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "metadata": {"name": "b", "generation": 3},
        "spec": {"selector": {"matchLabels": {"app": "db"}}, **spec},
        "status": {"disruptedPods": disrupted or {}},
    }


def test_pdb_min_available_counts_only_ready_matching_pods() -> None:
    pods = [
        pod("a", {"app": "db"}),
        pod("b", {"app": "db"}),
        pod("c", {"app": "db"}, ready=False),
        pod("d", {"app": "web"}),
    ]
    status = pdb_status(budget({"minAvailable": 1}), pods, NOW)
    assert status["observedGeneration"] == 3
    assert (status["expectedPods"], status["currentHealthy"], status["desiredHealthy"]) == (3, 2, 1)
    assert status["disruptionsAllowed"] == 1


def test_pdb_max_unavailable_and_percentages_round_up() -> None:
    pods = [pod(name, {"app": "db"}) for name in "abcd"]
    assert pdb_status(budget({"maxUnavailable": 1}), pods, NOW)["disruptionsAllowed"] == 1
    assert pdb_status(budget({"minAvailable": "50%"}), pods, NOW)["desiredHealthy"] == 2
    assert pdb_status(budget({"maxUnavailable": "30%"}), pods, NOW)["desiredHealthy"] == 2


def test_recently_evicted_pods_are_not_healthy_until_the_entry_expires() -> None:
    pods = [pod("a", {"app": "db"}), pod("b", {"app": "db"})]
    recent = (NOW - timedelta(seconds=10)).strftime("%Y-%m-%dT%H:%M:%SZ")
    old = (NOW - timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    status = pdb_status(budget({"minAvailable": 1}, {"a": recent}), pods, NOW)
    assert (status["currentHealthy"], status["disruptionsAllowed"]) == (1, 0)
    assert status["disruptedPods"] == {"a": recent}
    expired = pdb_status(budget({"minAvailable": 1}, {"a": old, "gone": recent}), pods, NOW)
    assert (expired["currentHealthy"], expired["disruptedPods"]) == (2, {})


@pytest.mark.parametrize(
    ("size", "text"), [(1 << 30, "1Gi"), (3 << 29, "1536Mi"), (64 << 20, "64Mi"), (1000, "1000"), (0, "0")]
)
def test_quantities_print_as_the_api_server_does_and_parse_back(size: int, text: str) -> None:
    assert format_quantity(size) == text
    assert quantity_bytes(text) == size


def test_wait_for_returns_the_first_truthy_result() -> None:
    answers = iter([None, 0, "ready"])
    assert wait_for(lambda: next(answers), 5, clock=ManualClock()) == "ready"


def test_wait_for_times_out_with_what_it_waited_for() -> None:
    clock = ManualClock()
    calls: list[float] = []

    def never() -> bool:
        calls.append(clock.monotonic())
        return False

    with pytest.raises(TemporaryError, match=r"timed out after 2s waiting for the pod"):
        wait_for(never, 2, what="the pod", interval=0.5, clock=clock)
    assert calls[-1] == 2.0
    assert calls == sorted(calls)
