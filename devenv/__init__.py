"""Barge's development environment, never shipped: a real, local Kubernetes control plane
(etcd + kube-apiserver), S3/GCS/Azure servers and Velero as processes, the cluster simulator, a
throw-away PKI, a fault proxy, and the CRDs the tests install.

Used by the integration and end-to-end tests (envtest-style: no kubelet, scheduler or controllers;
tests write Nodes, Running pods and ready VolumeSnapshots through the real API), the real-node tier
(``devenv.realnode``: a real kubelet, containerd and runc in namespaces of their own), the benchmarks and
the demo (``python -m devenv.demo``, which ``make demo`` runs). The wheel and the image leave this
package out (``tests/unit/test_packaging.py``); the product may not import it (import-linter). The
binaries are built from pinned Go modules by ``hack/install-tools.sh`` into a cache outside the
repository; :mod:`devenv.tools` finds them.
"""
