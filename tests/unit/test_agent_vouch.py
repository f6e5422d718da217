"""The agent's vouch for the exposer pods whose data it moves (``agent.vouch``): what keeps such a
pod Ready, so that the exposer budget protects it, and only while someone could hand its work off.

The kubelet root is a directory here, laid out as the kubelet lays it out (the simulator's kubelet
does the same, and the e2e drain tests run the real exec probe against it).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from agent.agent import Agent
from agent.metrics import AgentMetrics
from agent.runner import Mutation, RunnerSettings
from barge.clock import ManualClock
from barge.control.messages import Assignment, AssignmentResult, Outcome
from barge.control.naming import (
    EXPOSER_STATUS_VOLUME,
    VOUCH_FILE,
    VOUCH_TTL_S,
    Fence,
    kubelet_empty_dir_path,
)
from barge.repo.crypto import KdfParams
from barge.repo.repository import Repository
from barge.storage.local import LocalDirectoryStore
from tests.fsbuild import write
from tests.unit.test_agent_runner import PASSWORD, MemoryStatus, Repos, assignment, exposed_volume


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    return Repository.init(LocalDirectoryStore(tmp_path / "repo"), PASSWORD, kdf=KdfParams.for_tests())


class GatedStatus(MemoryStatus):
    """An API server that holds every status write until ``gate`` opens: the work stays running."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()

    def update(self, assignment: Assignment, fence: Fence, mutate: Mutation) -> None:
        self.gate.wait(30)
        super().update(assignment, fence, mutate)


class Node:
    """A kubelet root with the exposer pod ``pod-1``: its volume and its status emptyDir."""

    def __init__(self, tmp_path: Path, status_volume: bool = True) -> None:
        self.kubelet = tmp_path / "kubelet"
        write(tmp_path / "volume" / "f", os.urandom(100_000))
        exposed_volume(self.kubelet, "pod-1", "pv-1", tmp_path / "volume")
        self.status_dir = Path(kubelet_empty_dir_path(str(self.kubelet), "pod-1", EXPOSER_STATUS_VOLUME))
        if status_volume:
            self.status_dir.mkdir(parents=True)

    def vouched_until(self) -> int | None:
        path = self.status_dir / VOUCH_FILE
        return int(path.read_text()) if path.exists() else None


@dataclass
class Results:
    """What the agent sends the coordinator: only the results matter here."""

    outcomes: list[Outcome] = field(default_factory=list)
    finished: threading.Event = field(default_factory=threading.Event)

    def send(self, event: object) -> None:
        if isinstance(event, AssignmentResult):
            self.outcomes.append(event.outcome)
            self.finished.set()


def agent_on(node: Node, repo: Repository, status: MemoryStatus, clock: ManualClock) -> tuple[Agent, Results]:
    settings = RunnerSettings(node="node-a", kubelet_root=node.kubelet)
    metrics = AgentMetrics("node-a")
    agent = Agent(settings, status=status, repositories=Repos(repo), clock=clock, metrics=metrics)
    results = Results()
    agent.send = results.send
    return agent, results


def test_the_agent_vouches_while_it_moves_the_data_with_a_coordinator_and_withdraws_otherwise(
    tmp_path: Path, repo: Repository
) -> None:
    node, status, clock = Node(tmp_path), GatedStatus(), ManualClock()
    agent, results = agent_on(node, repo, status, clock)
    connected = [True]
    agent.coordinator_connected = lambda: connected[0]
    agent.handle(assignment())
    now = int(clock.now().timestamp())
    assert node.vouched_until() == now + VOUCH_TTL_S  # at once: Ready at the probe's next look
    clock.advance(3)
    agent.renew_vouches()
    assert node.vouched_until() == now + 3 + VOUCH_TTL_S  # renewed: a dead agent's would expire
    connected[0] = False  # no coordinator: nobody could hand the work off, a drain must not wait
    agent.renew_vouches()
    assert node.vouched_until() is None
    connected[0] = True
    agent.renew_vouches()
    assert node.vouched_until() is not None
    status.gate.set()
    assert results.finished.wait(30)
    assert results.outcomes == [Outcome.COMPLETED]
    assert node.vouched_until() is None  # the work ended: withdrawn, not left to expire


def test_work_whose_pod_is_torn_down_is_handed_back_without_a_coordinator(
    tmp_path: Path, repo: Repository
) -> None:
    """An eviction while no coordinator runs: the kubelet removes the pod's volumes; the agent lets
    go of the volume it must unmount, and the next coordinator re-exposes it elsewhere."""
    node, status = Node(tmp_path), GatedStatus()
    agent, results = agent_on(node, repo, status, ManualClock())
    agent.handle(assignment())  # its coordinator is gone (coordinator_connected is False)
    assert node.vouched_until() is None
    node.status_dir.rmdir()  # the kubelet tears the evicted pod down
    agent.renew_vouches()
    status.gate.set()
    assert results.finished.wait(30)
    assert results.outcomes == [Outcome.HANDED_OFF]
    assert status.status.get("phase") != "Completed"
    assert not node.status_dir.exists()  # never recreated


def test_a_pod_without_a_status_volume_is_left_to_the_coordinator(tmp_path: Path, repo: Repository) -> None:
    """An exposer pod made by an earlier coordinator has no status volume: no vouch, and its
    missing volume is no teardown."""
    node, status = Node(tmp_path, status_volume=False), GatedStatus()
    agent, results = agent_on(node, repo, status, ManualClock())
    agent.coordinator_connected = lambda: True
    agent.handle(assignment())
    agent.renew_vouches()
    assert not node.status_dir.exists()
    status.gate.set()
    assert results.finished.wait(30)
    assert results.outcomes == [Outcome.COMPLETED]
