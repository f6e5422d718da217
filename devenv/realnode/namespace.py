"""The private namespaces a real node runs in, and what it needs from the host: a veth pair, cgroups.

``NodeNamespace`` starts the anchor (``devenv.realnode.anchor``, PID 1 of new mount, network and
PID namespaces), gives the node an address on a veth pair whose other end is on the host, and
creates the node's cgroup root in every cgroup hierarchy. ``enter`` is the command prefix that runs
a program inside. Stopping it kills everything inside at once (the PID namespace dies with its
PID 1), which also takes the mounts and the network namespace with its veth; then the cgroups the
kubelet and runc left are removed. ``HostFootprint`` is what a test compares before and after, to
prove nothing of the node stayed behind.
"""

from __future__ import annotations

import contextlib
import functools
import os
import subprocess
import sys
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from barge.errors import TemporaryError
from devenv.processes import ServerProcess
from devenv.waiting import wait_for

CGROUP_PREFIX = "barge-realnode-"  # then the PID of the process that owns the node
_SUBNET_PREFIX = "10.99"  # the node gets 10.99.N.2/24, the host 10.99.N.1/24, N unused on the host
_READY_TIMEOUT = 60.0
_CGROUP_TIMEOUT = 30.0
# The /proc/sys values the kubelet sets at start (container_manager_linux.setupKernelTunables):
# files holding them are mounted over the real ones inside, so it finds them set and writes none.
KUBELET_SYSCTLS = {
    "vm/overcommit_memory": "1",
    "vm/panic_on_oom": "0",
    "kernel/panic": "10",
    "kernel/panic_on_oops": "1",
    "kernel/keys/root_maxkeys": "1000000",
    "kernel/keys/root_maxbytes": "25000000",
}


def _run(argv: Sequence[str]) -> str:
    done = subprocess.run(list(argv), capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False)
    if done.returncode != 0:
        raise TemporaryError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def cgroup_mounts() -> list[Path]:
    """The mount point of every cgroup hierarchy (v1 controllers, name=systemd, the v2 one)."""
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split(" - ")
        if len(fields) == 2 and fields[1].split()[0] in ("cgroup", "cgroup2"):
            points.append(Path(fields[0].split()[4]))
    return points


def _host_links() -> set[str]:
    return set(os.listdir("/sys/class/net"))


def _used_subnets() -> set[int]:
    """The N of every 10.99.N.0/24 the host has an address in."""
    used = set()
    for line in _run(["ip", "-o", "-4", "addr", "show"]).splitlines():
        for field in line.split():
            if field.startswith(f"{_SUBNET_PREFIX}."):
                used.add(int(field.split(".")[2]))
    return used


@dataclass(frozen=True)
class NamespaceIds:
    """The inodes of the node's namespaces: a process in any of them belongs to the node."""

    mnt: int
    net: int
    pid: int

    @staticmethod
    def of(pid: int) -> NamespaceIds:
        def inode(kind: str) -> int:
            return os.stat(f"/proc/{pid}/ns/{kind}").st_ino

        return NamespaceIds(inode("mnt"), inode("net"), inode("pid"))

    def processes(self) -> list[int]:
        """Every process on the host that is still inside one of these namespaces."""
        inside = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            with contextlib.suppress(OSError):
                if NamespaceIds.of(int(entry)).overlaps(self):
                    inside.append(int(entry))
        return inside

    def overlaps(self, other: NamespaceIds) -> bool:
        return self.mnt == other.mnt or self.net == other.net or self.pid == other.pid


@dataclass(frozen=True)
class HostFootprint:
    """What a node could leave on the host: mount points, network links, top-level cgroups, and the
    host paths the kubelet and containerd hard-code."""

    mounts: frozenset[str]
    links: frozenset[str]
    cgroups: frozenset[str]
    paths: frozenset[str]

    WATCHED_PATHS = (
        "/var/lib/kubelet",
        "/var/lib/containerd",
        "/var/lib/cni",
        "/var/log/pods",
        "/var/log/containers",
        "/run/containerd",
        "/run/netns",
        "/etc/cni",
        "/opt/cni",
        "/opt/containerd",
        "/usr/libexec/kubernetes",
    )

    @staticmethod
    def capture() -> HostFootprint:
        mounts = {
            line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
        }
        cgroups = {
            str(mount / child.name)
            for mount in cgroup_mounts()
            for child in mount.iterdir()
            if child.is_dir()
        }
        paths = {path for path in HostFootprint.WATCHED_PATHS if os.path.lexists(path)}
        return HostFootprint(
            frozenset(mounts), frozenset(_host_links()), frozenset(cgroups), frozenset(paths)
        )

    def added_since(self, before: HostFootprint) -> dict[str, list[str]]:
        """What exists now and did not in ``before``, by kind (empty: nothing left behind)."""
        added = {
            "mounts": sorted(self.mounts - before.mounts),
            "links": sorted(self.links - before.links),
            "cgroups": sorted(self.cgroups - before.cgroups),
            "paths": sorted(self.paths - before.paths),
        }
        return {kind: items for kind, items in added.items() if items}


class NodeNamespace:
    """The node's namespaces, its veth address and its cgroup root; see the module docstring."""

    def __init__(self, workdir: Path, tmpfs: Iterable[str]) -> None:
        self.workdir = workdir
        self._tmpfs = list(tmpfs)
        self.cgroup_root = f"/{CGROUP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.anchor: ServerProcess | None = None
        self.pid = 0  # the anchor's PID on the host
        self.ids: NamespaceIds | None = None
        self.address = ""
        self.host_address = ""
        self.host_link = ""
        self._cgroups_made: list[Path] = []

    def start(self) -> None:
        remove_stale_cgroup_roots()
        self._make_cgroup_root()
        self._start_anchor()
        self._connect()

    def enter(self) -> list[str]:
        """The command prefix that runs a program inside the node (working directory kept)."""
        return [
            "nsenter",
            f"--target={self.pid}",
            "--mount",
            "--net",
            "--pid",
            f"--wd={os.getcwd()}",
            "--",
        ]

    def _start_anchor(self) -> None:
        sysctl_dir = self.workdir / "sysctl"
        sysctl_dir.mkdir()
        binds = []
        for name, value in KUBELET_SYSCTLS.items():
            holder = sysctl_dir / name.replace("/", ".")
            holder.write_text(f"{value}\n")
            binds += ["--bind", f"{holder}:/proc/sys/{name}"]
        ready = self.workdir / "anchor.ready"
        self.anchor = ServerProcess(
            "node-namespace",
            [
                "unshare",
                "--mount",
                "--net",
                "--pid",
                "--fork",
                "--kill-child",
                "--mount-proc",
                "--propagation=private",
                "--",
                sys.executable,
                "-m",
                "devenv.realnode.anchor",
                f"--ready={ready}",
                *(f"--tmpfs={path}" for path in self._tmpfs),
                *binds,
            ],
            self.workdir / "anchor.log",
        )
        self.anchor.start()
        self.anchor.wait_ready(ready.exists, _READY_TIMEOUT, "set up (mounts)")
        unshare = self.anchor.pid
        children = Path(f"/proc/{unshare}/task/{unshare}/children").read_text().split()
        self.pid = int(children[0])
        self.ids = NamespaceIds.of(self.pid)

    def _connect(self) -> None:
        """A veth pair: 10.99.N.1 on the host, 10.99.N.2 on the node's eth0 (N free on the host)."""
        used = _used_subnets()
        for subnet in (n for n in range(1, 255) if n not in used):
            link = f"barge-node{subnet}"
            if link in _host_links():
                continue
            try:
                _run(["ip", "link", "add", link, "type", "veth", "peer", "eth0", "netns", str(self.pid)])
            except TemporaryError:
                continue  # taken meanwhile by another node
            self.host_link = link
            self.host_address = f"{_SUBNET_PREFIX}.{subnet}.1"
            self.address = f"{_SUBNET_PREFIX}.{subnet}.2"
            break
        else:
            raise TemporaryError(f"no free {_SUBNET_PREFIX}.N.0/24 on the host for a node")
        _run(["ip", "addr", "add", f"{self.host_address}/24", "dev", self.host_link])
        _run(["ip", "link", "set", self.host_link, "up"])
        inside = self.enter()
        _run([*inside, "ip", "link", "set", "lo", "up"])
        _run([*inside, "ip", "addr", "add", f"{self.address}/24", "dev", "eth0"])
        _run([*inside, "ip", "link", "set", "eth0", "up"])

    def _make_cgroup_root(self) -> None:
        """The node's cgroup root in every hierarchy (the kubelet's cgroupRoot must exist); cpuset
        gets its parent's CPUs and memory nodes, which a new cpuset cgroup lacks."""
        for mount in cgroup_mounts():
            path = mount / self.cgroup_root.lstrip("/")
            path.mkdir()
            self._cgroups_made.append(path)
            for setting in ("cpuset.cpus", "cpuset.mems"):
                if (path / setting).exists():
                    (path / setting).write_text((mount / setting).read_text())

    def stop(self) -> None:
        """Kill everything inside, wait until no process is left in the namespaces, remove the
        cgroups. Safe to call on a partly started namespace."""
        if self.anchor is not None:
            self.anchor.stop()
        if self.ids is not None:
            ids = self.ids
            wait_for(lambda: not ids.processes(), _CGROUP_TIMEOUT, what="the node's processes to exit")
        for path in self._cgroups_made:
            _remove_cgroup_tree(path)
        self._cgroups_made.clear()


def remove_stale_cgroup_roots() -> list[Path]:
    """Remove the cgroup roots of nodes whose owning process is gone (a test run killed with -9
    cannot clean up; its processes died with it, its empty cgroups stay). Returns what it removed."""
    removed = []
    for mount in cgroup_mounts():
        for root in mount.glob(f"{CGROUP_PREFIX}*"):
            owner = root.name.removeprefix(CGROUP_PREFIX).split("-")[0]
            if owner.isdigit() and not Path(f"/proc/{owner}").exists():
                _remove_cgroup_tree(root)
                removed.append(root)
    return removed


def _remove_cgroup_tree(root: Path) -> None:
    """rmdir ``root`` and every cgroup below it, deepest first, once their tasks have exited."""
    if not root.exists():
        return
    tree = sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True)

    def removed(path: Path) -> bool:
        try:
            path.rmdir()
        except FileNotFoundError:
            return True
        except OSError:
            return False  # EBUSY: a task is still exiting
        return True

    for path in [*tree, root]:
        wait_for(functools.partial(removed, path), _CGROUP_TIMEOUT, what=f"cgroup {path} removable")
