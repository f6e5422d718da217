"""A real Kubernetes node on this machine: containerd, runc and the kubelet, in namespaces of their own.

``devenv.realnode.node.RealNode`` starts etcd, the kube-apiserver, the scheduler and the
controller-manager, containerd and the kubelet inside private mount, network and PID namespaces
(``namespace.NodeNamespace``), so the host paths the kubelet hard-codes are tmpfs only that node
sees, the node has a real (non-loopback) address on a veth pair, and tearing it down kills every
process of it at once. ``image`` assembles OCI images from a root filesystem, for a node without a
registry. The ``realnode`` test tier uses it.

This package's ``__init__`` imports nothing: ``python -m devenv.realnode.anchor`` (the namespaces'
PID 1) starts without loading the rest of devenv.
"""
