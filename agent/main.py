"""``barge-agent``: one per node (DaemonSet). Holds one gRPC stream to the coordinator and moves data.

On SIGTERM (node drain, rollout) it hands every running assignment back: what was uploaded stays in
the repository, so the agent that takes over re-reads but re-uploads almost nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

import structlog

from agent.agent import Agent
from agent.metrics import AgentMetrics
from agent.repositories import BslRepositories, remove_stale_credentials
from agent.runner import Mutation, RunnerSettings
from barge import __version__
from barge.clock import SystemClock
from barge.control.messages import Assignment
from barge.control.naming import VOUCH_REFRESH_S, Fence
from barge.errors import BargeError, InvalidInput
from barge.kube.client import api_client
from barge.kube.resources import BACKUP_STORAGE_LOCATION, SECRET, KubeObjects
from barge.kube.status import StatusWriter
from barge.logs import configure_logging
from barge.probes import ObservabilityServer, stop_on_signals
from barge.repo.repository import RepositorySettings
from barge.rpc.client import AgentClient
from barge.storage.throttle import RateLimit, parse_rate
from barge.velero.password import DEFAULT_PASSWORD_SECRET, SecretKey

log = structlog.get_logger("barge.agent")
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class KubeStatusSink:
    """The runner's ``StatusSink`` on the fenced Kubernetes status writer."""

    def __init__(self, writer: StatusWriter, metrics: AgentMetrics) -> None:
        self._writer = writer
        self._metrics = metrics

    def update(self, assignment: Assignment, fence: Fence, mutate: Mutation) -> None:
        cr = assignment.cr
        try:
            self._writer.update_status(cr.kind, cr.namespace, cr.name, mutate, fence=fence)
        except BargeError:
            self._metrics.status_write_errors.inc()
            raise


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="barge-agent", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"barge-agent {__version__}")
    p.add_argument("--node-name", default=os.environ.get("NODE_NAME"), help="this node (default: $NODE_NAME)")
    p.add_argument("--coordinator", required=True, help="HOST:PORT of the coordinator's gRPC Service")
    p.add_argument("--ca-file", required=True, help="CA bundle that signed the coordinator's certificate")
    p.add_argument("--server-name", help="name to verify in the coordinator's certificate (default: host)")
    p.add_argument("--token-file", default="/var/run/secrets/barge/token", help="projected SA token")
    p.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster ServiceAccount)")
    p.add_argument("--kubelet-root", default="/var/lib/kubelet")
    p.add_argument("--metrics-address", default="0.0.0.0")  # noqa: S104 - a pod serves its metrics on its IP
    p.add_argument("--metrics-port", type=int, default=8080)
    p.add_argument("--health-port", type=int, default=0)
    p.add_argument("--max-concurrent", type=int, default=2)
    p.add_argument("--workers", type=int, default=4, help="parallel readers/writers per assignment")
    p.add_argument(
        "--cache-dir",
        default="/var/cache/barge",
        help="host directory for caches (the repositories' indexes, kept across assignments); never "
        "holds a credential (credential files earlier releases left there are removed at start)",
    )
    p.add_argument(
        "--repository-password-secret",
        default=f"{DEFAULT_PASSWORD_SECRET.name}/{DEFAULT_PASSWORD_SECRET.key}",
        help="NAME/KEY of the Secret (in Velero's namespace) with the repository password",
    )
    p.add_argument(
        "--allow-velero-default-password",
        action="store_true",
        help="accept Velero's published default password (only for repositories created with it, "
        "until they are migrated)",
    )
    p.add_argument(
        "--max-upload-rate",
        type=_rate,
        default=0,
        metavar="BYTES_PER_S",
        help="at most this many bytes per second written to object storage by all of the agent's "
        "transfers together, e.g. 100Mi or 50M (default 0: no limit)",
    )
    p.add_argument("--compression", choices=("zstd", "none"), default="zstd", help="for new repositories")
    p.add_argument("--status-interval", type=float, default=5.0, help="seconds between progress writes")
    p.add_argument("--shutdown-grace", type=float, default=20.0, help="seconds to hand work back on SIGTERM")
    p.add_argument("--log-level", default="info")
    p.add_argument("--log-format", choices=("json", "console"), default="json")
    return p


def _rate(text: str) -> int:
    try:
        return parse_rate(text)
    except InvalidInput as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        configure_logging(args.log_level, args.log_format)
        return run(args)
    except (InvalidInput, ValueError) as err:
        print(f"barge-agent: {err}", file=sys.stderr)
        return EXIT_USAGE
    except BargeError as err:
        print(f"barge-agent: {err}", file=sys.stderr)
        return EXIT_FAILED


def run(args: argparse.Namespace) -> int:
    if not args.node_name:
        raise InvalidInput(
            "no node name: pass --node-name or set NODE_NAME (the downward API's spec.nodeName)"
        )
    structlog.contextvars.bind_contextvars(node=args.node_name)
    remove_stale_credentials(Path(args.cache_dir))
    clock = SystemClock()
    api = api_client(Path(args.kubeconfig) if args.kubeconfig else None)
    metrics = AgentMetrics(args.node_name)
    settings = RunnerSettings(
        node=args.node_name,
        kubelet_root=Path(args.kubelet_root),
        status_interval_s=args.status_interval,
        workers=args.workers,
    )
    repositories = _repositories(args, KubeObjects(api), clock)
    agent = Agent(
        settings,
        status=KubeStatusSink(StatusWriter(api), metrics),
        repositories=repositories,
        clock=clock,
        metrics=metrics,
        max_concurrent=args.max_concurrent,
        locations=repositories,
    )
    client = _client(args, agent, clock)
    agent.send = client.send
    agent.coordinator_connected = lambda: client.connected
    # Read at every scrape: set from the probe, the gauge was stale between probes (and 0 without any).
    metrics.connected.set_function(lambda: 1.0 if client.connected else 0.0)
    return _serve(args, agent, client, metrics)


def _repositories(args: argparse.Namespace, objects: KubeObjects, clock: SystemClock) -> BslRepositories:
    return BslRepositories(
        get_bsl=lambda ns, name: objects.get(BACKUP_STORAGE_LOCATION, ns, name),
        get_secret=lambda ns, name: objects.get(SECRET, ns, name),
        password_secret=SecretKey.parse(args.repository_password_secret),
        clock=clock,
        settings=RepositorySettings(compression_level=0 if args.compression == "none" else 3),
        allow_velero_default_password=args.allow_velero_default_password,
        cache_dir=Path(args.cache_dir),
        upload_limit=RateLimit(args.max_upload_rate, clock) if args.max_upload_rate else None,
    )


def _client(args: argparse.Namespace, agent: Agent, clock: SystemClock) -> AgentClient:
    token_file = Path(args.token_file)
    return AgentClient(
        args.coordinator,
        ca_file=Path(args.ca_file),
        token_source=lambda: _read_token(token_file),
        hello=agent.hello,
        handler=agent,
        running=agent.running,
        clock=clock,
        server_name_override=args.server_name,
    )


def _serve(args: argparse.Namespace, agent: Agent, client: AgentClient, metrics: AgentMetrics) -> int:
    """Serve until SIGTERM, then hand running work back to the coordinator."""

    def ready() -> bool:
        """Ready once running: a lost coordinator shows in barge_agent_connected, not as a stalled rollout."""
        return True

    endpoints = [ObservabilityServer(args.metrics_address, args.metrics_port, metrics.registry, ready)]
    if args.health_port:
        endpoints.append(ObservabilityServer(args.metrics_address, args.health_port, metrics.registry, ready))
    stop = threading.Event()
    stop_on_signals(stop)
    for endpoint in endpoints:
        endpoint.start()
    client.start()
    vouching = threading.Thread(target=_renew_vouches, args=(agent, stop), name="vouches", daemon=True)
    vouching.start()
    log.info("agent started", version=__version__, coordinator=args.coordinator)
    stop.wait()
    log.info("stopping: handing running work back to the coordinator")
    agent.stop_all(timeout=args.shutdown_grace)
    client.stop()
    for endpoint in endpoints:
        endpoint.stop()
    return EXIT_OK


def _renew_vouches(agent: Agent, stop: threading.Event) -> None:
    """Until stop: a round that fails is logged, and its vouches expire (the pods turn unready)."""
    while not stop.wait(VOUCH_REFRESH_S):
        try:
            agent.renew_vouches()
        except Exception:
            log.exception("renewing the exposer pods' vouches failed")


def _read_token(path: Path) -> str:
    """Re-read on every connect: the kubelet rotates projected tokens."""
    try:
        return path.read_text().strip()
    except OSError as err:
        raise InvalidInput(f"cannot read the ServiceAccount token {path}: {err.strerror}") from err


if __name__ == "__main__":
    sys.exit(main())
