"""The simulated kubelet's readiness prober: exec readiness probes, run as the kubelet runs them.

As upstream (``pkg/kubelet/prober``): a container with a ``readinessProbe`` starts unready; the
probe runs every ``periodSeconds`` from ``initialDelaySeconds`` after the start, each run bounded
by ``timeoutSeconds``; ``successThreshold`` successes in a row make the container ready,
``failureThreshold`` failures in a row unready; the pod is Ready when all its containers are.
Only ``exec`` probes are run (any other kind is recorded as an error: the simulator cannot run it).

The simulator has no container filesystem, only the pod's volumes on the node: the command runs
on this machine in the host directory of the volume mounted at the container's ``workingDir``
(the directory an exec probe starts in), an emptyDir or a claim. What it answers is what that
volume holds, written there by whoever writes it for real (for Barge's exposer pods: the agent,
through the kubelet root). The simulator knows nothing of what a probe means.
"""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devenv.simworld import SimContext

Obj = dict[str, Any]
# (pod, volume name) -> the volume's directory on the node, or None when it has none (yet)
VolumeDirectory = Callable[[Obj, str], Path | None]


@dataclass
class ProbeState:
    """One container's readiness as the prober tracks it (upstream's ``worker``)."""

    ready: bool = False
    successes: int = 0
    failures: int = 0
    next_at: float | None = None  # monotonic time of the next run; None: not started

    def record(self, success: bool, probe: Mapping[str, Any]) -> None:
        """One result: readiness flips only after the thresholds' runs in a row."""
        if success:
            self.successes, self.failures = self.successes + 1, 0
            if self.successes >= int(probe.get("successThreshold", 1)):
                self.ready = True
        else:
            self.successes, self.failures = 0, self.failures + 1
            if self.failures >= int(probe.get("failureThreshold", 3)):
                self.ready = False


class ReadinessProber:
    """Every running pod's readiness probes on the simulator's nodes."""

    def __init__(self, ctx: SimContext, volume_directory: VolumeDirectory) -> None:
        self._ctx = ctx
        self._volume_directory = volume_directory
        self._states: dict[tuple[str, str], ProbeState] = {}
        self._lock = threading.Lock()

    def readiness(self, pod: Obj) -> dict[str, bool]:
        """Each container's readiness now, after running the probes that are due."""
        uid = str(pod["metadata"]["uid"])
        ready = {}
        for container in pod["spec"]["containers"]:
            probe = container.get("readinessProbe")
            if probe is None:
                ready[container["name"]] = True
                continue
            with self._lock:
                state = self._states.setdefault((uid, container["name"]), ProbeState())
            now = self._ctx.clock.monotonic()
            if state.next_at is None:
                state.next_at = now + float(probe.get("initialDelaySeconds", 0))
            if now >= state.next_at:
                state.record(self._run(pod, container, probe), probe)
                state.next_at = now + float(probe.get("periodSeconds", 10))
            ready[container["name"]] = state.ready
        return ready

    def forget(self, live_uids: set[str]) -> None:
        """Drop the state of pods that are gone (a new pod starts unready, as upstream)."""
        with self._lock:
            for key in [k for k in self._states if k[0] not in live_uids]:
                del self._states[key]

    def _run(self, pod: Obj, container: Obj, probe: Mapping[str, Any]) -> bool:
        what = f"readiness probe of {pod['metadata']['namespace']}/{pod['metadata']['name']}"
        command = (probe.get("exec") or {}).get("command")
        if not command:
            self._ctx.record(f"{what}: only exec probes are simulated")
            return False
        directory = self._working_directory(pod, container)
        if directory is None:
            return False  # the volume is not there (yet, or any more): the command cannot run
        try:
            done = subprocess.run(  # the pod's own probe command, as the kubelet runs it
                [str(part) for part in command],
                cwd=directory,
                capture_output=True,
                timeout=float(probe.get("timeoutSeconds", 1)),
                check=False,
            )
        except subprocess.TimeoutExpired:
            return False
        except OSError as err:  # no such command: the kubelet reports the probe as failed
            self._ctx.record(f"{what}: {err}")
            return False
        return done.returncode == 0

    def _working_directory(self, pod: Obj, container: Obj) -> Path | None:
        working_dir = container.get("workingDir")
        mount = next(
            (m for m in container.get("volumeMounts") or [] if working_dir and m["mountPath"] == working_dir),
            None,
        )
        if mount is None:
            self._ctx.record(
                f"exec probe of {pod['metadata']['namespace']}/{pod['metadata']['name']}: the simulator "
                "runs it only in a volume mounted at the container's workingDir"
            )
            return None
        directory = self._volume_directory(pod, mount["name"])
        return directory if directory is not None and directory.is_dir() else None
