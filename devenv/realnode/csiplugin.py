"""The simulated CSI driver's node plugin, which the real kubelet calls to mount its volumes.

A simulated volume's data is a directory, ``<volumes>/<volumeHandle>`` (``devenv.simstorage``
provisions it; the handle is the PV's name). The kubelet publishes a volume by calling
``NodePublishVolume``, which bind-mounts that directory onto the pod's target path
(``/var/lib/kubelet/pods/<uid>/volumes/kubernetes.io~csi/<pv>/mount``), the path Barge's agent
reads in production. No staging, no attach (the CSIDriver object says ``attachRequired: false``),
Filesystem volumes only.

The kubelet finds the plugin through its plugin watcher: a registration socket in
``/var/lib/kubelet/plugins_registry/`` answers ``Registration.GetInfo`` with the CSI socket's path
(what node-driver-registrar does for a real driver). One gRPC server serves both sockets. It runs
inside the node's mount namespace (``nsenter``), so its bind mounts are where the kubelet and
containerd see them.

    python -m devenv.realnode.csiplugin --generated DIR --volumes DIR --node NAME \
        --endpoint SOCKET --registration SOCKET

The protobuf code (CSI spec v1.9.0, the kubelet's pluginregistration/v1) is generated into
``--generated`` by ``generate`` from the protos in the Go module cache, which the pinned kubelet's
build downloads.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import subprocess
import sys
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc

from devenv.simworld import DRIVER

# The versions hack/tools/kubelet/go.mod pins (the kubelet built there speaks them).
CSI_SPEC = "github.com/container-storage-interface/spec@v1.9.0"
PLUGIN_REGISTRATION = "k8s.io/kubelet@v0.36.3/pkg/apis/pluginregistration/v1"
_PROTOS = ((CSI_SPEC, "csi.proto"), (PLUGIN_REGISTRATION, "api.proto"))


def _module_cache() -> Path:
    configured = os.environ.get("GOMODCACHE")
    if configured:
        return Path(configured)
    gopath = os.environ.get("GOPATH") or str(Path.home() / "go")
    return Path(gopath.split(os.pathsep)[0]) / "pkg" / "mod"


def generate(out: Path) -> Path:
    """protoc the CSI and plugin-registration protos into ``out``; returns ``out``."""
    includes = []
    for module, name in _PROTOS:
        directory = _module_cache() / module
        if not (directory / name).is_file():
            raise FileNotFoundError(
                f"{directory / name} is missing from the Go module cache: run `(cd hack/tools/kubelet && "
                "go mod download github.com/container-storage-interface/spec k8s.io/kubelet)` (building "
                "the pinned kubelet with hack/install-tools.sh downloads them too)"
            )
        includes.append(f"-I{directory}")
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", *includes,
         f"--python_out={out}", f"--grpc_python_out={out}", *(name for _, name in _PROTOS)],
        check=True, stdin=subprocess.DEVNULL, capture_output=True,
    )  # fmt: skip
    return out


def _mount(*args: str) -> None:
    # -n: no utab entry (libmount would write it under the node's /run, which is fine, but keep it quiet)
    done = subprocess.run(["mount", "-n", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise OSError(f"mount {' '.join(args)}: {done.stderr.strip()}")


def serve(generated: Path, volumes: Path, node: str, endpoint: Path, registration: Path) -> None:
    """Serve Identity, Node and Registration until SIGTERM."""
    sys.path.insert(0, str(generated))
    csi: Any = importlib.import_module("csi_pb2")
    csi_grpc: Any = importlib.import_module("csi_pb2_grpc")
    reg: Any = importlib.import_module("api_pb2")
    reg_grpc: Any = importlib.import_module("api_pb2_grpc")

    class Identity(csi_grpc.IdentityServicer):  # type: ignore[misc]
        def GetPluginInfo(self, request: Any, context: Any) -> Any:
            return csi.GetPluginInfoResponse(name=DRIVER, vendor_version="0.1.0")

        def GetPluginCapabilities(self, request: Any, context: Any) -> Any:
            return csi.GetPluginCapabilitiesResponse()

        def Probe(self, request: Any, context: Any) -> Any:
            return csi.ProbeResponse()

    class Node(csi_grpc.NodeServicer):  # type: ignore[misc]
        def NodeGetInfo(self, request: Any, context: Any) -> Any:
            return csi.NodeGetInfoResponse(node_id=node)

        def NodeGetCapabilities(self, request: Any, context: Any) -> Any:
            return csi.NodeGetCapabilitiesResponse()  # no staging, no stats

        def NodePublishVolume(self, request: Any, context: Any) -> Any:
            if request.volume_capability.HasField("block"):
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "Filesystem volumes only")
            source = volumes / request.volume_id
            if not source.is_dir() or "/" in request.volume_id:
                context.abort(grpc.StatusCode.NOT_FOUND, f"volume {request.volume_id!r}: no data at {source}")
            target = Path(request.target_path)
            if not os.path.ismount(target):  # publishing again is a no-op (the spec's idempotence)
                target.mkdir(parents=True, exist_ok=True)
                _mount("--bind", str(source.resolve()), str(target))
                if request.readonly:
                    _mount("-o", "remount,bind,ro", str(target))
            print(f"published {request.volume_id} at {target} (readonly={request.readonly})", flush=True)
            return csi.NodePublishVolumeResponse()

        def NodeUnpublishVolume(self, request: Any, context: Any) -> Any:
            target = Path(request.target_path)
            if os.path.ismount(target):
                _mount_undo(target)
            if target.is_dir():
                target.rmdir()
            print(f"unpublished {request.volume_id} from {target}", flush=True)
            return csi.NodeUnpublishVolumeResponse()

    class Registration(reg_grpc.RegistrationServicer):  # type: ignore[misc]
        def GetInfo(self, request: Any, context: Any) -> Any:
            return reg.PluginInfo(
                type="CSIPlugin", name=DRIVER, endpoint=str(endpoint), supported_versions=["1.0.0"]
            )

        def NotifyRegistrationStatus(self, request: Any, context: Any) -> Any:
            print(f"registered={request.plugin_registered} {request.error}", flush=True)
            return reg.RegistrationStatusResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    csi_grpc.add_IdentityServicer_to_server(Identity(), server)
    csi_grpc.add_NodeServicer_to_server(Node(), server)
    reg_grpc.add_RegistrationServicer_to_server(Registration(), server)
    for socket_path in (endpoint, registration):
        socket_path.parent.mkdir(parents=True, exist_ok=True)
        socket_path.unlink(missing_ok=True)
        server.add_insecure_port(f"unix://{socket_path}")
    server.start()
    print(f"serving {DRIVER} on {endpoint}, registered through {registration}", flush=True)
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    server.stop(grace=2).wait()
    registration.unlink(missing_ok=True)


def _mount_undo(target: Path) -> None:
    done = subprocess.run(["umount", "-n", str(target)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise OSError(f"umount {target}: {done.stderr.strip()}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="devenv.realnode.csiplugin")
    parser.add_argument("--generated", type=Path, required=True)
    parser.add_argument("--volumes", type=Path, required=True)
    parser.add_argument("--node", required=True)
    parser.add_argument("--endpoint", type=Path, required=True)
    parser.add_argument("--registration", type=Path, required=True)
    args = parser.parse_args(argv)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    serve(args.generated, args.volumes, args.node, args.endpoint, args.registration)
    return 0


if __name__ == "__main__":
    sys.exit(main())
