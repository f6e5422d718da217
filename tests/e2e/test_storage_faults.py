"""Storage and local faults while data moves: a throttling / resetting / dead object store (a
fault-injecting proxy in front of the real MinIO), unreadable source files, a full disk.

One environment for the module. The agents run as root WITHOUT CAP_DAC_OVERRIDE and
CAP_DAC_READ_SEARCH (``setpriv``), so a mode-000 file in a volume gets the kernel's real EACCES,
as it would for an agent on a volume whose files it may not read.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from barge.kube.resources import BACKUP_STORAGE_LOCATION, NAMESPACE, KubeObjects
from barge.velero.bsl import RETRY_TIMEOUT_ANNOTATION
from devenv.controlplane import ControlPlaneEndpoints
from devenv.faultproxy import FaultProxy
from devenv.localbarge import LocalBarge
from devenv.s3server import S3Endpoint
from devenv.simcluster import SimCluster
from devenv.trees import capture
from devenv.velero import data_upload
from tests.e2e.faulty_s3 import FaultyS3, faulty_s3_location, restored_from_s3
from tests.fsbuild import MIB, write

pytestmark = pytest.mark.integration
NODES = ("store-a", "store-b")
S3_BSL = "faulty-s3"
FULL_BSL = "tiny-disk"
RETRY_TIMEOUT_S = 20  # per request; the default (180 s) would make the dead-store test slow
DROP_FILE_READ_OVERRIDE = ("setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--")


@pytest.fixture(scope="module")
def env(
    control_plane: ControlPlaneEndpoints,
    kube: client.ApiClient,
    objects: KubeObjects,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[LocalBarge]:
    with SimCluster(kube, tmp_path_factory.mktemp("store-sim")) as sim:
        barge = LocalBarge(
            control_plane,
            sim,
            objects,
            tmp_path_factory.mktemp("store-barge"),
            nodes=NODES,
            coordinator_config="prepareTimeout: 2m\nagentGracePeriod: 10s\n",
            agent_command_prefix=DROP_FILE_READ_OVERRIDE,
        )
        with barge:
            yield barge
        assert sim.errors == []


@pytest.fixture(scope="module")
def proxy(s3_server: S3Endpoint) -> Iterator[FaultProxy]:
    with FaultProxy(s3_server.url) as running:
        yield running


@pytest.fixture(scope="module")
def s3(s3_server: S3Endpoint, proxy: FaultProxy, env: LocalBarge) -> FaultyS3:
    """A bucket in MinIO and a BackupStorageLocation (provider aws) that reaches it via the proxy."""
    return faulty_s3_location(env, s3_server, proxy, S3_BSL, RETRY_TIMEOUT_S)


@pytest.fixture
def namespace(objects: KubeObjects) -> str:
    name = f"store-{uuid.uuid4().hex[:6]}"
    objects.create(NAMESPACE, {"metadata": {"name": name}})
    return name


def upload(
    env: LocalBarge, namespace: str, volume: Path, bsl: str = "default", config: dict[str, str] | None = None
) -> str:
    vs_name, _ = env.sim.snapshot_source(namespace, "data", volume)
    body = data_upload(
        backup="store", pvc="data", source_namespace=namespace, volume_snapshot=vs_name, bsl=bsl
    )
    body["spec"]["operationTimeout"] = "5m"
    if config:
        body["spec"]["dataMoverConfig"] = config
    return str(env.create("DataUpload", body)["metadata"]["name"])


def random_volume(root: Path, files: int, size: int) -> Path:
    for index in range(files):
        write(root / f"d{index % 3}" / f"f{index}.bin", os.urandom(size))
    return root


# ------------------------------------------------------------------------------ object storage


def test_throttling_resets_and_delays_are_retried_and_the_upload_completes_bit_exact(
    env: LocalBarge, s3: FaultyS3, namespace: str, tmp_path: Path
) -> None:
    proxy = s3.proxy
    volume = random_volume(tmp_path / "v", files=12, size=4 * MIB)
    before = proxy.stats()
    proxy.plan.reset(2)  # the repository's first requests: two connections reset unanswered ...
    proxy.plan.throttle(4)  # ... then four 503 SlowDown (6 in a row: within obstore's 8 retries)
    proxy.plan.fail_fraction(0.3)  # then about one request in three is throttled
    proxy.plan.delay(0.05)
    started = time.monotonic()
    try:
        name = upload(env, namespace, volume, bsl=S3_BSL)
        done = env.wait_phase("DataUpload", name, timeout=240)
    finally:
        proxy.plan.clear()
    took = time.monotonic() - started
    after = proxy.stats()
    final = done["status"]
    assert final["phase"] == "Completed", final.get("message")
    throttled, reset = after.throttled - before.throttled, after.reset - before.reset
    assert throttled > 4  # the random throttling hit too
    assert reset == 2
    out = restored_from_s3(env, s3, namespace=namespace, snapshot=final["snapshotID"], out=tmp_path / "out")
    assert capture(out) == capture(volume)
    print(
        f"S3 faults: {throttled} x 503 SlowDown, {reset} connection resets, 50 ms delay per request; "
        f"48 MiB upload Completed in {took:.1f}s, restored bit-exact"
    )


def test_a_store_that_keeps_failing_fails_the_upload_with_a_clear_message_in_bounded_time(
    env: LocalBarge, s3: FaultyS3, namespace: str, tmp_path: Path
) -> None:
    proxy = s3.proxy
    volume = random_volume(tmp_path / "v", files=2, size=MIB)
    proxy.plan.fail_always()
    started = time.monotonic()
    try:
        name = upload(env, namespace, volume, bsl=S3_BSL)
        done = env.wait_phase("DataUpload", name, timeout=240)
    finally:
        proxy.plan.clear()
    took = time.monotonic() - started
    final = done["status"]
    assert final["phase"] == "Failed"
    assert "object store error after retries" in final["message"], final["message"]
    assert "503" in final["message"] or "SlowDown" in final["message"], final["message"]
    assert RETRY_TIMEOUT_S <= took <= RETRY_TIMEOUT_S + 60  # retried for the configured time, no longer
    print(
        f"S3 down for good ({RETRY_TIMEOUT_ANNOTATION} {RETRY_TIMEOUT_S}): Failed after {took:.1f}s with: "
        f"{final['message']}"
    )


# ------------------------------------------------------------------------------ local faults


def locked_volume(root: Path) -> Path:
    write(root / "app" / "data.bin", os.urandom(MIB))
    write(root / "app" / "secret.key", os.urandom(100))
    os.chmod(root / "app" / "secret.key", 0)
    return root


def test_an_unreadable_file_fails_the_upload_by_default_naming_it(
    env: LocalBarge, namespace: str, tmp_path: Path
) -> None:
    name = upload(env, namespace, locked_volume(tmp_path / "v"))
    final = env.wait_phase("DataUpload", name, timeout=120)["status"]
    assert final["phase"] == "Failed"
    assert "cannot read /app/secret.key: Permission denied" in final["message"], final["message"]
    assert "barge.io/on-unreadable: skip" in final["message"]


def test_an_unreadable_file_is_skipped_and_reported_when_the_data_upload_asks(
    env: LocalBarge, namespace: str, tmp_path: Path
) -> None:
    config = {"barge.io/on-unreadable": "skip"}
    name = upload(env, namespace, locked_volume(tmp_path / "v"), config=config)
    final = env.wait_phase("DataUpload", name, timeout=120)["status"]
    assert final["phase"] == "Completed", final.get("message")
    assert "1 unreadable file(s) skipped" in final["message"]
    assert "/app/secret.key: Permission denied" in final["message"]
    assert final["dataMoverResult"]["barge.io/skipped"] == "1"


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs: the repository's disk (a full hostPath or NFS share)."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def test_a_full_repository_disk_fails_the_upload_with_a_clear_message(
    env: LocalBarge, namespace: str, tiny_disk: Path, tmp_path: Path
) -> None:
    env.objects.create(
        BACKUP_STORAGE_LOCATION,
        {
            "metadata": {"name": FULL_BSL, "namespace": env.velero_namespace},
            "spec": {
                "provider": "barge.io/local",
                "objectStorage": {"bucket": "backups"},
                "config": {"path": str(tiny_disk)},
            },
        },
        exist_ok=True,
    )
    volume = random_volume(tmp_path / "v", files=12, size=4 * MIB)  # 48 MiB of noise: cannot fit
    started = time.monotonic()
    name = upload(env, namespace, volume, bsl=FULL_BSL)
    final = env.wait_phase("DataUpload", name, timeout=120)["status"]
    took = time.monotonic() - started
    assert final["phase"] == "Failed"
    assert "No space left on device" in final["message"], final["message"]
    assert "cannot store" in final["message"]  # the repository's disk, not a source file
    assert all(process.exit_code() is None for process in env.processes.agents.values())
    print(f"repository disk full: Failed after {took:.1f}s with: {final['message']}")


@pytest.fixture
def full_cache_dirs(env: LocalBarge) -> Iterator[list[Path]]:
    """Every agent's --cache-dir on a 1 MiB tmpfs that is already full."""
    mounts = [env.workdir / "agents" / node / "cache" for node in NODES]
    mounted: list[Path] = []
    try:
        for mount in mounts:
            mount.mkdir(parents=True, exist_ok=True)
            subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], check=True)
            mounted.append(mount)
            fill(mount / "filler")
        yield mounts
    finally:
        for mount in mounted:
            subprocess.run(["umount", "-l", str(mount)], check=True)


def fill(path: Path) -> None:
    def write_until_full() -> None:
        with path.open("wb", buffering=0) as out:
            while True:
                out.write(b"\0" * 65536)

    with pytest.raises(OSError, match="No space left on device"):
        write_until_full()


def test_a_full_agent_cache_dir_does_not_matter_credentials_stay_in_memory(
    env: LocalBarge, s3: FaultyS3, namespace: str, full_cache_dirs: list[Path], tmp_path: Path
) -> None:
    """A full cache dir only makes the agent build the repository index in a temporary file, and
    the BSL's credentials go to the store in memory (they used to be written there, so a full
    cache dir failed every S3 upload): no file but the filler."""
    name = upload(env, namespace, random_volume(tmp_path / "v", files=1, size=MIB), bsl=S3_BSL)
    final = env.wait_phase("DataUpload", name, timeout=120)["status"]
    assert final["phase"] == "Completed", final.get("message")
    for cache in full_cache_dirs:
        assert sorted(path.name for path in cache.rglob("*") if not path.is_dir()) == ["filler"]
