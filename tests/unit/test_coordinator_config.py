"""CoordinatorConfig: Velero's node-agent keys and Barge's own, defaults, and precise errors."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import yaml

from barge.errors import InvalidInput
from coordinator.config import (
    BackupPvcConfig,
    CoordinatorConfig,
    DeletedBackupsConfig,
    LabelSelector,
    PodResources,
    SelectorRequirement,
    format_go_duration,
    parse_go_duration,
)

VELERO_NODE_AGENT_CONFIG = """
loadConcurrency:
  globalConfig: 2
  perNodeConfig:
  - nodeSelector:
      matchLabels:
        kubernetes.io/hostname: node1
    number: 3
  - nodeSelector:
      matchLabels:
        beta.kubernetes.io/instance-type: Standard_B4ms
    number: 5
prepareQueueLength: 10
loadAffinity:
- nodeSelector:
    matchLabels:
      beta.kubernetes.io/instance-type: Standard_B4ms
    matchExpressions:
    - key: kubernetes.io/hostname
      values: [node-1, node-2]
      operator: In
- nodeSelector:
    matchLabels:
      zone: fast
  storageClass: fast-ssd
backupPVC:
  fast-ssd:
    storageClass: backup-ssd
    readOnly: true
    spcNoRelabeling: true
restorePVC:
  ignoreDelayBinding: true
podResources:
  cpuRequest: 100m
  cpuLimit: "1"
  memoryRequest: 128Mi
  memoryLimit: 1Gi
priorityClassName: backup-low
"""


def test_defaults() -> None:
    config = CoordinatorConfig.from_dict(None)
    assert config == CoordinatorConfig()
    assert config.load_concurrency.for_node({}) == 1
    assert config.prepare_queue_length is None
    assert config.prepare_timeout == timedelta(minutes=30)
    assert config.agent_grace_period == timedelta(seconds=60)
    assert config.drain_grace_period == timedelta(minutes=10)
    assert config.max_reexposures == 3
    assert config.backup_pvc_for("any") == BackupPvcConfig()
    assert config.affinity_for("any") is None


def test_velero_node_agent_config_parses_with_velero_meaning() -> None:
    config = CoordinatorConfig.from_dict(yaml.safe_load(VELERO_NODE_AGENT_CONFIG))
    concurrency = config.load_concurrency
    assert concurrency.for_node({"kubernetes.io/hostname": "node9"}) == 2
    assert concurrency.for_node({"kubernetes.io/hostname": "node1"}) == 3
    assert concurrency.for_node({"beta.kubernetes.io/instance-type": "Standard_B4ms"}) == 5
    both = {"kubernetes.io/hostname": "node1", "beta.kubernetes.io/instance-type": "Standard_B4ms"}
    assert concurrency.for_node(both) == 3  # Velero: the smallest matching number wins
    assert config.prepare_queue_length == 10
    assert config.backup_pvc_for("fast-ssd") == BackupPvcConfig("backup-ssd", True, True)
    assert config.restore_pvc.ignore_delay_binding is True
    assert config.pod_resources == PodResources("100m", "1", "128Mi", "1Gi")
    assert config.priority_class_name == "backup-low"


def test_load_affinity_prefers_the_storage_class_rule() -> None:
    config = CoordinatorConfig.from_dict(yaml.safe_load(VELERO_NODE_AGENT_CONFIG))
    assert config.affinity_for("fast-ssd") == LabelSelector((("zone", "fast"),))
    general = config.affinity_for("standard")
    assert general == LabelSelector(
        (("beta.kubernetes.io/instance-type", "Standard_B4ms"),),
        (SelectorRequirement("kubernetes.io/hostname", "In", ("node-1", "node-2")),),
    )
    assert general.matches(
        {"beta.kubernetes.io/instance-type": "Standard_B4ms", "kubernetes.io/hostname": "node-2"}
    )
    assert not general.matches(
        {"beta.kubernetes.io/instance-type": "Standard_B4ms", "kubernetes.io/hostname": "x"}
    )


@pytest.mark.parametrize(
    ("operator", "labels", "matches"),
    [
        ("In", {"k": "a"}, True),
        ("In", {"k": "z"}, False),
        ("NotIn", {"k": "z"}, True),
        ("NotIn", {"k": "a"}, False),
        ("Exists", {"k": "z"}, True),
        ("Exists", {}, False),
        ("DoesNotExist", {}, True),
        ("DoesNotExist", {"k": "a"}, False),
    ],
)
def test_selector_operators(operator: str, labels: dict[str, str], matches: bool) -> None:
    assert SelectorRequirement("k", operator, ("a", "b")).matches(labels) is matches


def test_barge_keys() -> None:
    config = CoordinatorConfig.from_dict(
        {
            "prepareTimeout": "5m",
            "agentGracePeriod": "1m30s",
            "drainGracePeriod": "1h",
            "maxReexposures": 0,
            "image": "example.org/barge:1.0",
        }
    )
    assert config.prepare_timeout == timedelta(minutes=5)
    assert config.agent_grace_period == timedelta(seconds=90)
    assert config.drain_grace_period == timedelta(hours=1)
    assert config.max_reexposures == 0
    assert config.image == "example.org/barge:1.0"


def test_deleted_backups_keys() -> None:
    defaults = DeletedBackupsConfig(timedelta(minutes=10), timedelta(hours=1))
    assert CoordinatorConfig().deleted_backups == defaults
    config = CoordinatorConfig.from_dict({"deletedBackups": {"checkInterval": "0", "gracePeriod": "30s"}})
    assert config.deleted_backups == DeletedBackupsConfig(timedelta(0), timedelta(seconds=30))
    with pytest.raises(InvalidInput, match=r"deletedBackups.grace: unknown key"):
        CoordinatorConfig.from_dict({"deletedBackups": {"grace": "1h"}})


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"bogus": 1}, "bogus: unknown key"),
        (
            {"loadConcurrency": {"globalConfig": "2"}},
            "loadConcurrency.globalConfig: expected an integer, got a string",
        ),
        (
            {"loadConcurrency": {"globalConfig": True}},
            "loadConcurrency.globalConfig: expected an integer, got a boolean",
        ),
        (
            {"loadConcurrency": {"globalConfig": 0}},
            "loadConcurrency.globalConfig: expected an integer >= 1, got 0",
        ),
        (
            {"loadConcurrency": {"perNodeConfig": [{"number": 1}, {"number": "x"}]}},
            "loadConcurrency.perNodeConfig[1].number: expected an integer, got a string",
        ),
        (
            {
                "loadConcurrency": {
                    "perNodeConfig": [{"nodeSelector": {"matchLabels": {"a": 1}}, "number": 1}]
                }
            },
            "loadConcurrency.perNodeConfig[0].nodeSelector.matchLabels.a: expected a string, got an integer",
        ),
        (
            {"loadConcurrency": {"perNodeConfig": {}}},
            "loadConcurrency.perNodeConfig: expected a list, got a mapping",
        ),
        (
            {"loadAffinity": [{"nodeSelector": {"matchLabel": {}}}]},
            "loadAffinity[0].nodeSelector.matchLabel: unknown key",
        ),
        (
            {"loadAffinity": [{"nodeSelector": {"matchExpressions": [{"key": "k", "operator": "Is"}]}}]},
            "loadAffinity[0].nodeSelector.matchExpressions[0].operator: expected one of In, NotIn",
        ),
        (
            {"backupPVC": {"sc": {"readOnly": "yes"}}},
            "backupPVC.sc.readOnly: expected a boolean (true/false), got a string",
        ),
        ({"backupPVC": {"sc": {"storageclass": "x"}}}, "backupPVC.sc.storageclass: unknown key"),
        ({"restorePVC": []}, "restorePVC: expected a mapping, got a list"),
        ({"podResources": {"cpuRequest": 1}}, "podResources.cpuRequest: expected a string, got an integer"),
        ({"prepareQueueLength": -1}, "prepareQueueLength: expected an integer >= 0, got -1"),
        ({"prepareTimeout": "30 minutes"}, "prepareTimeout: '30 minutes' is not a duration"),
        ({"prepareTimeout": 30}, "prepareTimeout: expected a string, got an integer"),
        ({"maxReexposures": -1}, "maxReexposures: expected an integer >= 0, got -1"),
        ({"restorePVC": {"ignoreDelayBindin": True}}, "restorePVC.ignoreDelayBindin: unknown key"),
        ([1], "the configuration: expected a mapping, got a list"),
    ],
)
def test_bad_input_names_the_key_and_the_expected_type(data: Any, message: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        CoordinatorConfig.from_dict(data)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("10m0s", 600),
        ("1h30m", 5400),
        ("4h", 14400),
        ("1.5s", 1.5),
        ("0", 0),
        ("2h0m0s", 7200),
        ("500ms", 0.5),
    ],
)
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_go_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "10", "10x", "-1m", "1h 30m", "m", "1h30", "h1"])
def test_bad_go_durations(text: str) -> None:
    with pytest.raises(InvalidInput, match="is not a duration"):
        parse_go_duration(text)


@pytest.mark.parametrize(
    ("seconds", "text"), [(14400, "4h0m0s"), (600, "10m0s"), (45, "45s"), (5430, "1h30m30s"), (0, "0s")]
)
def test_format_go_duration_round_trips(seconds: int, text: str) -> None:
    assert format_go_duration(timedelta(seconds=seconds)) == text
    assert parse_go_duration(text) == timedelta(seconds=seconds)
