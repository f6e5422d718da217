"""charts/barge rendered by the pinned helm: lint, every values set, the schema, the RBAC shape.

No cluster is needed (`helm template`); tests/integration/test_chart.py installs the chart into the
real API server and checks the permissions with SubjectAccessReviews.
"""

from __future__ import annotations

import base64
import http.server
import json
import re
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import yaml
from cryptography import x509

from agent.metrics import AgentMetrics
from coordinator.metrics import CoordinatorMetrics
from devenv.crds import load_crd
from devenv.helm import CHART_DIR, Helm, HelmFailed

REPO = CHART_DIR.parents[1]
RELEASE, NAMESPACE = "barge", "backup-system"
COORDINATOR, AGENT = "barge-coordinator", "barge-agent"
COORDINATOR_ADDRESS = f"{COORDINATOR}.{NAMESPACE}.svc"
RBAC_KINDS = {"Role", "ClusterRole"}

VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "cert-manager": {"tls": {"mode": "certManager", "certManager": {"issuerRef": {"name": "barge-ca"}}}},
    "existing-secret": {"tls": {"mode": "existingSecret", "existingSecret": "my-barge-tls"}},
    "crds-on": {"crds": {"install": True, "installSnapshotCRDs": True}},
    "monitoring-on": {
        "metrics": {
            "serviceMonitor": {"enabled": True, "labels": {"release": "prom"}},
            "prometheusRule": {"enabled": True},
            "grafanaDashboard": {"enabled": True},
        }
    },
    "network-policy": {
        "networkPolicy": {"metricsFrom": [{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}]}
    },
    "block-volumes": {"agent": {"privileged": True}, "coordinator": {"replicas": 1}},
    "tuned": {
        "veleroNamespace": "velero-prod",
        "image": {"repository": "registry.example/barge", "tag": "1.2.3", "pullPolicy": "Always"},
        "imagePullSecrets": [{"name": "regcred"}],
        "logLevel": "debug",
        "logFormat": "console",
        "agent": {
            "maxConcurrent": 4,
            "maxUploadRate": "100Mi",
            "priorityClassName": "backup",
            "nodeSelector": {"pool": "data"},
        },
        "config": {
            "loadConcurrency": {
                "globalConfig": 2,
                "perNodeConfig": [{"nodeSelector": {"matchLabels": {"big": "true"}}, "number": 8}],
            },
            "podResources": {"cpuRequest": "50m", "memoryLimit": "1Gi"},
            "drainGracePeriod": "30m",
            "backupPVC": {"fast": {"storageClass": "fast-ro", "readOnly": True, "spcNoRelabeling": True}},
        },
    },
}


@pytest.fixture(scope="module")
def helm() -> Helm:
    return Helm.installed()


@pytest.fixture(scope="module")
def rendered(helm: Helm) -> dict[str, list[dict[str, Any]]]:
    return {name: helm.template(values, RELEASE, NAMESPACE) for name, values in VALUE_SETS.items()}


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [obj for obj in objects if obj["kind"] == kind]


def one(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [obj for obj in by_kind(objects, kind) if name is None or obj["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def container(workload: dict[str, Any]) -> dict[str, Any]:
    containers = workload["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


def flags(workload: dict[str, Any]) -> dict[str, str]:
    """The container's ``--name=value`` arguments as a dict (each flag given exactly once; a bare
    switch ``--name`` has the value "")."""
    args = container(workload)["args"]
    pairs = [[*arg.removeprefix("--").split("=", 1), ""][:2] for arg in args]
    assert all(arg.startswith("--") for arg in args)
    result = dict(pairs)
    assert len(result) == len(args), f"a flag is repeated in {args}"
    return result


def volumes(workload: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {volume["name"]: volume for volume in workload["spec"]["template"]["spec"]["volumes"]}


def rules_of(objects: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for obj in objects:
        if obj["kind"] in RBAC_KINDS:
            for rule in obj["rules"]:
                yield obj["metadata"]["name"], rule


def test_chart_app_version_is_the_python_package_version() -> None:
    chart = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert chart["appVersion"] == pyproject["project"]["version"]


def test_chart_commands_are_console_scripts_the_image_installs(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    dockerfile = (REPO / "Dockerfile").read_text()
    for kind in ("Deployment", "DaemonSet"):
        (command,) = container(one(rendered["defaults"], kind))["command"]
        assert command in scripts, f"{command} is not a [project.scripts] entry"
        assert f"test -x /opt/barge/bin/{command}" in dockerfile, f"the image build does not check {command}"


def test_the_chart_holds_the_crds_the_tests_install() -> None:
    """One copy of each CRD: the chart's (crds.install); the test environment loads those."""
    copies = sorted((CHART_DIR / "files" / "crds").glob("*.yaml"))
    assert [path.name for path in copies] == [
        "snapshot.storage.k8s.io_volumesnapshotclasses.yaml",
        "snapshot.storage.k8s.io_volumesnapshotcontents.yaml",
        "snapshot.storage.k8s.io_volumesnapshots.yaml",
        "velero.io_backupstoragelocations.yaml",
        "velero.io_datadownloads.yaml",
        "velero.io_datauploads.yaml",
    ]
    for path in copies:
        assert load_crd(path.name) == yaml.safe_load(path.read_text()), path.name


@pytest.mark.parametrize("values_set", sorted(VALUE_SETS))
def test_helm_lint_strict_passes(helm: Helm, values_set: str) -> None:
    result = helm.run(
        "lint", "--strict", str(CHART_DIR), "--namespace", NAMESPACE, values=VALUE_SETS[values_set]
    )
    assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout


def test_defaults_render_the_expected_objects(rendered: dict[str, list[dict[str, Any]]]) -> None:
    kinds = sorted((obj["kind"], obj["metadata"]["name"]) for obj in rendered["defaults"])
    assert kinds == sorted(
        [
            ("ServiceAccount", COORDINATOR),
            ("ServiceAccount", AGENT),
            ("ConfigMap", f"{COORDINATOR}-config"),
            ("Secret", f"{COORDINATOR}-tls"),
            ("ClusterRole", COORDINATOR),
            ("ClusterRoleBinding", COORDINATOR),
            ("Role", COORDINATOR),
            ("RoleBinding", COORDINATOR),
            ("Role", f"{COORDINATOR}-leader-election"),
            ("RoleBinding", f"{COORDINATOR}-leader-election"),
            ("Role", AGENT),
            ("RoleBinding", AGENT),
            ("Service", COORDINATOR),
            ("Service", f"{AGENT}-metrics"),
            ("Deployment", COORDINATOR),
            ("DaemonSet", AGENT),
            ("PodDisruptionBudget", COORDINATOR),
            ("NetworkPolicy", COORDINATOR),
            ("NetworkPolicy", AGENT),
            ("Pod", "barge-test-agents-connected"),
        ]
    )


def test_coordinator_follows_the_command_line_contract(rendered: dict[str, list[dict[str, Any]]]) -> None:
    deployment = one(rendered["defaults"], "Deployment")
    assert container(deployment)["command"] == ["barge-coordinator"]
    assert flags(deployment) == {
        "watch-namespace": "velero",
        "grpc-port": "8443",
        "metrics-port": "8080",
        "health-port": "8081",
        "tls-cert-file": "/etc/barge/tls/tls.crt",
        "tls-key-file": "/etc/barge/tls/tls.key",
        "agent-service-account": f"{NAMESPACE}/{AGENT}",
        "token-audience": "barge",
        "config": "/etc/barge/config.yaml",
        "leader-election-namespace": NAMESPACE,
        "leader-election-id": "barge-coordinator",
        "lease-duration": "10",
        "repository-password-secret": "barge-repository-password/repository-password",
        "generate-repository-password": "",
        "log-level": "info",
        "log-format": "json",
    }
    env = {item["name"]: item["valueFrom"]["fieldRef"]["fieldPath"] for item in container(deployment)["env"]}
    assert env == {"POD_NAMESPACE": "metadata.namespace", "POD_NAME": "metadata.name"}


def test_coordinator_is_highly_available(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objects = rendered["defaults"]
    deployment = one(objects, "Deployment")
    pod = deployment["spec"]["template"]
    assert deployment["spec"]["replicas"] == 2
    anti = pod["spec"]["affinity"]["podAntiAffinity"]
    assert "requiredDuringSchedulingIgnoredDuringExecution" not in anti
    term = anti["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    pdb = one(objects, "PodDisruptionBudget")
    assert pdb["spec"] == {"minAvailable": 1, "selector": deployment["spec"]["selector"]}
    probes = container(deployment)
    assert probes["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert probes["livenessProbe"]["timeoutSeconds"] >= 5  # a late answer under load is no death
    assert probes["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
    assert pod["metadata"]["labels"] == deployment["spec"]["selector"]["matchLabels"]


def test_single_coordinator_gets_no_disruption_budget(rendered: dict[str, list[dict[str, Any]]]) -> None:
    assert one(rendered["block-volumes"], "Deployment")["spec"]["replicas"] == 1
    assert not by_kind(rendered["block-volumes"], "PodDisruptionBudget")


def test_privileged_agent_for_block_volumes_may_escalate_consistently(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    security = container(one(rendered["block-volumes"], "DaemonSet"))["securityContext"]
    assert security["privileged"] is True
    assert security["allowPrivilegeEscalation"] is True, "the API server rejects privileged without it"
    host_paths = {
        v["hostPath"]["path"]
        for v in volumes(one(rendered["block-volumes"], "DaemonSet")).values()
        if "hostPath" in v
    }
    assert host_paths == {"/var/lib/kubelet", "/var/cache/barge"}, "Block volumes need no /dev mount"


def test_config_file_mirrors_the_values_and_defaults_the_exposer_image(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    config = yaml.safe_load(one(rendered["tuned"], "ConfigMap")["data"]["config.yaml"])
    tuned = VALUE_SETS["tuned"]["config"]
    assert config["loadConcurrency"] == tuned["loadConcurrency"]
    assert config["backupPVC"] == tuned["backupPVC"]
    assert config["podResources"] == {
        "cpuRequest": "50m",
        "cpuLimit": "100m",
        "memoryRequest": "16Mi",
        "memoryLimit": "1Gi",
    }
    assert config["drainGracePeriod"] == "30m"
    assert config["image"] == "registry.example/barge:1.2.3"
    assert "repositoryPasswordSecret" not in config  # the agents' settings: passed as their flags
    assert "repository" not in config
    deployment = one(rendered["tuned"], "Deployment")
    mount = next(m for m in container(deployment)["volumeMounts"] if m["name"] == "config")
    assert mount == {
        "name": "config",
        "mountPath": "/etc/barge/config.yaml",
        "subPath": "config.yaml",
        "readOnly": True,
    }
    assert volumes(deployment)["config"]["configMap"]["name"] == f"{COORDINATOR}-config"


def test_config_checksum_rolls_the_coordinator_only_on_config_change(helm: Helm) -> None:
    def checksum(values: dict[str, Any]) -> str:
        deployment = one(helm.template(values, RELEASE, NAMESPACE), "Deployment")
        return str(deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"])

    base = checksum({})
    assert re.fullmatch(r"[0-9a-f]{64}", base)
    assert checksum({"agent": {"maxConcurrent": 3}}) == base
    assert checksum({"config": {"maxReexposures": 7}}) != base


def test_agent_follows_the_command_line_contract(rendered: dict[str, list[dict[str, Any]]]) -> None:
    daemonset = one(rendered["tuned"], "DaemonSet")
    assert container(daemonset)["command"] == ["barge-agent"]
    assert flags(daemonset) == {
        "node-name": "$(NODE_NAME)",
        "coordinator": f"{COORDINATOR_ADDRESS}:8443",
        "ca-file": "/etc/barge/ca/ca.crt",
        "token-file": "/var/run/secrets/barge/token",
        "kubelet-root": "/var/lib/kubelet",
        "metrics-port": "8080",
        "health-port": "8081",
        "max-concurrent": "4",
        "max-upload-rate": "100Mi",
        "cache-dir": "/var/cache/barge",
        "repository-password-secret": "barge-repository-password/repository-password",
        "compression": "zstd",
        "log-level": "debug",
        "log-format": "console",
    }
    env = {item["name"]: item["valueFrom"]["fieldRef"]["fieldPath"] for item in container(daemonset)["env"]}
    assert env["NODE_NAME"] == "spec.nodeName"
    pod = daemonset["spec"]["template"]["spec"]
    assert pod["priorityClassName"] == "backup"
    assert pod["nodeSelector"] == {"pool": "data"}
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert container(daemonset)["image"] == "registry.example/barge:1.2.3"
    assert container(daemonset)["imagePullPolicy"] == "Always"


def test_agent_host_access_is_only_the_kubelet_root_and_the_cache(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    daemonset = one(rendered["defaults"], "DaemonSet")
    host_paths = {name: v["hostPath"] for name, v in volumes(daemonset).items() if "hostPath" in v}
    assert host_paths == {
        "kubelet-root": {"path": "/var/lib/kubelet", "type": "Directory"},
        "cache": {"path": "/var/cache/barge", "type": "DirectoryOrCreate"},
    }
    mounts = {m["name"]: m for m in container(daemonset)["volumeMounts"]}
    assert mounts["kubelet-root"]["mountPropagation"] == "HostToContainer"
    assert mounts["coordinator-token"]["readOnly"] is True
    assert mounts["coordinator-ca"]["readOnly"] is True
    pod = daemonset["spec"]["template"]["spec"]
    assert pod["tolerations"] == [{"operator": "Exists"}]
    assert "hostNetwork" not in pod
    assert "hostPID" not in pod
    security = container(daemonset)["securityContext"]
    assert security["privileged"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert "SYS_ADMIN" not in security["capabilities"]["add"]
    assert daemonset["spec"]["updateStrategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 1},
    }


def test_agent_token_is_projected_for_the_coordinator_audience(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    daemonset = one(rendered["defaults"], "DaemonSet")
    sources = volumes(daemonset)["coordinator-token"]["projected"]["sources"]
    assert sources == [
        {"serviceAccountToken": {"path": "token", "audience": "barge", "expirationSeconds": 3600}}
    ]
    assert daemonset["spec"]["template"]["spec"]["serviceAccountName"] == AGENT
    ca = volumes(daemonset)["coordinator-ca"]["secret"]
    assert ca["items"] == [{"key": "ca.crt", "path": "ca.crt"}], "agents must not get the private key"


def test_generated_certificate_is_signed_by_its_ca_for_the_address_agents_dial(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    secret = one(rendered["defaults"], "Secret", f"{COORDINATOR}-tls")
    assert secret["type"] == "kubernetes.io/tls"
    ca = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["ca.crt"]))
    cert = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))
    cert.verify_directly_issued_by(ca)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert COORDINATOR_ADDRESS in names.get_values_for_type(x509.DNSName)
    coordinator_tls = volumes(one(rendered["defaults"], "Deployment"))["tls"]["secret"]
    assert coordinator_tls["secretName"] == secret["metadata"]["name"]


def test_cert_manager_mode_requests_a_certificate_instead(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objects = rendered["cert-manager"]
    assert not by_kind(objects, "Secret")
    certificate = one(objects, "Certificate")
    assert certificate["apiVersion"] == "cert-manager.io/v1"
    assert certificate["spec"]["issuerRef"] == {
        "name": "barge-ca",
        "kind": "Issuer",
        "group": "cert-manager.io",
    }
    assert COORDINATOR_ADDRESS in certificate["spec"]["dnsNames"]
    secret_name = certificate["spec"]["secretName"]
    assert volumes(one(objects, "Deployment"))["tls"]["secret"]["secretName"] == secret_name
    assert volumes(one(objects, "DaemonSet"))["coordinator-ca"]["secret"]["secretName"] == secret_name


def test_existing_secret_mode_renders_no_certificate_and_mounts_that_secret(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    objects = rendered["existing-secret"]
    assert not by_kind(objects, "Secret")
    assert not by_kind(objects, "Certificate")
    assert volumes(one(objects, "Deployment"))["tls"]["secret"]["secretName"] == "my-barge-tls"
    assert volumes(one(objects, "DaemonSet"))["coordinator-ca"]["secret"]["secretName"] == "my-barge-tls"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"tls": {"mode": "certManager"}},
            "tls.certManager.issuerRef.name is required when tls.mode is certManager",
        ),
        (
            {"tls": {"mode": "existingSecret"}},
            "tls.existingSecret is required when tls.mode is existingSecret",
        ),
        (
            {"serviceAccount": {"agent": {"create": False}}},
            "serviceAccount.agent.name is required when serviceAccount.agent.create is false",
        ),
    ],
)
def test_missing_companion_values_fail_with_what_to_set(
    helm: Helm, values: dict[str, Any], message: str
) -> None:
    with pytest.raises(HelmFailed, match=re.escape(message)):
        helm.template(values, RELEASE, NAMESPACE)


def test_crds_are_off_by_default_and_kept_on_uninstall_when_on(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    for name, objects in rendered.items():
        if name != "crds-on":
            assert not by_kind(objects, "CustomResourceDefinition"), name
    crds = by_kind(rendered["crds-on"], "CustomResourceDefinition")
    package = {
        crd["metadata"]["name"]: crd
        for crd in (yaml.safe_load(p.read_text()) for p in (CHART_DIR / "files" / "crds").glob("*.yaml"))
    }
    assert sorted(crd["metadata"]["name"] for crd in crds) == sorted(package)
    for crd in crds:
        assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        assert crd["spec"] == package[crd["metadata"]["name"]]["spec"]


def test_monitoring_objects_use_barge_metric_names(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objects = rendered["monitoring-on"]
    monitors = by_kind(objects, "ServiceMonitor")
    services = {svc["metadata"]["name"]: svc for svc in by_kind(objects, "Service")}
    assert len(monitors) == 2
    for monitor in monitors:
        assert monitor["metadata"]["labels"]["release"] == "prom"
        selected = [
            svc
            for svc in services.values()
            if monitor["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
        ]
        assert len(selected) == 1
        assert "metrics" in {port["name"] for port in selected[0]["spec"]["ports"]}
    rules = one(objects, "PrometheusRule")["spec"]["groups"][0]["rules"]
    assert {rule["alert"] for rule in rules} >= {
        "BargeNoAgentsConnected",
        "BargeNoLeader",
        "BargeDataMovementStuck",
        "BargeThroughputCollapsed",
        "BargeRepositoryErrors",
    }
    for rule in rules:
        assert rule["labels"]["severity"] in ("warning", "critical"), rule
        assert rule["annotations"]["runbook_url"].endswith(f"#{rule['alert'].lower()}"), rule
    alert_metrics = {m for rule in rules for m in re.findall(r"\b([a-z_]+)\{", rule["expr"])}
    assert alert_metrics - {"up"} <= exported_metric_names(), alert_metrics - exported_metric_names()
    dashboard_map = one(objects, "ConfigMap", "barge-dashboard")
    assert dashboard_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(dashboard_map["data"]["barge.json"])
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    metrics = {m for expr in exprs for m in re.findall(r"\b([a-z_]+)\{", expr)}
    assert metrics
    assert metrics <= exported_metric_names(), metrics - exported_metric_names()


def exported_metric_names() -> set[str]:
    """Every series name the coordinator and the agent export (histograms: _bucket/_sum/_count)."""
    coordinator = CoordinatorMetrics()
    coordinator.watch_items(list, lambda: datetime.now(UTC))
    registries = [coordinator.registry, AgentMetrics("node-a").registry]
    names = {f"{family.name}{suffix}" for r in registries for family in r.collect()
             for suffix in ("", "_total", "_bucket", "_sum", "_count")}  # fmt: skip
    return {name for name in names if name.startswith("barge_")}


def ingress_by_port(policy: dict[str, Any]) -> dict[str, dict[str, Any]]:
    rules = policy["spec"]["ingress"]
    assert all(len(rule["ports"]) == 1 and rule["ports"][0]["protocol"] == "TCP" for rule in rules)
    return {rule["ports"][0]["port"]: rule for rule in rules}


@pytest.mark.parametrize("values_set", ["defaults", "network-policy"])
def test_network_policy_lets_only_agents_reach_grpc(
    rendered: dict[str, list[dict[str, Any]]], values_set: str
) -> None:
    """On by default: the coordinator's gRPC port admits agent pods alone, an agent admits nothing
    but metrics scrapes (probes come from the pod's own node, which a policy never isolates)."""
    objects = rendered[values_set]
    coordinator = one(objects, "NetworkPolicy", COORDINATOR)
    agent = one(objects, "NetworkPolicy", AGENT)
    assert coordinator["spec"]["podSelector"]["matchLabels"] == selector_of(one(objects, "Deployment"))
    assert agent["spec"]["podSelector"]["matchLabels"] == selector_of(one(objects, "DaemonSet"))
    assert (coordinator["spec"]["policyTypes"], agent["spec"]["policyTypes"]) == (["Ingress"], ["Ingress"])
    rules = ingress_by_port(coordinator)
    assert set(rules) == {"grpc", "metrics"}
    agent_labels = one(objects, "DaemonSet")["spec"]["template"]["metadata"]["labels"]
    assert rules["grpc"]["from"] == [{"podSelector": {"matchLabels": agent_labels}}]
    assert set(ingress_by_port(agent)) == {"metrics"}


def test_metrics_are_open_to_any_scraper_until_metrics_from_names_them(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    for name in (COORDINATOR, AGENT):
        assert "from" not in ingress_by_port(one(rendered["defaults"], "NetworkPolicy", name))["metrics"]
    monitoring = {"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}
    objects = rendered["network-policy"]
    test_pod = {"podSelector": {"matchLabels": selector_of(one(objects, "Pod"))}}
    coordinator_metrics = ingress_by_port(one(objects, "NetworkPolicy", COORDINATOR))["metrics"]
    assert coordinator_metrics["from"] == [test_pod, monitoring]  # `helm test` reads the coordinator's
    assert ingress_by_port(one(objects, "NetworkPolicy", AGENT))["metrics"]["from"] == [monitoring]


def test_network_policy_can_be_turned_off(helm: Helm) -> None:
    objects = helm.template({"networkPolicy": {"enabled": False}}, RELEASE, NAMESPACE)
    assert by_kind(objects, "NetworkPolicy") == []


def selector_of(workload: dict[str, Any]) -> dict[str, str]:
    """The labels that select a workload's pods (a bare Pod: its component's selector labels)."""
    if workload["kind"] == "Pod":
        labels = workload["metadata"]["labels"]
        keys = ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/component")
        return {key: labels[key] for key in keys}
    return dict(workload["spec"]["selector"]["matchLabels"])


def test_test_hook_checks_connected_agents(rendered: dict[str, list[dict[str, Any]]]) -> None:
    pod = one(rendered["defaults"], "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    check = pod["spec"]["containers"][0]
    assert "barge_coordinator_agents_connected" in check["command"][-1]
    env = {item["name"]: item["value"] for item in check["env"]}
    assert env["METRICS_URL"] == f"http://{COORDINATOR_ADDRESS}:8080/metrics"


def serve_metrics(body: str) -> http.server.ThreadingHTTPServer:
    """A loopback HTTP server answering every GET with ``body`` (a Prometheus text page)."""

    class Metrics(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            payload = body.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Metrics)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.mark.parametrize(
    ("page", "passes"),
    [
        ("# TYPE barge_coordinator_agents_connected gauge\nbarge_coordinator_agents_connected 3.0\n", True),
        ("barge_coordinator_agents_connected 0.0\n", False),
        ("barge_coordinator_up 1\n", False),
    ],
)
def test_test_hook_script_passes_only_with_a_connected_agent(
    rendered: dict[str, list[dict[str, Any]]], page: str, passes: bool
) -> None:
    script = one(rendered["defaults"], "Pod")["spec"]["containers"][0]["command"][-1]
    server = serve_metrics(page)
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/metrics"
        env = {"METRICS_URL": url, "TIMEOUT_SECONDS": "0.5"}
        done = subprocess.run(
            [sys.executable, "-c", script], check=False, env=env, capture_output=True, text=True, timeout=60
        )
    finally:
        server.shutdown()
        server.server_close()
    assert (done.returncode == 0) is passes, done.stdout + done.stderr
    if not passes:
        assert "no agent connected to the coordinator" in done.stderr


@pytest.mark.parametrize("values_set", sorted(VALUE_SETS))
def test_rbac_has_no_wildcards(rendered: dict[str, list[dict[str, Any]]], values_set: str) -> None:
    rules = list(rules_of(rendered[values_set]))
    assert rules
    for role, rule in rules:
        assert "nonResourceURLs" not in rule, role
        for field in ("apiGroups", "resources", "verbs", "resourceNames"):
            assert "*" not in rule.get(field, []), f"{role}: wildcard in {field}: {rule}"
            assert all("*" not in item for item in rule.get(field, [])), f"{role}: {rule}"
        assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"]), f"{role}: {rule}"


def test_agent_has_no_cluster_wide_permission(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objects = rendered["defaults"]
    for binding in by_kind(objects, "ClusterRoleBinding"):
        assert all(subject["name"] != AGENT for subject in binding["subjects"]), binding
    agent_bindings = [b for b in by_kind(objects, "RoleBinding") if b["subjects"][0]["name"] == AGENT]
    assert [(b["metadata"]["namespace"], b["roleRef"]["kind"]) for b in agent_bindings] == [
        ("velero", "Role")
    ]


def test_coordinator_snapshot_permissions_are_what_the_exposer_does(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    """Snapshots: read and delete VolumeSnapshots anywhere (Velero leaves the source in the app's
    namespace to the mover), create them only in Velero's namespace (the clone), and on the
    cluster-scoped contents create (clone), patch (source to Retain) and delete."""
    objects = rendered["tuned"]
    granted = sorted(
        (obj["kind"], obj["metadata"].get("namespace", ""), resource, tuple(rule["verbs"]))
        for obj in objects
        if obj["kind"] in RBAC_KINDS and obj["metadata"]["name"] == COORDINATOR
        for rule in obj["rules"]
        if "snapshot.storage.k8s.io" in rule["apiGroups"]
        for resource in rule["resources"]
    )
    assert granted == [
        ("ClusterRole", "", "volumesnapshotcontents", ("get", "list", "watch", "create", "delete", "patch")),
        ("ClusterRole", "", "volumesnapshots", ("get", "list", "watch", "delete")),
        ("Role", "velero-prod", "volumesnapshots", ("create",)),
    ]


def secret_rules(objects: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The rules on Secrets, by "Kind/namespace/name" of the role granting them."""
    found: dict[str, list[dict[str, Any]]] = {}
    for obj in objects:
        if obj["kind"] in RBAC_KINDS:
            meta = obj["metadata"]
            role = f"{obj['kind']}/{meta.get('namespace', '')}/{meta['name']}"
            for rule in obj["rules"]:
                if "secrets" in rule["resources"]:
                    found.setdefault(role, []).append(rule)
    return found


def test_the_agents_read_only_the_secrets_they_need_and_the_coordinator_none(helm: Helm) -> None:
    """The agents: the repository password's Secret and the BSLs' (rbac.agentSecrets), by name, in
    Velero's namespace. The coordinator: create only, for generating the password Secret."""
    grants = secret_rules(helm.template({"veleroNamespace": "velero-prod"}, RELEASE, NAMESPACE))
    assert grants == {
        f"Role/velero-prod/{AGENT}": [
            {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"],
             "resourceNames": ["barge-repository-password", "cloud-credentials"]}
        ],
        f"Role/velero-prod/{COORDINATOR}": [
            {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]}
        ],
    }  # fmt: skip
    own = {
        "rbac": {"agentSecrets": ["minio-creds", "minio-ca", "team-pw"]},
        "config": {"repositoryPasswordSecret": {"name": "team-pw", "key": "pw", "generate": False}},
    }
    grants = secret_rules(helm.template(own, RELEASE, NAMESPACE))
    assert grants == {
        f"Role/velero/{AGENT}": [
            {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"],
             "resourceNames": ["team-pw", "minio-creds", "minio-ca"]}
        ],
    }  # fmt: skip


def test_repository_password_switches_reach_both_binaries(helm: Helm) -> None:
    values = {"config": {"repositoryPasswordSecret": {"name": "pw", "key": "k", "generate": False,
                                                      "allowVeleroDefault": True}}}  # fmt: skip
    objects = helm.template(values, RELEASE, NAMESPACE)
    coordinator, agent = flags(one(objects, "Deployment")), flags(one(objects, "DaemonSet"))
    assert coordinator["repository-password-secret"] == agent["repository-password-secret"] == "pw/k"
    assert "generate-repository-password" not in coordinator
    assert agent["allow-velero-default-password"] == ""


@pytest.mark.parametrize(
    ("values", "error"),
    [
        ({"coordinator": {"replicas": "two"}}, "at '/coordinator/replicas': got string, want integer"),
        ({"coordinator": {"replicaz": 2}}, "at '/coordinator': additional properties 'replicaz' not allowed"),
        ({"logLevel": "verbose"}, "at '/logLevel': value must be one of 'debug', 'info', 'warning'"),
        ({"tls": {"mode": "selfSigned"}}, "at '/tls/mode': value must be one of"),
        ({"config": {"repository": {"compression": "gzip"}}}, "at '/config/repository/compression'"),
        ({"config": {"drainGracePeriod": "10 minutes"}}, "at '/config/drainGracePeriod'"),
        ({"agent": {"kubeletRoot": "var/lib/kubelet"}}, "at '/agent/kubeletRoot'"),
        ({"unknownTopLevel": True}, "additional properties 'unknownTopLevel' not allowed"),
    ],
)
def test_schema_rejects_bad_values_with_helms_message(helm: Helm, values: dict[str, Any], error: str) -> None:
    result = helm.run("template", RELEASE, str(CHART_DIR), values=values, check=False)
    assert not result.ok
    assert "values don't meet the specifications of the schema(s)" in result.stderr
    assert error in result.stderr, result.stderr


def test_values_file_documents_every_key() -> None:
    """Every key has a comment right above it, or sits in a block whose (documented) key explains it."""
    lines = (CHART_DIR / "values.yaml").read_text().splitlines()
    documented: dict[int, bool] = {}  # indent of the open parent blocks -> that parent is documented
    undocumented = []
    for index, line in enumerate(lines):
        match = re.match(r"^(\s*)([A-Za-z][\w.-]*):", line)
        if not match:
            continue
        indent = len(match.group(1))
        documented = {level: ok for level, ok in documented.items() if level < indent}
        parent_ok = bool(documented) and documented[max(documented)]
        ok = lines[index - 1].strip().startswith("#") or parent_ok
        documented[indent] = ok
        if not ok:
            undocumented.append(line)
    assert not undocumented, undocumented


def test_schema_closes_every_object() -> None:
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())

    def walk(node: dict[str, Any], where: str) -> Iterator[str]:
        if (
            node.get("type") == "object"
            and "properties" in node
            and node.get("additionalProperties") is not False
        ):
            yield where
        for key, child in node.get("properties", {}).items():
            yield from walk(child, f"{where}.{key}")
        for nested in ("items", "additionalProperties"):
            if isinstance(node.get(nested), dict):
                yield from walk(node[nested], f"{where}[{nested}]")

    assert list(walk(schema, "$")) == []
