"""``barge demo``: Barge's main job end to end on one machine, with nothing but its embedded defaults.

A real etcd + kube-apiserver, a simulated two-node cluster, the coordinator and two agents as
processes; a DataUpload created exactly as Velero creates one, watched to Completed with live
progress; then a DataDownload that restores it into a new PVC, verified bit-exact.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from barge.devenv.controlplane import LocalControlPlane
from barge.devenv.localbarge import LocalBarge
from barge.devenv.simcluster import SimCluster
from barge.devenv.trees import capture, sample_volume
from barge.devenv.velero import data_download, data_upload, restore_target_pvc
from barge.errors import BargeError
from barge.kube.client import api_client
from barge.kube.crds import install_crds
from barge.kube.resources import NAMESPACE, PERSISTENT_VOLUME_CLAIM, KubeObjects

Say = Callable[[str], None]


def run_demo(keep: bool = False, say: Say = print) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="barge-demo-"))
    try:
        return _demo(workdir, say)
    except BargeError:
        keep = True
        raise
    except Exception as err:  # a bug in the demo environment: one line, and the logs kept
        keep = True
        raise BargeError(f"demo failed unexpectedly: {type(err).__name__}: {err}") from err
    finally:
        if keep:
            say(f"\nkept everything (logs, volumes, repository) in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def _step(say: Say, text: str) -> None:
    say(f"\n\033[1m== {text}\033[0m" if sys.stdout.isatty() else f"\n== {text}")


def _demo(workdir: Path, say: Say) -> int:
    _step(say, "Starting a local Kubernetes control plane (etcd + kube-apiserver, no kubelet)")
    with LocalControlPlane(workdir / "control-plane") as endpoints, api_client(endpoints.kubeconfig) as api:
        install_crds(api)
        say(f"API server at {endpoints.url}; Velero's and the CSI snapshot CRDs installed")
        objects = KubeObjects(api)
        with SimCluster(api, workdir / "sim") as sim:
            _step(say, "Starting Barge: one coordinator, one agent per simulated node")
            with LocalBarge(endpoints, sim, objects, workdir / "barge") as barge:
                say(f"nodes {', '.join(barge.nodes)}: agents connected to the coordinator (gRPC, TLS)")
                return _backup_and_restore(barge, objects, workdir, say)


def _backup_and_restore(barge: LocalBarge, objects: KubeObjects, workdir: Path, say: Say) -> int:
    _step(say, "An application volume and its CSI snapshot (as Velero's CSI plugin takes it)")
    for namespace in ("shop", "shop-restored"):
        objects.create(NAMESPACE, {"metadata": {"name": namespace}}, exist_ok=True)
    volume = sample_volume(workdir / "app-volume")
    vs_name, _ = barge.sim.snapshot_source("shop", "data-db-0", volume)
    say(f"PVC shop/data-db-0: {sum(1 for _ in volume.rglob('*'))} entries; VolumeSnapshot {vs_name} ready")

    _step(say, "Velero creates a DataUpload with spec.datamover=barge")
    du = barge.create(
        "DataUpload",
        data_upload(backup="nightly", pvc="data-db-0", source_namespace="shop", volume_snapshot=vs_name),
    )
    name = du["metadata"]["name"]
    done = _follow(barge, "DataUpload", name, say)
    status = done.get("status") or {}
    if status.get("phase") != "Completed":
        say(f"DataUpload {name} ended {status.get('phase')}: {status.get('message')}")
        return 1
    snapshot_id = status["snapshotID"]
    total = status["progress"]["totalBytes"]
    say(f"snapshotID {snapshot_id[:16]}..., {total:,} bytes, moved by the agent on {status.get('node')}")

    _step(say, "Velero restores: a pending target PVC and a DataDownload")
    size = str(max(1, status["progress"]["totalBytes"]))
    objects.create(
        PERSISTENT_VOLUME_CLAIM,
        restore_target_pvc(restore="nightly-restore", name="data-db-0", namespace="shop-restored", size=size),
    )
    dd = barge.create(
        "DataDownload",
        data_download(
            restore="nightly-restore",
            snapshot_id=snapshot_id,
            target_pvc="data-db-0",
            target_namespace="shop-restored",
            source_namespace="shop",
        ),
    )
    done = _follow(barge, "DataDownload", dd["metadata"]["name"], say)
    if (done.get("status") or {}).get("phase") != "Completed":
        say(f"DataDownload ended {(done.get('status') or {}).get('phase')}: {done['status'].get('message')}")
        return 1

    _step(say, "Verifying the restored volume is bit-exact")
    pvc = barge.wait_pvc_bound("shop-restored", "data-db-0")
    restored = barge.sim.claim_data("shop-restored", "data-db-0")
    original, copy = capture(volume), capture(restored)
    copy.pop(b"lost+found", None)
    if original != copy:
        say("the restored volume differs from the original")
        return 1
    say(
        f"PVC shop-restored/data-db-0 bound to {pvc['spec']['volumeName']}: {len(original)} entries identical"
    )
    _step(say, "Done: Velero would now see both operations Completed")
    return 0


def _follow(barge: LocalBarge, kind: str, name: str, say: Say, timeout: float = 300.0) -> dict[str, Any]:
    """Print each phase change and the progress until the CR is final."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        obj = barge.get(kind, name)
        status = obj.get("status") or {}
        progress = status.get("progress") or {}
        line = f"{kind} {name}: {status.get('phase') or 'New':11}"
        if progress.get("totalBytes"):
            line += f" {progress.get('bytesDone', 0) / 2**20:8.1f} / {progress['totalBytes'] / 2**20:.1f} MiB"
        if status.get("node"):
            line += f"  on {status['node']}"
        if line != last:
            say(line)
            last = line
        if status.get("phase") in ("Completed", "Failed", "Canceled"):
            return obj
        time.sleep(0.3)
    raise BargeError(f"{kind} {name} did not finish within {timeout:.0f}s; see the logs")
