"""``barge-coordinator``: the leader-elected Deployment that serves Barge's DataUploads/DataDownloads.

Every replica serves gRPC, metrics and probes, but only the leader runs the controller and accepts
agents; a standby refuses their streams (UNAVAILABLE) and they redial through the Service until they
reach the leader. A standby keeps the next term's informer caches warm (listed and watched), so
taking over costs the Lease's expiry and no listing of thousands of objects.

A leader that cannot renew its Lease (the API server is unreachable, or another replica took it)
steps down at once: it stops its controller, closes the agents' streams and
campaigns again, so an API server outage ends with a leader (this replica or another) continuing
from the state in the API server, and no process exits.

A vital loop (the leader election; on the leader, the controller's admission, resync and reconcile
loops, its informers and the sweeper) that dies of an unexpected exception ends the process
instead, as a Go controller's panic does: it gives up the Lease at once, so the standby takes over,
``/healthz`` fails until it exits (1), and the kubelet restarts it. One that stops making
progress fails ``/healthz`` after ``--stall-timeout``, and the liveness probe restarts it (the
informers and the sweeper are watched for their death only: each of their waits has its own
timeout, longer than a stall bound).
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import structlog
import yaml

from barge import __version__
from barge.clock import SystemClock
from barge.control.messages import AgentEvent
from barge.control.ports import AgentSession
from barge.errors import BargeError, InvalidInput, TemporaryError
from barge.kube.client import ApiClient, api_client
from barge.kube.leader import LeaderElector
from barge.kube.resources import SECRET, KubeObjects
from barge.kube.tokenreview import KubeAuthenticator
from barge.logs import configure_logging
from barge.probes import STALL_AFTER_S, ObservabilityServer, Vitals, stop_on_signals
from barge.rpc.server import ControlServer, ServerTls
from barge.velero.password import DEFAULT_PASSWORD_SECRET, SecretKey
from coordinator.config import CoordinatorConfig
from coordinator.controller import Controller, kubernetes_adapters
from coordinator.hub import Hub
from coordinator.maintainer import Maintainer
from coordinator.metrics import CR_KINDS, CoordinatorMetrics
from coordinator.repository_password import ensure_repository_password
from coordinator.sweeper import Sweeper

log = structlog.get_logger("barge.coordinator")
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
ELECTION_LOOP = "leader-election"
CONTROLLER_START = "controller"


class LeaderGate:
    """The hub as agents see it: refuses streams while this replica does not lead."""

    def __init__(self, hub: Hub, leading: threading.Event) -> None:
        self._hub = hub
        self._leading = leading

    def agent_connected(self, session: AgentSession) -> None:
        if not self._leading.is_set():
            raise TemporaryError("this coordinator replica is a standby; the leader serves agents")
        self._hub.agent_connected(session)

    def agent_event(self, session: AgentSession, event: AgentEvent) -> None:
        self._hub.agent_event(session, event)

    def agent_disconnected(self, session: AgentSession) -> None:
        self._hub.agent_disconnected(session)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="barge-coordinator", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"barge-coordinator {__version__}")
    p.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster ServiceAccount)")
    p.add_argument("--watch-namespace", default="velero", help="Velero's namespace (default: velero)")
    p.add_argument(
        "--grpc-address",
        default="0.0.0.0",  # noqa: S104 - the pod IP
        help="address the agents' gRPC server binds",
    )
    p.add_argument("--grpc-port", type=int, default=8443)
    p.add_argument("--metrics-address", default="0.0.0.0")  # noqa: S104 - a pod serves its metrics on its IP
    p.add_argument("--metrics-port", type=int, default=8080, help="/metrics, /healthz, /readyz")
    p.add_argument("--health-port", type=int, default=0, help="a second port for probes (0: none)")
    p.add_argument("--tls-cert-file", required=True)
    p.add_argument("--tls-key-file", required=True)
    p.add_argument("--agent-service-account", required=True, help="NAMESPACE/NAME of the agents' account")
    p.add_argument("--token-audience", default="barge", help="audience of the agents' projected tokens")
    p.add_argument("--config", help="coordinator config YAML (Velero node-agent config shape)")
    p.add_argument("--leader-election-namespace", default=os.environ.get("POD_NAMESPACE", "barge"))
    p.add_argument("--leader-election-id", default="barge-coordinator")
    p.add_argument(
        "--lease-duration",
        type=float,
        default=10.0,
        help="seconds a crashed leader's Lease holds off the standby (renewed every duration / 7.5)",
    )
    p.add_argument(
        "--stall-timeout",
        type=float,
        default=STALL_AFTER_S,
        help="/healthz fails when a vital loop made no progress for this long (s)",
    )
    p.add_argument("--heartbeat-interval", type=float, default=5.0, help="seconds between agent heartbeats")
    p.add_argument("--agent-timeout", type=float, default=20.0, help="drop a silent agent after (s)")
    p.add_argument(
        "--hello-timeout", type=float, default=5.0, help="close a stream that sends no Hello within (s)"
    )
    p.add_argument(
        "--max-handshakes",
        type=int,
        default=256,
        help="streams not yet authenticated, in all (apart from the agents' own slots)",
    )
    p.add_argument(
        "--max-handshakes-per-peer",
        type=int,
        default=8,
        help="streams not yet authenticated, per remote address (raise it when agents share one, e.g. a NAT)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=16,
        help="CRs reconciled at once (each waits on API requests, so more workers than cores pay off)",
    )
    p.add_argument(
        "--repository-password-secret",
        default=f"{DEFAULT_PASSWORD_SECRET.name}/{DEFAULT_PASSWORD_SECRET.key}",
        help="NAME/KEY of the Secret (in Velero's namespace) with the repository password",
    )
    p.add_argument(
        "--generate-repository-password",
        action="store_true",
        help="create that Secret with a random password at start when it does not exist",
    )
    p.add_argument("--log-level", default="info")
    p.add_argument("--log-format", choices=("json", "console"), default="json")
    return p


def load_config(path: str | None) -> CoordinatorConfig:
    if not path:
        return CoordinatorConfig.from_dict({})
    try:
        document = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise InvalidInput(f"cannot read config {path}: {err}") from err
    if not isinstance(document, dict):
        raise InvalidInput(f"config {path}: the top level must be a mapping")
    return CoordinatorConfig.from_dict(document)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        configure_logging(args.log_level, args.log_format)
        return run(args)
    except InvalidInput as err:
        print(f"barge-coordinator: {err}", file=sys.stderr)
        return EXIT_USAGE
    except BargeError as err:
        print(f"barge-coordinator: {err}", file=sys.stderr)
        return EXIT_FAILED
    except ValueError as err:
        print(f"barge-coordinator: {err}", file=sys.stderr)
        return EXIT_USAGE


def run(args: argparse.Namespace) -> int:
    coordinator = Coordinator(args)
    stop_on_signals(coordinator.leadership.stop)
    coordinator.start()
    coordinator.leadership.stop.wait()
    log.info("shutting down")
    return coordinator.stop()


class Coordinator:
    """One replica: gRPC (refusing agents until this replica leads), probes and metrics, and the
    leader terms. ``run`` serves one until SIGTERM; tests run several in one process."""

    def __init__(self, args: argparse.Namespace) -> None:
        self._args = args
        config = load_config(args.config)
        clock = SystemClock()
        identity = os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"
        # Each informer holds one connection for its watch; every worker may hold one more.
        api = api_client(Path(args.kubeconfig) if args.kubeconfig else None, connections=args.workers + 24)
        if args.generate_repository_password:
            secret = SecretKey.parse(args.repository_password_secret)
            objects = KubeObjects(api)
            ensure_repository_password(
                lambda body: objects.create(SECRET, body), args.watch_namespace, secret
            )
        self.metrics = metrics = CoordinatorMetrics()
        self.vitals = vitals = Vitals(clock, args.stall_timeout)
        hub = Hub(clock, metrics)
        leading = threading.Event()
        self.server = _control_server(args, api, LeaderGate(hub, leading), clock, identity)

        def new_controller() -> Controller:
            """A fresh controller for every leader term (nothing from an earlier term is trusted),
            made when the standby for that term begins, so its caches are warm when it leads."""
            adapters = kubernetes_adapters(api, clock, identity, vitals)
            sweeper = Sweeper(
                objects=KubeObjects(api),
                events=adapters.events,
                hub=hub,
                metrics=metrics,
                clock=clock,
                namespace=args.watch_namespace,
                config=config.deleted_backups,
                maintainer=Maintainer(
                    objects=KubeObjects(api),
                    events=adapters.events,
                    hub=hub,
                    metrics=metrics,
                    clock=clock,
                    namespace=args.watch_namespace,
                    config=config.maintenance,
                ),
                vitals=vitals,
            )
            return Controller(
                adapters,
                sweeper=sweeper,
                namespace=args.watch_namespace,
                config=config,
                hub=hub,
                metrics=metrics,
                clock=clock,
                identity=identity,
                workers=args.workers,
                vitals=vitals,
            )

        def new_elector(on_started: Callable[[], None], on_stopped: Callable[[], None]) -> LeaderElector:
            return _elector(args, api, identity, clock, vitals, on_started=on_started, on_stopped=on_stopped)

        self.leadership = Leadership(
            hub=hub,
            metrics=metrics,
            server=self.server,
            leading=leading,
            new_controller=new_controller,
            new_elector=new_elector,
            identity=identity,
            vitals=vitals,
        )
        metrics.watch_items(self.leadership.items, clock.now)
        self._probes: list[ObservabilityServer] = []

    def start(self) -> None:
        # Every replica is Ready once it serves: a standby that reported not-ready would stall
        # rollouts and block drains through the PodDisruptionBudget. It refuses agent streams
        # instead (UNAVAILABLE), and agents redial until they reach the leader. Alive (/healthz) is
        # another matter: it fails when a vital loop died or stalled (``Vitals``).
        args = self._args
        ports = [args.metrics_port] + ([args.health_port] if args.health_port else [])
        self._probes = [
            ObservabilityServer(
                args.metrics_address, port, self.metrics.registry, problems=self.vitals.problems
            )
            for port in ports
        ]
        self.server.start()
        self.server.set_serving(False)
        for endpoint in self._probes:
            endpoint.start()
        log.info(
            "coordinator started",
            version=__version__,
            identity=self.leadership.identity,
            grpc_port=self.server.port,
        )
        self.leadership.campaign()

    @property
    def probe_port(self) -> int:
        """The bound port of /metrics, /healthz and /readyz (the actual one when asked for 0)."""
        return self._probes[0].port

    def stop(self) -> int:
        """Release the Lease (when leading), stop serving; the exit code."""
        self.leadership.shut_down()
        self.server.stop(grace=5)
        for endpoint in self._probes:
            endpoint.stop()
        return EXIT_FAILED if self.leadership.failed.is_set() else EXIT_OK


def _control_server(
    args: argparse.Namespace, api: ApiClient, gate: LeaderGate, clock: SystemClock, identity: str
) -> ControlServer:
    return ControlServer(
        gate,
        KubeAuthenticator(api, args.agent_service_account, (args.token_audience,), clock=clock),
        address=f"{args.grpc_address}:{args.grpc_port}",
        tls=ServerTls(Path(args.tls_cert_file), Path(args.tls_key_file)),
        clock=clock,
        heartbeat_interval_s=args.heartbeat_interval,
        agent_timeout_s=args.agent_timeout,
        coordinator_id=identity,
        hello_timeout_s=args.hello_timeout,
        max_handshakes=args.max_handshakes,
        max_handshakes_per_peer=args.max_handshakes_per_peer,
    )


def _elector(
    args: argparse.Namespace,
    api: ApiClient,
    identity: str,
    clock: SystemClock,
    vitals: Vitals,
    *,
    on_started: Callable[[], None],
    on_stopped: Callable[[], None],
) -> LeaderElector:
    return LeaderElector(
        api,
        args.leader_election_namespace,
        args.leader_election_id,
        identity,
        clock=clock,
        on_started=on_started,
        on_stopped=on_stopped,
        on_failed=lambda err: vitals.died(ELECTION_LOOP, f"{type(err).__name__}: {err}"),
        heartbeat=lambda: vitals.beat(ELECTION_LOOP),
        lease_duration_s=args.lease_duration,
        renew_deadline_s=args.lease_duration * 2 / 3,
        retry_period_s=max(0.5, args.lease_duration / 7.5),
    )


class Leadership:
    """Leader terms, one after another: campaign, lead (a fresh controller; agents accepted), and on
    a lost Lease step down (controller stopped, agent streams closed, hub records dropped) and
    campaign again. A controller that starts late checks that its term is still the current one.
    When a vital loop dies, this replica gives up: it releases the Lease, campaigns no more and
    sets ``failed`` and ``stop`` (the process exits 1)."""

    def __init__(
        self,
        *,
        hub: Hub,
        metrics: CoordinatorMetrics,
        server: ControlServer,
        leading: threading.Event,
        new_controller: Callable[[], Controller],
        new_elector: Callable[[Callable[[], None], Callable[[], None]], LeaderElector],
        identity: str,
        vitals: Vitals,
    ) -> None:
        self._hub, self._metrics, self._server = hub, metrics, server
        self._leading = leading
        self._new_controller, self._new_elector = new_controller, new_elector
        self.identity = identity
        self.stop = threading.Event()
        self._closing = threading.Event()  # shut_down began: campaign no more
        self.failed = threading.Event()
        self._lock = threading.Lock()
        self._term = 0
        self._controller: Controller | None = None
        self._standby: Controller | None = None  # the next term's, its caches kept warm meanwhile
        self._elector: LeaderElector | None = None
        self._vitals = vitals
        vitals.on_death = self._give_up

    def items(self) -> list[dict[str, Any]]:
        """The CRs the current term's controller caches (none while standing by), with their kind."""
        with self._lock:
            controller = self._controller
        if controller is None:
            return []
        return [{**cr, "kind": kind} for kind in CR_KINDS for cr in controller.caches.items(kind)]

    def campaign(self) -> None:
        """Stand by for the Lease with the next term's controller warm: its informers list and
        watch from now on, so a failover does not wait for thousands of objects to be listed."""
        self._vitals.beat(ELECTION_LOOP)
        standby = self._new_controller()
        elector = self._new_elector(self._started, self._stopped)
        with self._lock:  # with shut_down's: a campaign either sees the shutdown or is stopped by it
            if self._closing.is_set():
                return
            self._standby = standby
            standby.warm()
            self._elector = elector
            elector.start()

    def shut_down(self) -> None:
        self._leading.clear()
        with self._lock:
            self._closing.set()  # no rejoin campaigns again
            elector = self._elector
        if elector is not None:
            elector.stop()
        for controller in (self._end_term(), self._take_standby()):
            if controller is not None:
                controller.stop()

    def _started(self) -> None:
        controller = self._take_standby() or self._new_controller()
        with self._lock:
            self._term += 1
            self._controller = controller
            term = self._term
        threading.Thread(target=self._lead, args=(term, controller), name="lead", daemon=True).start()

    def _lead(self, term: int, controller: Controller) -> None:
        try:
            controller.start()
        except Exception as err:  # an API error or a bug: a leader that cannot lead gives up
            if self._current(term):
                unexpected = not isinstance(err, BargeError)
                log.error("controller could not start", error=str(err), exc_info=unexpected)
                self._vitals.died(CONTROLLER_START, f"could not start: {type(err).__name__}: {err}")
            return
        if not self._current(term):
            controller.stop()
            return
        self._leading.set()
        self._metrics.is_leader.set(1)
        self._server.set_serving(True)
        log.info("leading: serving DataUploads and DataDownloads", identity=self.identity)

    def _stopped(self) -> None:
        self._leading.clear()
        self._metrics.is_leader.set(0)
        self._server.set_serving(False)
        controller = self._end_term()
        if self.failed.is_set():
            if controller is not None:
                controller.stop()  # its loops must not act on for a leader that gave up
            return
        if self.stop.is_set() or self._closing.is_set():
            return
        log.error("lost the leader lease (API server unreachable or lease taken); standing by")
        self._vitals.beat(ELECTION_LOOP)  # the next campaign starts once the controller stopped
        threading.Thread(target=self._rejoin, args=(controller,), name="rejoin", daemon=True).start()

    def _give_up(self, loop: str, reason: str) -> None:
        """A vital loop died: this replica cannot lead (well) any more. Release the Lease now, so
        the standby takes over at its next retry, and end the process; /healthz fails meanwhile."""
        with self._lock:
            if self.failed.is_set():
                return
            self.failed.set()
        log.error("a vital loop died: giving up leadership and exiting", loop=loop, reason=reason)
        threading.Thread(target=self._end, name="give-up", daemon=True).start()

    def _end(self) -> None:
        self.shut_down()
        self.stop.set()

    def _rejoin(self, controller: Controller | None) -> None:
        if controller is not None:
            controller.stop()
        self._hub.reset()
        if not (self.stop.is_set() or self.failed.is_set() or self._closing.is_set()):
            self.campaign()

    def _take_standby(self) -> Controller | None:
        with self._lock:
            standby, self._standby = self._standby, None
            return standby

    def _end_term(self) -> Controller | None:
        with self._lock:
            self._term += 1
            controller, self._controller = self._controller, None
            return controller

    def _current(self, term: int) -> bool:
        with self._lock:
            return term == self._term


if __name__ == "__main__":
    sys.exit(main())
