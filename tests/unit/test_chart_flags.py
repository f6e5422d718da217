"""The chart and the binaries agree: every argument the chart renders parses, with the meaning meant."""

from __future__ import annotations

from typing import Any

from agent.main import build_parser as agent_parser
from coordinator.main import build_parser as coordinator_parser
from devenv.helm import Helm


def container(kind: str, values: dict[str, Any] | None = None) -> dict[str, Any]:
    docs = Helm.installed().template(values=values)
    workload = next(d for d in docs if d.get("kind") == kind)
    first: dict[str, Any] = workload["spec"]["template"]["spec"]["containers"][0]
    return first


def test_the_coordinator_accepts_every_argument_the_chart_gives_it() -> None:
    spec = container("Deployment")
    assert spec["command"] == ["barge-coordinator"]
    args = coordinator_parser().parse_args(spec["args"])
    assert args.watch_namespace == "velero"
    assert args.agent_service_account == "barge/barge-agent"
    assert (args.grpc_port, args.metrics_port, args.health_port) == (8443, 8080, 8081)
    assert args.config == "/etc/barge/config.yaml"
    assert args.repository_password_secret == "barge-repository-password/repository-password"
    assert args.generate_repository_password is True
    assert args.lease_duration == coordinator_parser().get_default("lease_duration")
    tuned = container("Deployment", {"coordinator": {"leaseDuration": 8}})
    assert coordinator_parser().parse_args(tuned["args"]).lease_duration == 8.0


def test_the_agent_accepts_every_argument_the_chart_gives_it() -> None:
    spec = container("DaemonSet")
    assert spec["command"] == ["barge-agent"]
    args = agent_parser().parse_args(spec["args"])
    assert args.coordinator == "barge-coordinator.barge.svc:8443"
    assert args.token_file == "/var/run/secrets/barge/token"
    assert args.kubelet_root == "/var/lib/kubelet"
    assert args.node_name == "$(NODE_NAME)"  # the kubelet expands it from the downward API env var
    assert args.repository_password_secret == "barge-repository-password/repository-password"
    assert args.allow_velero_default_password is False
    assert args.compression == "zstd"
    assert args.max_upload_rate == 0  # no limit unless asked
    tuned = container("DaemonSet", {"agent": {"maxUploadRate": "64Mi"}})
    assert agent_parser().parse_args(tuned["args"]).max_upload_rate == 64 * 2**20


def test_the_rendered_coordinator_config_is_valid() -> None:
    import yaml

    from coordinator.config import CoordinatorConfig

    for values in (None, {"config": {"loadConcurrency": {"globalConfig": 3}, "prepareTimeout": "1h"}}):
        docs = Helm.installed().template(values=values)
        config_map = next(
            d for d in docs if d.get("kind") == "ConfigMap" and "config.yaml" in d.get("data", {})
        )
        config = CoordinatorConfig.from_dict(yaml.safe_load(config_map["data"]["config.yaml"]))
        assert config.load_concurrency.for_node({}) >= 1


def test_the_charts_maintenance_values_mean_what_the_coordinator_defaults_mean() -> None:
    """The e2e tests set ``maintenance`` in the coordinator's config file; this is the same file
    the chart renders from its values, with the same defaults."""
    from datetime import timedelta

    import yaml

    from coordinator.config import CoordinatorConfig
    from coordinator.maintenance import MaintenanceConfig

    def rendered(values: dict[str, Any] | None) -> MaintenanceConfig:
        docs = Helm.installed().template(values=values)
        config_map = next(d for d in docs if "config.yaml" in d.get("data", {}))
        return CoordinatorConfig.from_dict(yaml.safe_load(config_map["data"]["config.yaml"])).maintenance

    assert rendered(None) == MaintenanceConfig()
    tuned = {"gcInterval": "6h", "checkInterval": "0", "checkReadDataPercent": 2.5, "timeout": "30m"}
    assert rendered({"config": {"maintenance": tuned}}) == MaintenanceConfig(
        gc_interval=timedelta(hours=6),
        check_interval=timedelta(0),
        read_data_fraction=0.025,
        timeout=timedelta(minutes=30),
    )
