"""A real, local Kubernetes control plane (etcd + kube-apiserver) and S3 server, as processes.

Used by the integration tests (envtest-style: no kubelet, scheduler or controllers; tests write
Nodes, Running pods and ready VolumeSnapshots through the real API) and by ``barge demo``. The
binaries are built from pinned Go modules by ``hack/install-tools.sh`` into a cache outside the
repository; :mod:`barge.devenv.tools` finds them.
"""
