"""The real-node tier: pods run on a real kubelet, containerd and runc (devenv.realnode).

One node for the session: starting it (control plane, containerd, kubelet, Node Ready) is most of
the tier's time; tests keep to namespaces of their own. ``test_teardown`` starts a second one.
Images come from no registry: busybox is assembled from Debian's static busybox and loaded into
the node (``pods.load_busybox``); the Barge image is built once (``barge_image``) and loaded too.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kubernetes import client

from barge.kube.client import api_client
from barge.kube.resources import KubeObjects
from devenv.realnode.bargeimage import BuiltImage, build_barge_image
from devenv.realnode.node import NodeEndpoints, RealNode
from devenv.realnode.storage import NodeStorage
from devenv.realnode.velero import velero_on_node
from devenv.simcluster import SimCluster
from devenv.veleroserver import LocalVelero
from tests.realnode.pods import load_busybox


@pytest.fixture(scope="session")
def real_node() -> Iterator[RealNode]:
    node = RealNode()
    with node:
        load_busybox(node)
        yield node


@pytest.fixture(scope="session")
def node_endpoints(real_node: RealNode) -> NodeEndpoints:
    assert real_node.endpoints is not None
    return real_node.endpoints


@pytest.fixture(scope="session")
def node_api(node_endpoints: NodeEndpoints) -> Iterator[client.ApiClient]:
    with api_client(node_endpoints.control_plane.kubeconfig) as api:
        yield api


@pytest.fixture(scope="session")
def node_objects(node_api: client.ApiClient) -> KubeObjects:
    return KubeObjects(node_api)


@pytest.fixture(scope="session")
def barge_image(real_node: RealNode) -> BuiltImage:
    """The Barge image, built here and loaded into the node (pods run it with imagePullPolicy Never)."""
    image = build_barge_image(real_node.workdir / "images" / "barge.tar")
    real_node.import_image(image.archive)
    print(f"Barge image: {image.size / 1e6:.1f} MB uncompressed (layers {image.layer_bytes})")
    return image


@pytest.fixture(scope="session")
def node_storage(real_node: RealNode, node_api: client.ApiClient) -> Iterator[SimCluster]:
    """Volumes of the simulated CSI driver (class ``standard``), mounted by the real kubelet
    through the driver's node plugin (``devenv.realnode.storage``)."""
    with NodeStorage(real_node, node_api) as sim:
        yield sim
        assert sim.errors == [], f"the simulated storage hit unexpected errors: {sim.errors}"


@pytest.fixture(scope="module")
def velero(real_node: RealNode, node_objects: KubeObjects, node_storage: SimCluster) -> Iterator[LocalVelero]:
    """Velero (its server and MinIO in the node's network namespace), one per test module."""
    with velero_on_node(real_node, node_objects) as server:
        yield server
