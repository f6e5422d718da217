"""The agent's word that it moves an exposer pod's data: what makes that pod Ready.

The namespace's PodDisruptionBudget protects only Ready exposer pods (unhealthyPodEvictionPolicy
AlwaysAllow), and a pod is Ready only while its exec readiness probe finds, in the pod's emptyDir
``EXPOSER_STATUS_VOLUME``, a Unix time still in the future (docs/control-plane.md "Drains"). The
agent on the node writes that time (now + ``VOUCH_TTL_S``) every ``VOUCH_REFRESH_S`` while it runs
the pod's assignment and a coordinator is on its stream, and removes it otherwise. So whatever is
down, the pod turns unready within a bound and a drain evicts it: a dead or hung agent stops
renewing (the time passes), one without a coordinator withdraws at once, since nobody could hand
the work off.

The kubelet removes the emptyDir when it tears the pod down (after an eviction, say): the agent
then hands the work back at once, so that it lets go of the volume the kubelet must unmount, and
whichever coordinator runs next re-exposes the volume elsewhere.
"""

from __future__ import annotations

import os
from pathlib import Path

from barge.control.naming import EXPOSER_STATUS_VOLUME, VOUCH_FILE, kubelet_empty_dir_path


class Vouch:
    """One exposer pod's vouch file, seen from the node (through the kubelet root)."""

    def __init__(self, kubelet_root: Path, pod_uid: str) -> None:
        self.directory = Path(kubelet_empty_dir_path(str(kubelet_root), pod_uid, EXPOSER_STATUS_VOLUME))

    def pod_has_it(self) -> bool:
        """The pod has a status volume and the kubelet has not torn it down (an exposer pod made by
        an earlier coordinator has none: there is nothing to vouch in, nor a teardown to notice)."""
        return self.directory.is_dir()

    def give(self, until: int) -> None:
        """Vouch until the Unix time ``until``; atomic (the probe never reads half a number). Never
        creates the directory: a torn-down pod must stay torn down."""
        partial = self.directory / f".{VOUCH_FILE}.partial"
        partial.write_text(f"{until}\n")
        os.replace(partial, self.directory / VOUCH_FILE)

    def withdraw(self) -> None:
        """The probe fails from now on; fine if the pod or its file is already gone."""
        (self.directory / VOUCH_FILE).unlink(missing_ok=True)
