"""Velero on the real node: MinIO and ``velero server`` inside the node's network namespace.

Both serve on the node's address, which the host reaches through the veth pair and the pods as a
local address of their node, so one BackupStorageLocation URL works for Velero, the test and
Barge's pods. Velero stays a process (no Velero image is built here), as in the Velero tier; inside
the node its controller-runtime metrics port (``:8080``, not configurable) is the node's, so it
cannot collide with another Velero on the machine.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from barge.kube.resources import KubeObjects
from devenv.realnode.node import RealNode
from devenv.s3server import LocalS3Server
from devenv.veleroserver import LocalVelero, S3Location, create_bucket

BUCKET = "velero"


@contextlib.contextmanager
def velero_on_node(node: RealNode, objects: KubeObjects) -> Iterator[LocalVelero]:
    """What ``velero install`` leaves (CRDs, namespace, credentials, BSL, snapshot class) and the
    server, its location Available; stopped afterwards (the node's teardown removes the files)."""
    if node.endpoints is None:
        raise RuntimeError("the node is not started")
    workdir = node.workdir / "velero"
    inside, address = node.namespace.enter(), node.namespace.address
    with LocalS3Server(workdir / "s3", address=address, command_prefix=inside) as endpoint:
        location = S3Location(endpoint, bucket=BUCKET, prefix="real-node")
        create_bucket(location, workdir)
        velero = LocalVelero(
            node.endpoints.control_plane, objects, workdir / "server", location,
            address=address, command_prefix=inside,
        )  # fmt: skip
        with velero:
            yield velero
