"""A real node: etcd, the kube-apiserver, kube-scheduler and kube-controller-manager, containerd
with runc, the kubelet, kube-proxy and the cluster DNS (CoreDNS), on this machine.

Everything runs inside the node's namespaces (``namespace.NodeNamespace``): the control plane
listens on the node's veth address, which its serving certificate names, so the host reaches it
and so do the pods; the kubelet registers the node with that address, so the apiserver reaches the
kubelet for pod logs (TLS both ways, the kubelet authorizing through the apiserver). Pods get
addresses from the CNI bridge plugin, and real projected ServiceAccount tokens (the ServiceAccount
admission is on; the controller-manager creates the ``default`` ServiceAccounts); kube-proxy routes
ClusterIP Services (the ``kubernetes`` one to the apiserver). CoreDNS, with the ``kubernetes``
plugin a user's cluster runs, answers for ``cluster.local`` on the node's address, which the kubelet hands
the pods as their nameserver (``clusterDNS``), so pods reach Services by name. No registry: images
are loaded with ``ctr images import`` (``import_image``); the pod sandbox image is busybox sleeping.

Everything the node writes is in its work directory, in the tmpfs only it sees (the host paths the
kubelet and containerd hard-code: ``/var/lib``, ``/var/log``, ``/run``), or in its cgroup root;
``stop`` removes all of it. cgroup v1 hosts are supported (``failCgroupV1: false``, cgroupfs).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from barge.errors import PermanentError, TemporaryError
from barge.kube.client import api_client
from barge.kube.resources import NODE, KubeObjects, Resource
from devenv.controlplane import ControlPlaneEndpoints, LocalControlPlane, write_kubeconfig
from devenv.pki import CertificateAuthority
from devenv.processes import ServerProcess, StartedWhileEntered, http_ok
from devenv.realnode.image import ImageRef, busybox_layer, oci_archive
from devenv.realnode.namespace import NodeNamespace
from devenv.tools import cache_dir, tool_path

NODE_NAME = "barge-node"
POD_SUBNET = "10.244.0.0/24"  # inside the node's network namespace only
PAUSE_IMAGE = ImageRef("pause", "busybox")
KUBELET_PORT = 10250
KUBE_PROXY_HEALTH_PORT = 10256
CLUSTER_DOMAIN = "cluster.local"
DNS_HEALTH_PORT, DNS_READY_PORT = 10054, 10055  # CoreDNS's /health and /ready, on the node's address
# What CoreDNS's kubernetes plugin reads (upstream's system:coredns ClusterRole).
_CLUSTER_DNS_RULES = [
    {"apiGroups": [""], "resources": ["endpoints", "services", "pods", "namespaces"],
     "verbs": ["list", "watch"]},
    {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]},
]
_CLUSTER_ROLE = Resource("ClusterRole", "rbac.authorization.k8s.io", "v1", "clusterroles", False)
_CLUSTER_ROLE_BINDING = Resource(
    "ClusterRoleBinding", "rbac.authorization.k8s.io", "v1", "clusterrolebindings", False
)
_IPTABLES_COMMANDS = (
    "iptables", "iptables-save", "iptables-restore", "ip6tables", "ip6tables-save", "ip6tables-restore",
)
# Hidden behind tmpfs inside the node: the host paths the kubelet and containerd hard-code
# (/var/lib/kubelet, /var/log/pods, /run/containerd/s, /var/run/netns, /var/lib/cni...).
NODE_TMPFS = ("/run", "/var/lib", "/var/log")
_START_TIMEOUT = 120.0
_HOST_PROGRAMS = ("unshare", "nsenter", "mount", "ip")
_TOOLS = (
    "etcd", "kube-apiserver", "kubelet", "kube-scheduler", "kube-controller-manager", "kube-proxy",
    "xtables-nft-multi", "coredns",
    "containerd", "containerd-shim-runc-v2", "ctr", "runc", "cni", "busybox",
)


@dataclass(frozen=True)
class NodeEndpoints:
    """What a test needs of a running real node."""

    control_plane: ControlPlaneEndpoints
    node_name: str
    address: str  # the node's address; the apiserver listens on it too
    workdir: Path  # visible at the same path inside the node (hostPath volumes can live here)


class RealNode(StartedWhileEntered[NodeEndpoints]):
    """Starts the control plane, containerd and the kubelet in a node namespace; ``stop`` removes
    every trace (processes, mounts, veth, cgroups, work directory)."""

    def __init__(self, workdir: Path | None = None, keep_workdir: bool = False) -> None:
        self._own_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="barge-realnode-"))
        self._keep = keep_workdir
        self.namespace = NodeNamespace(self.workdir, NODE_TMPFS)
        self.control_plane: LocalControlPlane | None = None
        self.containerd: ServerProcess | None = None
        self.kubelet: ServerProcess | None = None
        self.controllers: list[ServerProcess] = []
        self.endpoints: NodeEndpoints | None = None

    @property
    def containerd_socket(self) -> Path:
        return self.workdir / "containerd" / "containerd.sock"

    def start(self) -> NodeEndpoints:
        _check_host()
        self.namespace.start()
        plane = self._start_control_plane()
        self._start_containerd()
        pause = self.workdir / "images" / "pause.tar"
        pause.parent.mkdir()
        oci_archive(pause, PAUSE_IMAGE, [busybox_layer()], entrypoint=["/bin/sleep", "2147483647"])
        self.import_image(pause)
        self._start_kubelet(plane)
        self._start_controllers(plane)
        self._start_kube_proxy(plane)
        self._start_cluster_dns(plane)
        self.endpoints = NodeEndpoints(plane, NODE_NAME, self.namespace.address, self.workdir)
        return self.endpoints

    def import_image(self, archive: Path) -> None:
        """Load an OCI image archive (``image.oci_archive``) into the CRI's image store."""
        done = subprocess.run(
            [str(tool_path("ctr")), f"--address={self.containerd_socket}", "--namespace=k8s.io",
             "images", "import", str(archive)],
            capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False,
        )
        if done.returncode != 0:
            raise TemporaryError(f"ctr images import {archive} failed: {done.stderr.strip()}")

    def _start_control_plane(self) -> ControlPlaneEndpoints:
        """etcd and the apiserver on the node's address; the Node authorizer and NodeRestriction
        for the kubelet; the apiserver reaches the kubelet with the admin certificate and checks the
        kubelet's serving certificate against the CA."""
        plane_dir = self.workdir / "control-plane"
        plane_dir.mkdir()
        pki = plane_dir / "pki"
        self.control_plane = LocalControlPlane(
            plane_dir,
            address=self.namespace.address,
            command_prefix=self.namespace.enter(),
            apiserver_flags={
                "--authorization-mode": "Node,RBAC",
                "--enable-admission-plugins": "NodeRestriction",
                "--kubelet-client-certificate": str(pki / "admin.crt"),
                "--kubelet-client-key": str(pki / "admin.key"),
                "--kubelet-certificate-authority": str(pki / "ca.crt"),
                "--kubelet-preferred-address-types": "InternalIP",
                # The controller-manager creates every namespace's ``default`` ServiceAccount: pods
                # get real projected tokens, which the kubelet requests and refreshes.
                "--disable-admission-plugins": "",
            },
        )
        return self.control_plane.start()

    def _node_env(self) -> dict[str, str]:
        """PATH first finds the cached runtime (containerd finds its shim there, the shim runc)."""
        return {**os.environ, "PATH": f"{cache_dir() / 'bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}"}

    def _start_containerd(self) -> None:
        directory = self.workdir / "containerd"
        (directory / "root").mkdir(parents=True)
        cni = self.workdir / "cni"
        (cni / "net.d").mkdir(parents=True)
        (cni / "net.d" / "10-barge.conflist").write_text(json.dumps(self._cni_config(cni), indent=2))
        config = directory / "config.toml"
        config.write_text(self._containerd_config(directory, cni))
        self.containerd = ServerProcess(
            "containerd",
            [*self.namespace.enter(), str(tool_path("containerd")), f"--config={config}"],
            self.workdir / "containerd.log",
            env=self._node_env(),
        )
        self.containerd.start()
        self.containerd.wait_ready(self._containerd_answers, _START_TIMEOUT, "serving its socket")

    def _containerd_answers(self) -> bool:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(str(self.containerd_socket))
        return True

    def _cni_config(self, cni: Path) -> dict[str, Any]:
        """One bridge with the pods' gateway; no masquerading (no iptables on the node)."""
        return {
            "cniVersion": "1.0.0",
            "name": "barge-pods",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": "cni0",
                    "isGateway": True,
                    "ipMasq": False,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": POD_SUBNET}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": str(cni / "ipam"),
                    },
                }
            ],
        }

    def _containerd_config(self, directory: Path, cni: Path) -> str:
        """containerd 1.6's config (version 2). ``restrict_oom_score_adj``: this process lacks
        CAP_SYS_RESOURCE, and runc fails to lower a container's oom_score_adj below its own."""
        cri = '[plugins."io.containerd.grpc.v1.cri"'
        return f"""version = 2
root = "{directory / 'root'}"
state = "/run/containerd"
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing",
]

[grpc]
  address = "{self.containerd_socket}"

[plugins."io.containerd.internal.v1.opt"]
  path = "{directory / 'opt'}"

{cri}]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  disable_apparmor = true
  enable_selinux = false

{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

{cri}.containerd.runtimes.runc.options]
  BinaryName = "{tool_path('runc')}"
  SystemdCgroup = false

{cri}.cni]
  bin_dir = "{tool_path('cni')}"
  conf_dir = "{cni / 'net.d'}"
  max_conf_num = 1
"""

    def _client_kubeconfig(
        self, plane: ControlPlaneEndpoints, directory: Path, user: str, group: str | None = None
    ) -> Path:
        """A kubeconfig with a client certificate for ``user`` (the identities RBAC's bootstrap
        policy knows: ``system:kube-scheduler``...)."""
        ca = CertificateAuthority.load(plane.pki.ca)
        client = ca.issue(directory, "client", user, organization=group)
        return write_kubeconfig(
            directory / "client.kubeconfig",
            plane.url,
            plane.pki.ca.cert_path,
            {"client-certificate": str(client.cert_path), "client-key": str(client.key_path)},
            user,
        )

    def _start_kubelet(self, plane: ControlPlaneEndpoints) -> None:
        directory = self.workdir / "kubelet"
        directory.mkdir()
        address = self.namespace.address
        kubeconfig = self._client_kubeconfig(plane, directory, f"system:node:{NODE_NAME}", "system:nodes")
        serving = CertificateAuthority.load(plane.pki.ca).issue(
            directory, "serving", NODE_NAME, dns_names=(NODE_NAME,), ip_addresses=(address,), server=True
        )
        config = directory / "config.yaml"
        config.write_text(yaml.safe_dump(self._kubelet_config(plane, serving.cert_path, serving.key_path)))
        self.kubelet = ServerProcess(
            "kubelet",
            [
                *self.namespace.enter(),
                str(tool_path("kubelet")),
                f"--config={config}",
                f"--kubeconfig={kubeconfig}",
                f"--hostname-override={NODE_NAME}",
                f"--node-ip={address}",
                "--v=1",
            ],
            self.workdir / "kubelet.log",
            env=self._node_env(),
        )
        self.kubelet.start()
        with api_client(plane.kubeconfig) as api:
            objects = KubeObjects(api)
            self.kubelet.wait_ready(lambda: _node_ready(objects), _START_TIMEOUT, f"Node {NODE_NAME} Ready")

    def _start_controllers(self, plane: ControlPlaneEndpoints) -> None:
        """kube-scheduler and kube-controller-manager (one replica each: no leader election), each
        with its own identity; ready when their health endpoints answer."""
        ports = {"kube-scheduler": 10259, "kube-controller-manager": 10257}
        for name, port in ports.items():
            directory = self.workdir / name
            directory.mkdir()
            kubeconfig = self._client_kubeconfig(plane, directory, f"system:{name}")
            flags = [
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                f"--bind-address={self.namespace.address}",
                f"--secure-port={port}",
                f"--cert-dir={directory / 'serving'}",
                "--leader-elect=false",
            ]
            if name == "kube-controller-manager":
                flags += [
                    "--use-service-account-credentials=true",
                    f"--root-ca-file={plane.pki.ca.cert_path}",
                ]
            process = ServerProcess(
                name, [*self.namespace.enter(), str(tool_path(name)), *flags], self.workdir / f"{name}.log"
            )
            self.controllers.append(process)
            process.start()
        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE  # their self-signed serving certificates; only /healthz is read
        for process, port in zip(self.controllers, ports.values(), strict=True):
            process.wait_ready(
                functools.partial(http_ok, self.namespace.address, port, "/healthz", insecure),
                _START_TIMEOUT,
                "healthy (/healthz)",
            )

    def _start_kube_proxy(self, plane: ControlPlaneEndpoints) -> None:
        """kube-proxy in iptables mode (Debian's iptables on nf_tables, from the cache). It
        masquerades all Service traffic: without br_netfilter, a reply from a pod on the same bridge
        would otherwise bypass the node and miss the reverse translation. It leaves the host-wide
        conntrack table size alone."""
        directory = self.workdir / "kube-proxy"
        (directory / "bin").mkdir(parents=True)
        multi = tool_path("xtables-nft-multi").resolve()
        for name in _IPTABLES_COMMANDS:
            (directory / "bin" / name).symlink_to(multi)  # it answers to the name it is called by
        (libraries,) = (multi.parents[1] / "lib").glob("*-linux-gnu")
        kubeconfig = self._client_kubeconfig(plane, directory, "system:kube-proxy")
        config = directory / "config.yaml"
        config.write_text(yaml.safe_dump({
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(kubeconfig)},
            "hostnameOverride": NODE_NAME,
            "mode": "iptables",
            "clusterCIDR": POD_SUBNET,
            "iptables": {"masqueradeAll": True},
            "conntrack": {"maxPerCore": 0},
            "healthzBindAddress": f"{self.namespace.address}:{KUBE_PROXY_HEALTH_PORT}",
            "metricsBindAddress": "127.0.0.1:10249",
        }))
        env = self._node_env()
        env.update(
            PATH=f"{directory / 'bin'}:{env['PATH']}",
            LD_LIBRARY_PATH=str(libraries),
            XTABLES_LIBDIR=str(libraries / "xtables"),
        )
        process = ServerProcess(
            "kube-proxy",
            [*self.namespace.enter(), str(tool_path("kube-proxy")), f"--config={config}"],
            self.workdir / "kube-proxy.log",
            env=env,
        )
        self.controllers.append(process)
        process.start()
        process.wait_ready(
            functools.partial(http_ok, self.namespace.address, KUBE_PROXY_HEALTH_PORT, "/healthz"),
            _START_TIMEOUT,
            "healthy (/healthz)",
        )

    def _start_cluster_dns(self, plane: ControlPlaneEndpoints) -> None:
        """CoreDNS serving ``cluster.local`` from the apiserver (as the user ``system:coredns``,
        with upstream's ClusterRole) on port 53 of the node's address; ready when its kubernetes
        plugin has synced (``/ready``)."""
        directory = self.workdir / "coredns"
        directory.mkdir()
        user = "system:coredns"
        with api_client(plane.kubeconfig) as api:
            objects = KubeObjects(api)
            objects.create(_CLUSTER_ROLE, {"metadata": {"name": user}, "rules": _CLUSTER_DNS_RULES})
            objects.create(_CLUSTER_ROLE_BINDING, {
                "metadata": {"name": user},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": user},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
            })
        kubeconfig = self._client_kubeconfig(plane, directory, user)
        address = self.namespace.address
        corefile = directory / "Corefile"
        corefile.write_text(f"""{CLUSTER_DOMAIN}:53 in-addr.arpa:53 ip6.arpa:53 {{
    bind {address}
    errors
    log
    health {address}:{DNS_HEALTH_PORT}
    ready {address}:{DNS_READY_PORT}
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfig}
    }}
    cache 30
}}
""")
        process = ServerProcess(
            "coredns",
            [*self.namespace.enter(), str(tool_path("coredns")), f"-conf={corefile}"],
            self.workdir / "coredns.log",
        )
        self.controllers.append(process)
        process.start()
        process.wait_ready(
            functools.partial(http_ok, address, DNS_READY_PORT, "/ready"), _START_TIMEOUT, "ready (/ready)"
        )

    def _kubelet_config(self, plane: ControlPlaneEndpoints, cert: Path, key: Path) -> dict[str, Any]:
        """cgroup v1 with cgroupfs under the node's own cgroup root; webhook authentication and
        authorization (the apiserver decides who may read logs); no eviction or image GC on a
        shared machine's disk; the flexvolume directory in the work directory (the kubelet creates
        it)."""
        return {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "failCgroupV1": False,
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": self.namespace.cgroup_root,
            "containerRuntimeEndpoint": f"unix://{self.containerd_socket}",
            "address": self.namespace.address,
            "port": KUBELET_PORT,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "tlsCertFile": str(cert),
            "tlsPrivateKeyFile": str(key),
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(plane.pki.ca.cert_path)},
            },
            "authorization": {"mode": "Webhook"},
            "resolvConf": "",  # pods get only the cluster's nameserver and search domains
            "clusterDNS": [self.namespace.address],
            "clusterDomain": CLUSTER_DOMAIN,
            "failSwapOn": False,
            "protectKernelDefaults": False,
            "evictionHard": {
                "memory.available": "50Mi",
                "nodefs.available": "1%",
                "imagefs.available": "1%",
                "nodefs.inodesFree": "1%",
            },
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "volumePluginDir": str(self.workdir / "kubelet" / "volume-plugins"),
            "serializeImagePulls": False,
        }

    def stop(self) -> None:
        """Stop the kubelet and containerd, the control plane, then every process left in the
        node's namespaces; remove the cgroups and the work directory."""
        for process in (*self.controllers, self.kubelet, self.containerd):
            if process is not None:
                process.stop()
        if self.control_plane is not None:
            self.control_plane.stop()
        self.namespace.stop()
        if self._own_workdir and not self._keep:
            shutil.rmtree(self.workdir, ignore_errors=True)


def _check_host() -> None:
    """Fail at once, saying what is missing, rather than half-way through starting."""
    if os.geteuid() != 0:
        raise PermanentError(
            "a real node needs root (it creates mount, network and PID namespaces, a veth pair and "
            "cgroups): run the realnode tier as root, e.g. in a VM or a privileged CI container"
        )
    missing = [program for program in _HOST_PROGRAMS if shutil.which(program) is None]
    if missing:
        raise PermanentError(
            f"a real node needs {', '.join(missing)} on PATH (util-linux and iproute2 packages)"
        )
    for tool in _TOOLS:
        tool_path(tool)  # a missing one fails now, with the command that installs it


def _node_ready(objects: KubeObjects) -> bool:
    node = objects.find(NODE, None, NODE_NAME)
    conditions = (node or {}).get("status", {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
