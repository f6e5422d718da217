"""Volumes on the real node: the simulated CSI driver's controllers and its real node plugin.

What stays simulated is the storage system: ``SimCluster(storage_only=True)`` provisions PVs of
the driver ``sim.csi.barge.io`` (empty, from a VolumeSnapshot, or a clone) as directories under
``<node workdir>/sim/volumes/``, binds and reclaims them, and cuts VolumeSnapshots as copies. What
is real is everything a pod sees: the kubelet mounts those volumes through the CSI node plugin
(``devenv.realnode.csiplugin``), which it found through its plugin registry, at the paths it uses
for any CSI volume, and the real scheduler, garbage collector and protection controllers act on
the pods and claims.
"""

from __future__ import annotations

import sys
from pathlib import Path

from barge.kube.client import ApiClient
from barge.kube.resources import STORAGE_CLASS, KubeObjects, Resource
from devenv.crds import SNAPSHOT_CRDS, install_crds
from devenv.processes import ServerProcess, StartedWhileEntered
from devenv.realnode.csiplugin import generate
from devenv.realnode.node import NODE_NAME, RealNode
from devenv.simcluster import SimCluster
from devenv.simworld import DRIVER

STORAGE_CLASS_NAME = "standard"
CSI_DRIVER = Resource("CSIDriver", "storage.k8s.io", "v1", "csidrivers", False)
CSI_NODE = Resource("CSINode", "storage.k8s.io", "v1", "csinodes", False)
KUBELET_ROOT = Path("/var/lib/kubelet")  # inside the node
_REGISTER_TIMEOUT = 60.0


class NodeStorage(StartedWhileEntered[SimCluster]):
    """Starts the storage controllers and the node plugin; ready once the kubelet registered the
    driver (its CSINode lists it)."""

    def __init__(self, node: RealNode, api: ApiClient) -> None:
        self.node = node
        self.api = api
        self.objects = KubeObjects(api)
        # Polled twice a second (it lists every claim, volume and snapshot): the node's apiserver
        # serves the chart's pods too, on a machine that may be busy.
        self.sim = SimCluster(api, node.workdir / "sim", storage_only=True, poll_s=0.5)
        self.plugin: ServerProcess | None = None

    def start(self) -> SimCluster:
        install_crds(self.api, SNAPSHOT_CRDS)  # the snapshot controller lists them
        self.objects.create(CSI_DRIVER, {
            "metadata": {"name": DRIVER},
            # No attach (no VolumeAttachment to wait for); no pod info; never chown the data.
            "spec": {"attachRequired": False, "podInfoOnMount": False, "fsGroupPolicy": "None",
                     "volumeLifecycleModes": ["Persistent"]},
        }, exist_ok=True)  # fmt: skip
        self.objects.create(STORAGE_CLASS, {
            "metadata": {"name": STORAGE_CLASS_NAME},
            "provisioner": DRIVER,
            "reclaimPolicy": "Delete",
            "volumeBindingMode": "Immediate",
        }, exist_ok=True)  # fmt: skip
        self.sim.start()
        directory = self.node.workdir / "csi-plugin"
        generated = generate(directory / "generated")
        (self.sim.root / "volumes").mkdir(parents=True, exist_ok=True)
        self.plugin = ServerProcess(
            "csi-plugin",
            [
                *self.node.namespace.enter(), sys.executable, "-m", "devenv.realnode.csiplugin",
                f"--generated={generated}",
                f"--volumes={self.sim.root / 'volumes'}",
                f"--node={NODE_NAME}",
                f"--endpoint={KUBELET_ROOT / 'plugins' / DRIVER / 'csi.sock'}",
                f"--registration={KUBELET_ROOT / 'plugins_registry' / f'{DRIVER}-reg.sock'}",
            ],
            self.node.workdir / "csi-plugin.log",
        )
        self.plugin.start()
        self.plugin.wait_ready(self._registered, _REGISTER_TIMEOUT, f"registered (CSINode {NODE_NAME})")
        return self.sim

    def _registered(self) -> bool:
        csi_node = self.objects.find(CSI_NODE, None, NODE_NAME) or {}
        return any(d.get("name") == DRIVER for d in (csi_node.get("spec") or {}).get("drivers") or [])

    def stop(self) -> None:
        if self.plugin is not None:
            self.plugin.stop()
        self.sim.stop()
