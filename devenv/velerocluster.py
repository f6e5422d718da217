"""A whole cluster where the real Velero drives Barge: shared by the Velero test tier and the demo.

One control plane (etcd + kube-apiserver) with Velero's own CRDs (no status subresource, as in a
user's cluster) plus the CSI snapshot CRDs, a simulated cluster, Barge (coordinator + one agent per
node) and ``velero server``, all pointed at one BackupStorageLocation on an S3 server.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from barge.kube.client import api_client
from barge.kube.resources import KubeObjects
from devenv.controlplane import ControlPlaneEndpoints, LocalControlPlane
from devenv.localbarge import LocalBarge
from devenv.simcluster import SimCluster
from devenv.veleroserver import LocalVelero, S3Location, create_bucket


@dataclass
class VeleroCluster:
    """One cluster with Velero and Barge installed and running."""

    endpoints: ControlPlaneEndpoints
    objects: KubeObjects
    sim: SimCluster
    barge: LocalBarge
    velero: LocalVelero
    workdir: Path


@contextlib.contextmanager
def velero_cluster(
    workdir: Path,
    location: S3Location,
    *,
    nodes: tuple[str, ...] = ("node-a", "node-b"),
    password: str | None = None,
    coordinator_config: str = "",
) -> Iterator[VeleroCluster]:
    """Start everything; ``password``: the repository password to install (disaster recovery
    reuses the first cluster's, as an operator restores the saved Secret)."""
    workdir.mkdir(parents=True, exist_ok=True)
    create_bucket(location, workdir)
    with contextlib.ExitStack() as stack:
        endpoints = stack.enter_context(LocalControlPlane(workdir / "control-plane"))
        api = stack.enter_context(api_client(endpoints.kubeconfig))
        objects = KubeObjects(api)
        velero = LocalVelero(endpoints, objects, workdir / "velero", location).install()
        sim = stack.enter_context(SimCluster(api, workdir / "sim"))
        barge = LocalBarge(
            endpoints,
            sim,
            objects,
            workdir / "barge",
            nodes=nodes,
            velero_namespace=velero.namespace,
            bsl=velero.bsl(),
            password=password,
            coordinator_config=coordinator_config,
        )
        stack.enter_context(barge)
        stack.enter_context(velero)
        yield VeleroCluster(endpoints, objects, sim, barge, velero, workdir)
