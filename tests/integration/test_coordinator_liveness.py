"""A coordinator replica whose vital loop dies says so on /healthz and gives up its Lease, so the
standby takes over: two replicas in this process (``coordinator.main.Coordinator``, as
``barge-coordinator`` runs one) against the real API server, with a short lease."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kubernetes import client

from barge.kube.resources import LEASE, KubeObjects
from coordinator.controller import Controller
from coordinator.main import Coordinator, build_parser
from devenv.controlplane import ControlPlaneEndpoints
from devenv.pki import make_serving_pki
from tests.integration.kubetest import eventually, fresh_namespace

pytestmark = pytest.mark.integration

LEASE_NAME = "barge-coordinator"
SYNC_S = 60.0  # a new leader lists every kind its controller watches before it leads


@pytest.fixture
def namespace(kube: client.ApiClient) -> Iterator[str]:
    yield from fresh_namespace(kube, "liveness")


@pytest.fixture
def replica(
    control_plane: ControlPlaneEndpoints, namespace: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[[str], Coordinator]]:
    pki = make_serving_pki(tmp_path / "pki")
    started: list[Coordinator] = []

    def start(name: str, prepare: Callable[[Coordinator], None] = lambda c: None) -> Coordinator:
        monkeypatch.setenv("POD_NAME", name)  # the replica's identity on the Lease
        args = build_parser().parse_args(
            [
                f"--kubeconfig={control_plane.kubeconfig}",
                f"--watch-namespace={namespace}",
                "--grpc-address=127.0.0.1",
                "--grpc-port=0",
                "--metrics-address=127.0.0.1",
                "--metrics-port=0",
                f"--tls-cert-file={pki.serving.cert_path}",
                f"--tls-key-file={pki.serving.key_path}",
                f"--agent-service-account={namespace}/barge-agent",
                f"--leader-election-namespace={namespace}",
                f"--leader-election-id={LEASE_NAME}",
                "--lease-duration=3",
                "--workers=2",
            ]
        )
        coordinator = Coordinator(args)
        started.append(coordinator)
        prepare(coordinator)
        coordinator.start()
        return coordinator

    yield start
    for coordinator in started:
        coordinator.stop()


def healthz(coordinator: Coordinator) -> tuple[int, str]:
    url = f"http://127.0.0.1:{coordinator.probe_port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def leads(coordinator: Coordinator) -> bool:
    return coordinator.metrics.registry.get_sample_value("barge_coordinator_is_leader") == 1.0


def holder(kube: client.ApiClient, namespace: str) -> str:
    return str(KubeObjects(kube).get(LEASE, namespace, LEASE_NAME)["spec"].get("holderIdentity") or "")


def broken(*args: object) -> bool:
    raise RuntimeError("injected")


def kill_admission_loop(coordinator: Coordinator) -> None:
    controller = coordinator.leadership._controller
    assert controller is not None
    controller.recompute_admissions = broken  # type: ignore[method-assign,assignment]


def kill_election_loop(coordinator: Coordinator) -> None:
    elector = coordinator.leadership._elector
    assert elector is not None
    elector._attempt = broken  # type: ignore[method-assign]  # standing by
    elector._renew = broken  # type: ignore[method-assign]  # leading


@pytest.mark.parametrize(
    ("kill", "loop"), [(kill_admission_loop, "admission"), (kill_election_loop, "leader-election")]
)
def test_a_leader_whose_vital_loop_dies_is_unhealthy_and_hands_the_lease_to_the_standby(
    replica: Callable[..., Coordinator],
    kube: client.ApiClient,
    namespace: str,
    kill: Callable[[Coordinator], None],
    loop: str,
) -> None:
    first = replica("first")
    eventually(lambda: leads(first), timeout=SYNC_S)
    second = replica("second")
    assert healthz(first) == (200, "ok\n")
    assert healthz(second) == (200, "ok\n")

    kill(first)
    killed = time.monotonic()
    eventually(first.leadership.stop.is_set, timeout=30)
    # It released the Lease before it asked to exit: the standby need not wait for it to expire.
    assert holder(kube, namespace) in ("", "second")
    assert first.leadership.failed.is_set()
    assert not leads(first)
    assert healthz(first) == (503, f"{loop} died: RuntimeError: injected\n")
    eventually(lambda: leads(second), timeout=SYNC_S)
    print(f"{loop} killed on the leader: the standby led {time.monotonic() - killed:.1f}s later (lease 3s)")
    assert holder(kube, namespace) == "second"
    assert healthz(second) == (200, "ok\n")


def test_a_standby_keeps_the_next_terms_caches_warm_and_leads_with_them_without_listing_again(
    replica: Callable[..., Coordinator], kube: client.ApiClient, namespace: str
) -> None:
    first = replica("first")
    eventually(lambda: leads(first), timeout=SYNC_S)
    second = replica("second")
    standby = second.leadership._standby
    assert standby is not None
    eventually(standby.synced, timeout=SYNC_S)
    assert not leads(second)
    assert second.leadership._controller is None  # standing by: nothing acts on the caches

    kill_admission_loop(first)
    eventually(lambda: leads(second), timeout=SYNC_S)
    assert second.leadership._controller is standby
    assert second.leadership._standby is None


def test_a_standby_whose_election_loop_dies_is_unhealthy_instead_of_silently_never_leading(
    replica: Callable[..., Coordinator], kube: client.ApiClient, namespace: str
) -> None:
    first = replica("first")
    eventually(lambda: leads(first), timeout=SYNC_S)
    second = replica("second")
    kill_election_loop(second)
    eventually(second.leadership.stop.is_set, timeout=30)
    assert healthz(second) == (503, "leader-election died: RuntimeError: injected\n")
    assert healthz(first) == (200, "ok\n")
    assert holder(kube, namespace) == "first"


def controllers_that_cannot_start(coordinator: Coordinator) -> None:
    leadership = coordinator.leadership
    new_controller = leadership._new_controller

    def broken_controller() -> Controller:
        controller = new_controller()
        controller.start = broken  # type: ignore[method-assign,assignment]
        return controller

    leadership._new_controller = broken_controller


def test_a_leader_whose_controller_cannot_start_gives_the_lease_up_instead_of_holding_it_idle(
    replica: Callable[..., Coordinator], kube: client.ApiClient, namespace: str
) -> None:
    first = replica("first", prepare=controllers_that_cannot_start)
    eventually(first.leadership.stop.is_set, timeout=30)
    assert holder(kube, namespace) == ""
    assert healthz(first) == (503, "controller died: could not start: RuntimeError: injected\n")
    second = replica("second")
    eventually(lambda: leads(second), timeout=SYNC_S)
