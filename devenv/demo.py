"""The demo (``make demo``): Barge's main job end to end on one machine, driven by the real Velero.

A real etcd + kube-apiserver, a simulated two-node cluster, MinIO as the backup storage location,
the coordinator and two agents as processes, and the unmodified ``velero`` server and CLI (all
built from pinned Go modules). An application namespace with a filesystem and a block volume is
backed up with ``velero backup create --snapshot-move-data --data-mover barge``, the volumes are
deleted, ``velero restore create`` brings them back through Barge, and the restore is checked
bit-exact. The location's folders and the VolumeSnapshots left over are shown at the end.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from barge.errors import BargeError
from barge.kube.resources import (
    BACKUP,
    DATA_DOWNLOAD,
    DATA_UPLOAD,
    NAMESPACE,
    PERSISTENT_VOLUME_CLAIM,
    RESTORE,
    VOLUME_SNAPSHOT,
    VOLUME_SNAPSHOT_CONTENT,
    Resource,
)
from devenv.s3server import LocalS3Server
from devenv.simsnapshots import copy_volume_data
from devenv.trees import capture, sample_volume
from devenv.velerocluster import VeleroCluster, velero_cluster
from devenv.veleroserver import S3Location, folders
from devenv.waiting import wait_for

Say = Callable[[str], None]
APP = "shop"
CLAIMS = ("data-db-0", "raw-disk")
FINAL = ("Completed", "PartiallyFailed", "Failed", "FailedValidation", "Canceled")


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
            say(f"\nkept everything (logs, volumes, bucket) in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def _step(say: Say, text: str) -> None:
    say(f"\n\033[1m== {text}\033[0m" if sys.stdout.isatty() else f"\n== {text}")


def _demo(workdir: Path, say: Say) -> int:
    _step(say, "Starting MinIO, a local Kubernetes control plane, Barge and Velero")
    with LocalS3Server(workdir / "minio") as s3:
        location = S3Location(s3, bucket="velero", prefix="cluster")
        with velero_cluster(workdir / "cluster", location) as cluster:
            say(f"API server {cluster.endpoints.url}; MinIO {s3.url}; BackupStorageLocation "
                f"s3://{location.bucket}/{location.prefix}")  # fmt: skip
            say(f"Barge: a coordinator and agents on {', '.join(cluster.barge.nodes)} (gRPC, TLS)")
            say(cluster.velero.cli("version").strip().replace("\n", " ").replace("\t", ""))
            return _backup_and_restore(cluster, workdir, say)


def _backup_and_restore(cluster: VeleroCluster, workdir: Path, say: Say) -> int:
    sim, objects, velero = cluster.sim, cluster.objects, cluster.velero
    _step(say, f"An application namespace '{APP}' with a filesystem and a block volume")
    objects.create(NAMESPACE, {"metadata": {"name": APP}}, exist_ok=True)
    live_fs = sim.provision_claim(APP, CLAIMS[0], sample_volume(workdir / "app-volume"))
    image = workdir / "raw.img"
    with image.open("wb") as out:
        out.truncate(64 * 2**20)
        out.seek(10 * 2**20)
        out.write(bytes(range(256)) * 8192)
    live_block = sim.provision_claim(APP, CLAIMS[1], image, block=True)
    say(f"PVC {APP}/{CLAIMS[0]}: {sum(1 for _ in live_fs.rglob('*'))} entries; "
        f"PVC {APP}/{CLAIMS[1]}: a 64 MiB block device")  # fmt: skip
    expected_fs = capture(live_fs)
    expected_block = live_block.read_bytes()

    _step(say, f"velero backup create nightly --include-namespaces {APP} --snapshot-move-data "
               "--data-mover barge")  # fmt: skip
    velero.cli("backup", "create", "nightly", "--include-namespaces", APP,
               "--snapshot-move-data", "--data-mover", "barge")  # fmt: skip
    backup = _follow(
        cluster, BACKUP, "nightly", say, movers=DATA_UPLOAD, selector="velero.io/backup-name=nightly"
    )
    if backup["status"]["phase"] != "Completed":
        say(velero.describe("backup", "nightly"))
        return 1
    say(_excerpt(velero.describe("backup", "nightly"), "CSI Snapshots:", 18))

    _step(say, f"The volumes are lost: the PVCs in '{APP}' are deleted")
    for claim in CLAIMS:
        objects.delete(PERSISTENT_VOLUME_CLAIM, APP, claim)
    wait_for(lambda: not objects.list(PERSISTENT_VOLUME_CLAIM, APP), 60, what="the PVCs to be deleted")

    _step(say, "velero restore create restore-1 --from-backup nightly")
    velero.cli("restore", "create", "restore-1", "--from-backup", "nightly")
    restore = _follow(
        cluster, RESTORE, "restore-1", say, movers=DATA_DOWNLOAD, selector="velero.io/restore-name=restore-1"
    )
    if restore["status"]["phase"] != "Completed":
        say(velero.describe("restore", "restore-1"))
        return 1

    _step(say, "Verifying the restored volumes are bit-exact")
    for claim in CLAIMS:
        cluster.barge.wait_pvc_bound(APP, claim)
    restored = capture(sim.claim_data(APP, CLAIMS[0]))
    restored.pop(b"lost+found", None)
    if restored != expected_fs or sim.claim_data(APP, CLAIMS[1]).read_bytes() != expected_block:
        say("the restored volumes differ from the originals")
        copy_volume_data(sim.claim_data(APP, CLAIMS[0]), workdir / "restored-fs", False)
        return 1
    say(f"{CLAIMS[0]}: {len(expected_fs)} entries identical (content, modes, times, links, holes); "
        f"{CLAIMS[1]}: 64 MiB identical")  # fmt: skip

    _step(say, "What is left behind")
    status = velero.bsl_status()
    say(f"BackupStorageLocation: {status.get('phase')} (validated {status.get('lastValidationTime')})")
    snapshots = objects.list(VOLUME_SNAPSHOT, None)
    contents = objects.list(VOLUME_SNAPSHOT_CONTENT, None)
    say(f"VolumeSnapshots: {len(snapshots)}, VolumeSnapshotContents: {len(contents)}")
    top = ", ".join(folders(cluster.velero.location, workdir))
    repositories = ", ".join(folders(cluster.velero.location, workdir, "plugins/barge"))
    say(f"bucket {velero.location.bucket}/{velero.location.prefix}/: {top}; Barge's repositories under "
        f"plugins/barge/: {repositories}")  # fmt: skip
    _step(say, "Done: Velero backed up and restored both volumes through Barge")
    return 0


def _excerpt(text: str, heading: str, lines: int) -> str:
    found = text.split(heading, 1)
    return heading + "\n".join(found[1].splitlines()[:lines]) if len(found) == 2 else text.strip()


def _follow(
    cluster: VeleroCluster, resource: Resource, name: str, say: Say, *, movers: Resource, selector: str
) -> dict[str, Any]:
    """Print the Velero object's phase and each data mover CR's progress until Velero is done."""
    printed: dict[str, str] = {}

    def finished() -> dict[str, Any] | None:
        obj = cluster.objects.get(resource, cluster.velero.namespace, name)
        phase = (obj.get("status") or {}).get("phase") or "New"
        _print_once(printed, resource.kind, f"{resource.kind} {name}: {phase}", say)
        for cr in cluster.objects.list(movers, cluster.velero.namespace, selector):
            _print_once(printed, cr["metadata"]["name"], _progress_line(cr), say)
        return obj if phase in FINAL else None

    return wait_for(finished, 600, what=f"{resource.kind} {name} to finish (see the logs)", interval=0.5)


def _print_once(printed: dict[str, str], key: str, line: str, say: Say) -> None:
    if printed.get(key) != line:
        printed[key] = line
        say(line)


def _progress_line(cr: dict[str, Any]) -> str:
    status = cr.get("status") or {}
    progress = status.get("progress") or {}
    target = cr["spec"].get("sourcePVC") or (cr["spec"].get("targetVolume") or {}).get("pvc", "")
    line = f"  {cr['kind']} {cr['metadata']['name']} ({target}): {status.get('phase') or 'New':10}"
    if progress.get("totalBytes"):
        line += f" {progress.get('bytesDone', 0) / 2**20:7.1f} / {progress['totalBytes'] / 2**20:.1f} MiB"
    if status.get("node"):
        line += f" on {status['node']}"
    return line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devenv.demo", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--keep", action="store_true", help="keep the work directory (logs, volumes, repository)"
    )
    return run_demo(keep=parser.parse_args(argv).keep)


if __name__ == "__main__":
    raise SystemExit(main())
