"""The scheduler: prepare queue, per-node concurrency, unusable nodes and fairness across backups."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from hypothesis import given
from hypothesis import strategies as st

from barge.control.naming import Fence
from coordinator.config import CoordinatorConfig
from coordinator.model import Phase
from coordinator.scheduler import (
    Admission,
    ItemKey,
    NodeState,
    Stage,
    Step,
    WorkItem,
    admit,
    fair_order,
    permits,
    prepare_queue_limit,
    work_item,
)
from tests.coordinator_world import T0, upload_cr


def item(name: str, stage: Stage, group: str = "", age: int = 0, node: str = "") -> WorkItem:
    return WorkItem(ItemKey("DataUpload", "velero", name), stage, group, T0 + timedelta(seconds=age), node)


def node(name: str, **labels: str) -> NodeState:
    return NodeState(name, tuple(sorted(labels.items())), agent_connected=True)


def names(admissions: tuple[Admission, ...], step: Step) -> list[str]:
    return [a.key.name for a in admissions if a.step is step]


def test_by_default_the_prepare_queue_holds_four_times_the_transfer_slots() -> None:
    """Three usable nodes, one transfer each: twelve exposed at a time, not the whole burst of 500."""
    items = [item(f"u{i}", Stage.WAITING, age=i) for i in range(500)]
    usable = [node("n1"), node("n2"), node("n3")]
    unusable = [replace(node("n4"), cordoned=True), replace(node("n5"), agent_connected=False)]
    accepted = names(admit(items, usable + unusable, CoordinatorConfig()), Step.ACCEPT)
    assert accepted == [f"u{i}" for i in range(12)]
    assert prepare_queue_limit((), CoordinatorConfig()) == 8  # no usable node yet: still some progress
    assert prepare_queue_limit((), CoordinatorConfig(prepare_queue_length=1000)) == 1000


def test_prepare_queue_counts_items_holding_an_exposure_without_moving_data() -> None:
    config = CoordinatorConfig(prepare_queue_length=3)
    items = [
        item("preparing", Stage.PREPARING),
        item("prepared", Stage.PREPARED, node="n1"),
        item("running", Stage.RUNNING, node="n1"),  # moving data: not in the queue
        item("done", Stage.DONE),
        *(item(f"w{i}", Stage.WAITING, age=i) for i in range(3)),
    ]
    assert names(admit(items, [], config), Step.ACCEPT) == ["w0"]


def test_full_prepare_queue_accepts_nothing() -> None:
    config = CoordinatorConfig(prepare_queue_length=1)
    items = [item("a", Stage.PREPARING), item("b", Stage.PREPARING), item("w", Stage.WAITING)]
    assert names(admit(items, [], config), Step.ACCEPT) == []


def test_round_robin_across_backups_so_a_big_backup_cannot_starve_a_small_one() -> None:
    big = [item(f"big{i}", Stage.WAITING, group="big", age=i) for i in range(10)]
    small = [item("small0", Stage.WAITING, group="small", age=50)]
    config = CoordinatorConfig(prepare_queue_length=2)
    assert names(admit([*big, *small], [], config), Step.ACCEPT) == ["big0", "small0"]


def test_fair_order_interleaves_groups_oldest_group_first() -> None:
    items = [
        item("b0", Stage.WAITING, group="b", age=1),
        item("a0", Stage.WAITING, group="a", age=2),
        item("b1", Stage.WAITING, group="b", age=3),
        item("a1", Stage.WAITING, group="a", age=4),
        item("b2", Stage.WAITING, group="b", age=5),
        item("c0", Stage.WAITING, group="", age=6),
        item("d0", Stage.WAITING, group="", age=7),
    ]
    assert [i.key.name for i in fair_order(items)] == ["b0", "a0", "c0", "d0", "b1", "a1", "b2"]


def test_per_node_concurrency_counts_running_work() -> None:
    config = CoordinatorConfig.from_dict({"loadConcurrency": {"globalConfig": 2}})
    items = [
        item("r", Stage.RUNNING, node="n1"),
        item("p1", Stage.PREPARED, node="n1", age=1),
        item("p2", Stage.PREPARED, node="n1", age=2),
        item("p3", Stage.PREPARED, node="n2", age=3),
    ]
    admissions = admit(items, [node("n1"), node("n2")], config)
    assert [(a.key.name, a.node) for a in admissions if a.step is Step.ASSIGN] == [("p1", "n1"), ("p3", "n2")]


def test_per_node_config_by_labels_smallest_matching_rule() -> None:
    config = CoordinatorConfig.from_dict(
        {
            "loadConcurrency": {
                "globalConfig": 1,
                "perNodeConfig": [
                    {"nodeSelector": {"matchLabels": {"size": "large"}}, "number": 3},
                    {"nodeSelector": {"matchLabels": {"zone": "slow"}}, "number": 2},
                ],
            }
        }
    )
    items = [
        item(f"p{i}", Stage.PREPARED, node=n, age=i) for i, n in enumerate(["big"] * 4 + ["slowbig"] * 4)
    ]
    admissions = admit(items, [node("big", size="large"), node("slowbig", size="large", zone="slow")], config)
    assigned = [a.node for a in admissions if a.step is Step.ASSIGN]
    assert assigned.count("big") == 3
    assert assigned.count("slowbig") == 2


def test_cordoned_agentless_and_unknown_nodes_get_nothing_new() -> None:
    nodes = [
        NodeState("cordoned", cordoned=True, agent_connected=True),
        NodeState("no-agent", agent_connected=False),
        node("good"),
    ]
    items = [item(n, Stage.PREPARED, node=n) for n in ("cordoned", "no-agent", "unknown", "good")]
    assert names(admit(items, nodes, CoordinatorConfig()), Step.ASSIGN) == ["good"]


def test_assignments_are_fair_across_restores_too() -> None:
    items = [
        *(item(f"big{i}", Stage.PREPARED, group="big", age=i, node="n1") for i in range(3)),
        item("small", Stage.PREPARED, group="small", age=10, node="n1"),
    ]
    config = CoordinatorConfig.from_dict({"loadConcurrency": {"globalConfig": 2}})
    assert names(admit(items, [node("n1")], config), Step.ASSIGN) == ["big0", "small"]


stages = st.sampled_from(list(Stage))
work_items = st.lists(
    st.builds(
        item,
        name=st.text("abcdef", min_size=1, max_size=4),
        stage=stages,
        group=st.sampled_from(["", "g1", "g2"]),
        age=st.integers(0, 100),
        node=st.sampled_from(["", "n1", "n2", "n3"]),
    ),
    max_size=30,
    unique_by=lambda i: i.key,
)


@given(items=work_items, limit=st.integers(1, 4), queue=st.none() | st.integers(1, 5))
def test_limits_are_never_exceeded(items: list[WorkItem], limit: int, queue: int | None) -> None:
    config = CoordinatorConfig.from_dict(
        {"loadConcurrency": {"globalConfig": limit}, "prepareQueueLength": queue}
    )
    nodes = [node("n1"), node("n2"), NodeState("n3", cordoned=True, agent_connected=True)]
    admissions = admit(items, nodes, config)
    for name in ("n1", "n2"):
        running = sum(1 for i in items if i.stage is Stage.RUNNING and i.node == name)
        assigned = sum(1 for a in admissions if a.step is Step.ASSIGN and a.node == name)
        assert assigned <= max(0, limit - running)
    assert not any(a.node == "n3" for a in admissions)
    if queue is not None:
        held = sum(1 for i in items if i.stage in (Stage.PREPARING, Stage.PREPARED))
        assert len(names(admissions, Step.ACCEPT)) <= max(0, queue - held)
    by_key = {i.key: i for i in items}
    for a in admissions:
        assert by_key[a.key].stage is (Stage.WAITING if a.step is Step.ACCEPT else Stage.PREPARED)
    assert admit(list(reversed(items)), list(reversed(nodes)), config) == admissions


def test_work_item_maps_phases_to_stages() -> None:
    cr = upload_cr()
    assert work_item(cr, T0).stage is Stage.WAITING
    assert work_item(cr, T0).group == "backup-1"
    assert work_item(replace(cr, phase=Phase.ACCEPTED), T0).stage is Stage.PREPARING
    prepared = replace(cr, phase=Phase.PREPARED, node="n1")
    assert (work_item(prepared, T0).stage, work_item(prepared, T0).node) == (Stage.PREPARED, "n1")
    assert work_item(prepared, T0, assigned=True).stage is Stage.RUNNING
    moving = replace(cr, phase=Phase.IN_PROGRESS, node="n1", fence=Fence(2, "n2"))
    assert (work_item(moving, T0).stage, work_item(moving, T0).node) == (Stage.RUNNING, "n2")
    assert work_item(replace(cr, phase=Phase.CANCELING), T0).stage is Stage.RUNNING
    assert work_item(replace(cr, phase=Phase.FAILED), T0).stage is Stage.DONE
    assert work_item(replace(cr, deleting=True), T0).stage is Stage.DONE


def test_a_small_backup_created_after_a_big_one_gets_every_other_slot() -> None:
    """What each backup already holds counts: one free slot at a time, the small backup catches up
    with the big one's head start, then they alternate; it never waits for all of the big one."""
    big = [item(f"big{i}", Stage.WAITING, group="big", age=i) for i in range(100)]
    small = [item(f"small{i}", Stage.WAITING, group="small", age=200 + i) for i in range(10)]
    running = [item(f"run{i}", Stage.RUNNING, group="big", node="n1") for i in range(2)]
    state = [*big, *small, *running]
    accepted: list[str] = []
    for limit in range(1, 9):  # the queue grows by one slot at a time; the accepted stay exposed
        (chosen,) = [a.key.name for a in admit(state, [], CoordinatorConfig(prepare_queue_length=limit))
                     if a.step is Step.ACCEPT]  # fmt: skip
        accepted.append(chosen)
        group = "big" if chosen.startswith("big") else "small"
        state = [i for i in state if i.key.name != chosen] + [item(chosen, Stage.PREPARING, group=group)]
    assert accepted == ["small0", "small1", "big0", "small2", "big1", "small3", "big2", "small4"]


def test_an_item_the_last_pass_admitted_keeps_its_slot_when_the_fair_order_changes() -> None:
    """The bench-scale run found two transfers on a node with loadConcurrency 1: the last pass gave
    the slot to one backup's item, whose assign write was still under way, and the next pass (the
    backups' counts had changed) gave the same slot to another backup's item."""
    n1 = node("n1")
    small = item("small-a", Stage.PREPARED, group="small", age=5, node="n1")
    mid = item("mid-a", Stage.PREPARED, group="mid", age=1, node="n1")
    elsewhere = [item(f"mid-run{i}", Stage.RUNNING, group="mid", node="n2") for i in range(2)]
    first = admit([small, mid, *elsewhere], [n1], CoordinatorConfig())
    assert names(first, Step.ASSIGN) == ["small-a"]  # mid already holds two running slots
    # mid's transfers elsewhere end: by the fair order alone, mid-a would now take n1's slot
    assert names(admit([small, mid], [n1], CoordinatorConfig()), Step.ASSIGN) == ["mid-a"]
    assert names(admit([small, mid], [n1], CoordinatorConfig(), first), Step.ASSIGN) == ["small-a"]


def test_an_admission_permits_only_the_step_it_was_made_for() -> None:
    """A pass admits a CR for its phase's next step; by the time it is reconciled it may have moved
    on, and an admission to accept must not let it take a transfer slot no pass counted."""
    key = ItemKey("DataUpload", "velero", "backup-1-abcde")
    to_accept, to_assign = Admission(key, Step.ACCEPT), Admission(key, Step.ASSIGN, "n1")
    new, prepared = upload_cr(phase=Phase.NEW), upload_cr(phase=Phase.PREPARED, node="n1")
    assert permits(to_accept, new)
    assert not permits(to_accept, prepared)
    assert permits(to_assign, prepared)
    assert not permits(to_assign, new)
    assert not permits(to_assign, replace(prepared, node="n2"))  # exposed again, elsewhere
    assert not permits(None, new)
    assert not permits(None, prepared)
