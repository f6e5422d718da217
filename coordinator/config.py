"""The coordinator's configuration: Velero's node-agent config keys plus Barge's own.

Parsed from the dict a YAML ConfigMap yields (``CoordinatorConfig.from_dict(yaml.safe_load(text))``);
every key Velero's node-agent config understands keeps its meaning, so an existing
``node-agent-config`` can be reused:

* ``loadConcurrency``: ``globalConfig`` (per-node default, 1) and ``perNodeConfig`` rules; a node
  matching several rules gets the smallest number, as in Velero.
* ``prepareQueueLength``: how many items may hold an exposure without moving data (0 or unset: four
  times the transfer slots of the usable nodes, at least 8; ``scheduler.prepare_queue_limit``).
* ``loadAffinity``: node selectors for exposer pods, optionally per storage class.
* ``backupPVC``: per source storage class, the storage class / readOnly of the backup PVC.
* ``restorePVC.ignoreDelayBinding``, ``podResources``, ``priorityClassName``.

Barge's keys: ``prepareTimeout`` (30m), ``agentGracePeriod`` (60s), ``drainGracePeriod`` (10m),
``maxReexposures`` (3), ``image`` (exposer pods), ``deletedBackups.checkInterval`` (10m; 0 turns
it off) and ``deletedBackups.gracePeriod`` (1h): how often the leader looks for snapshots of
deleted Velero backups, and how long a backup must have been deleted before they are forgotten;
``maintenance.gcInterval`` (24h), ``maintenance.checkInterval`` (168h; 0 turns either off),
``maintenance.checkReadDataPercent`` (10) and ``maintenance.timeout`` (2h): the leader's schedule
of garbage collection and verification per repository (``coordinator.maintenance``).
Repository settings (password Secret, compression) are the agents' flags: they open and create
repositories (the coordinator only creates the password Secret when missing:
``--generate-repository-password``).

Unknown keys and values of the wrong type raise ``InvalidInput`` naming the key path
(``loadConcurrency.perNodeConfig[1].number``) and the expected type. Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

from barge.errors import InvalidInput
from coordinator.maintenance import MaintenanceConfig

T = TypeVar("T")
Pairs = tuple[tuple[str, str], ...]

DEFAULT_EXPOSER_IMAGE = "busybox:1.36"

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_go_duration(text: str) -> timedelta:
    """A Go ``time.Duration`` string (``"10m0s"``, ``"1h30m"``, ``"4h"``, ``"1.5s"``) as a timedelta.

    Velero writes ``operationTimeout`` in this form; negative durations are rejected.
    """
    stripped = text.strip()
    if stripped == "0":
        return timedelta(0)
    if not stripped or stripped.startswith("-"):
        raise InvalidInput(f"{text!r} is not a duration like '10m0s', '1h30m' or '4h'")
    seconds = 0.0
    position = 0
    for match in _DURATION_PART.finditer(stripped):
        if match.start() != position:
            break
        seconds += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        position = match.end()
    if position != len(stripped):
        raise InvalidInput(f"{text!r} is not a duration like '10m0s', '1h30m' or '4h'")
    return timedelta(seconds=seconds)


def format_go_duration(value: timedelta) -> str:
    """The Go rendering of a whole-second duration (``4h0m0s``, ``10m0s``, ``45s``), for messages."""
    total = int(value.total_seconds())
    hours, rest = divmod(total, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{seconds}s"
    if minutes:
        return f"{minutes}m{seconds}s"
    return f"{seconds}s"


@dataclass(frozen=True)
class SelectorRequirement:
    """One ``matchExpressions`` entry: ``key`` ``operator`` (In/NotIn/Exists/DoesNotExist) ``values``."""

    key: str
    operator: str
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.operator == "In":
            return labels.get(self.key) in self.values
        if self.operator == "NotIn":
            return labels.get(self.key) not in self.values
        if self.operator == "Exists":
            return self.key in labels
        return self.key not in labels  # DoesNotExist


SELECTOR_OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")


@dataclass(frozen=True)
class LabelSelector:
    """A Kubernetes label selector; the empty selector matches every node."""

    match_labels: Pairs = ()
    match_expressions: tuple[SelectorRequirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in self.match_labels) and all(
            e.matches(labels) for e in self.match_expressions
        )


@dataclass(frozen=True)
class PerNodeConcurrency:
    node_selector: LabelSelector
    number: int


@dataclass(frozen=True)
class LoadConcurrency:
    global_config: int = 1
    per_node_config: tuple[PerNodeConcurrency, ...] = ()

    def for_node(self, labels: Mapping[str, str]) -> int:
        """How many assignments a node with ``labels`` may run at once (smallest matching rule)."""
        matching = [rule.number for rule in self.per_node_config if rule.node_selector.matches(labels)]
        return min(matching) if matching else self.global_config


@dataclass(frozen=True)
class LoadAffinity:
    node_selector: LabelSelector
    storage_class: str = ""  # "" = applies to every storage class without a rule of its own


@dataclass(frozen=True)
class BackupPvcConfig:
    storage_class: str = ""  # "" = keep the source's storage class
    read_only: bool = False
    spc_no_relabeling: bool = False


@dataclass(frozen=True)
class RestorePvcConfig:
    ignore_delay_binding: bool = False


@dataclass(frozen=True)
class PodResources:
    """Quantities as strings ("" = not set), copied into the exposer pod's container resources."""

    cpu_request: str = ""
    cpu_limit: str = ""
    memory_request: str = ""
    memory_limit: str = ""


@dataclass(frozen=True)
class DeletedBackupsConfig:
    """How the snapshots of deleted Velero backups are forgotten (``coordinator.lifecycle``)."""

    check_interval: timedelta = timedelta(minutes=10)  # 0: never (snapshots are kept forever)
    grace_period: timedelta = timedelta(hours=1)


@dataclass(frozen=True)
class CoordinatorConfig:
    load_concurrency: LoadConcurrency = field(default_factory=LoadConcurrency)
    prepare_queue_length: int | None = None  # None: 4x the transfer slots (scheduler.prepare_queue_limit)
    load_affinity: tuple[LoadAffinity, ...] = ()
    backup_pvc: tuple[tuple[str, BackupPvcConfig], ...] = ()  # source storage class -> override
    restore_pvc: RestorePvcConfig = field(default_factory=RestorePvcConfig)
    pod_resources: PodResources = field(default_factory=PodResources)
    priority_class_name: str = ""
    prepare_timeout: timedelta = timedelta(minutes=30)
    agent_grace_period: timedelta = timedelta(seconds=60)
    drain_grace_period: timedelta = timedelta(minutes=10)
    max_reexposures: int = 3
    image: str = DEFAULT_EXPOSER_IMAGE
    deleted_backups: DeletedBackupsConfig = field(default_factory=DeletedBackupsConfig)
    maintenance: MaintenanceConfig = field(default_factory=MaintenanceConfig)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> CoordinatorConfig:
        """Parse the YAML document; ``None`` (an empty file) gives the defaults."""
        return _parse_config(_Section(data or {}, ""))

    def backup_pvc_for(self, storage_class: str) -> BackupPvcConfig:
        """The backup-PVC override for a source storage class (no override: keep it as it is)."""
        return dict(self.backup_pvc).get(storage_class, BackupPvcConfig())

    def affinity_for(self, storage_class: str) -> LabelSelector | None:
        """The node selector for an exposer pod whose volume has ``storage_class``.

        A rule naming that storage class wins over a rule without one; the first rule of each kind.
        """
        for wanted in (storage_class, ""):
            for rule in self.load_affinity:
                if rule.storage_class == wanted:
                    return rule.node_selector
        return None


class _Section:
    """A mapping being parsed, with its key path for messages and a record of the keys consumed."""

    def __init__(self, data: object, path: str) -> None:
        if not isinstance(data, Mapping):
            raise InvalidInput(f"{path or 'the configuration'}: expected a mapping, got {_kind(data)}")
        self.data: Mapping[str, Any] = data
        self.path = path
        self.known: set[str] = set()

    def at(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def get(self, key: str, expected: type[T], default: T) -> T:
        self.known.add(key)
        if key not in self.data or self.data[key] is None:
            return default
        value = self.data[key]
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise InvalidInput(f"{self.at(key)}: expected {_TYPE_NAMES[expected]}, got {_kind(value)}")
        return value

    def section(self, key: str) -> _Section:
        return _Section(self.get(key, dict, {}), self.at(key))

    def sections(self, key: str) -> list[_Section]:
        items = self.get(key, list, [])
        return [_Section(item, f"{self.at(key)}[{i}]") for i, item in enumerate(items)]

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.known)
        if unknown:
            allowed = ", ".join(sorted(self.known))
            raise InvalidInput(f"{self.at(unknown[0])}: unknown key (known keys here: {allowed})")


_TYPE_NAMES: dict[type, str] = {
    int: "an integer",
    str: "a string",
    bool: "a boolean (true/false)",
    dict: "a mapping",
    list: "a list",
}


def _kind(value: object) -> str:
    return {bool: "a boolean", int: "an integer", str: "a string", list: "a list", dict: "a mapping"}.get(
        type(value), type(value).__name__
    )


def _parsed(section: _Section, parse: Callable[[_Section], T]) -> T:
    result = parse(section)
    section.done()
    return result


def _positive(section: _Section, key: str, default: int, minimum: int = 1) -> int:
    value = section.get(key, int, default)
    if value < minimum:
        raise InvalidInput(f"{section.at(key)}: expected an integer >= {minimum}, got {value}")
    return value


def _percent(section: _Section, key: str, default: float) -> float:
    section.known.add(key)
    value = section.data.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 100:
        raise InvalidInput(f"{section.at(key)}: expected a number from 0 to 100, got {value!r}")
    return float(value)


def _duration(section: _Section, key: str, default: timedelta) -> timedelta:
    text = section.get(key, str, "")
    if not text:
        return default
    try:
        return parse_go_duration(text)
    except InvalidInput as err:
        raise InvalidInput(f"{section.at(key)}: {err}") from None


def _parse_config(root: _Section) -> CoordinatorConfig:
    def parse(s: _Section) -> CoordinatorConfig:
        queue = s.get("prepareQueueLength", int, 0)
        if queue < 0:
            raise InvalidInput(f"prepareQueueLength: expected an integer >= 0, got {queue}")
        return CoordinatorConfig(
            load_concurrency=_parsed(s.section("loadConcurrency"), _parse_load_concurrency),
            prepare_queue_length=queue or None,
            load_affinity=tuple(_parsed(item, _parse_load_affinity) for item in s.sections("loadAffinity")),
            backup_pvc=_parse_backup_pvc(s.section("backupPVC")),
            restore_pvc=_parsed(
                s.section("restorePVC"),
                lambda r: RestorePvcConfig(r.get("ignoreDelayBinding", bool, False)),
            ),
            pod_resources=_parsed(s.section("podResources"), _parse_pod_resources),
            priority_class_name=s.get("priorityClassName", str, ""),
            prepare_timeout=_duration(s, "prepareTimeout", timedelta(minutes=30)),
            agent_grace_period=_duration(s, "agentGracePeriod", timedelta(seconds=60)),
            drain_grace_period=_duration(s, "drainGracePeriod", timedelta(minutes=10)),
            max_reexposures=_positive(s, "maxReexposures", 3, minimum=0),
            image=s.get("image", str, DEFAULT_EXPOSER_IMAGE) or DEFAULT_EXPOSER_IMAGE,
            deleted_backups=_parsed(s.section("deletedBackups"), _parse_deleted_backups),
            maintenance=_parsed(s.section("maintenance"), _parse_maintenance),
        )

    return _parsed(root, parse)


def _parse_deleted_backups(section: _Section) -> DeletedBackupsConfig:
    defaults = DeletedBackupsConfig()
    return DeletedBackupsConfig(
        check_interval=_duration(section, "checkInterval", defaults.check_interval),
        grace_period=_duration(section, "gracePeriod", defaults.grace_period),
    )


def _parse_maintenance(section: _Section) -> MaintenanceConfig:
    defaults = MaintenanceConfig()
    percent = _percent(section, "checkReadDataPercent", defaults.read_data_fraction * 100)
    timeout = _duration(section, "timeout", defaults.timeout)
    if timeout <= timedelta(0):
        raise InvalidInput(f"{section.at('timeout')}: expected a positive duration")
    return MaintenanceConfig(
        gc_interval=_duration(section, "gcInterval", defaults.gc_interval),
        check_interval=_duration(section, "checkInterval", defaults.check_interval),
        read_data_fraction=percent / 100,
        timeout=timeout,
    )


def _parse_selector(section: _Section) -> LabelSelector:
    labels = section.section("matchLabels")
    for key in labels.data:
        labels.get(key, str, "")
    expressions = tuple(_parsed(item, _parse_requirement) for item in section.sections("matchExpressions"))
    return LabelSelector(tuple(sorted(labels.data.items())), expressions)


def _parse_requirement(section: _Section) -> SelectorRequirement:
    key = section.get("key", str, "")
    operator = section.get("operator", str, "")
    values = section.get("values", list, [])
    if not key:
        raise InvalidInput(f"{section.at('key')}: expected a non-empty string")
    if operator not in SELECTOR_OPERATORS:
        raise InvalidInput(f"{section.at('operator')}: expected one of {', '.join(SELECTOR_OPERATORS)}")
    if not all(isinstance(v, str) for v in values):
        raise InvalidInput(f"{section.at('values')}: expected a list of strings")
    return SelectorRequirement(key, operator, tuple(values))


def _parse_load_concurrency(section: _Section) -> LoadConcurrency:
    def rule(item: _Section) -> PerNodeConcurrency:
        return PerNodeConcurrency(
            _parsed(item.section("nodeSelector"), _parse_selector), _positive(item, "number", 1)
        )

    return LoadConcurrency(
        global_config=_positive(section, "globalConfig", 1),
        per_node_config=tuple(_parsed(item, rule) for item in section.sections("perNodeConfig")),
    )


def _parse_load_affinity(section: _Section) -> LoadAffinity:
    return LoadAffinity(
        node_selector=_parsed(section.section("nodeSelector"), _parse_selector),
        storage_class=section.get("storageClass", str, ""),
    )


def _parse_backup_pvc(section: _Section) -> tuple[tuple[str, BackupPvcConfig], ...]:
    def entry(item: _Section) -> BackupPvcConfig:
        return BackupPvcConfig(
            storage_class=item.get("storageClass", str, ""),
            read_only=item.get("readOnly", bool, False),
            spc_no_relabeling=item.get("spcNoRelabeling", bool, False),
        )

    return tuple(sorted((name, _parsed(section.section(name), entry)) for name in section.data))


def _parse_pod_resources(section: _Section) -> PodResources:
    return PodResources(
        cpu_request=section.get("cpuRequest", str, ""),
        cpu_limit=section.get("cpuLimit", str, ""),
        memory_request=section.get("memoryRequest", str, ""),
        memory_limit=section.get("memoryLimit", str, ""),
    )
