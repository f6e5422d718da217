"""A BackupStorageLocation on the session's MinIO reached through a fault-injecting proxy, for the
e2e tests that need the object store to misbehave (throttle, reset, delay) while data moves."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path

from barge.fs.restore import restore_tree
from barge.kube.resources import BACKUP_STORAGE_LOCATION, SECRET
from barge.repo.repository import Repository
from barge.storage.s3 import S3Options, S3Store
from barge.velero.bsl import REPOSITORY_ROOT, RETRY_TIMEOUT_ANNOTATION
from devenv.faultproxy import FaultProxy
from devenv.localbarge import LocalBarge
from devenv.s3server import S3Endpoint
from tests.integration.test_s3_store import make_bucket


@dataclass(frozen=True)
class FaultyS3:
    server: S3Endpoint
    proxy: FaultProxy
    bucket: str


def faulty_s3_location(
    env: LocalBarge, server: S3Endpoint, proxy: FaultProxy, name: str, retry_timeout_s: int
) -> FaultyS3:
    """A bucket in MinIO and the BackupStorageLocation ``name`` (provider aws) reaching it via the proxy."""
    bucket = make_bucket(server)
    ini = f"[default]\naws_access_key_id={server.access_key}\naws_secret_access_key={server.secret_key}\n"
    env.objects.create(
        SECRET,
        {
            "metadata": {"name": f"{name}-credentials", "namespace": env.velero_namespace},
            "data": {"cloud": base64.b64encode(ini.encode()).decode()},
        },
        exist_ok=True,
    )
    env.objects.create(
        BACKUP_STORAGE_LOCATION,
        {
            "metadata": {
                "name": name,
                "namespace": env.velero_namespace,
                # an annotation, not a config key: Velero's AWS plugin rejects unknown config keys
                "annotations": {RETRY_TIMEOUT_ANNOTATION: str(retry_timeout_s)},
            },
            "spec": {
                "provider": "aws",
                "objectStorage": {"bucket": bucket, "prefix": "cluster"},
                "config": {"region": server.region, "s3Url": proxy.url, "s3ForcePathStyle": "true"},
                "credential": {"name": f"{name}-credentials", "key": "cloud"},
            },
        },
        exist_ok=True,
    )
    return FaultyS3(server, proxy, bucket)


def restored_from_s3(env: LocalBarge, s3: FaultyS3, *, namespace: str, snapshot: str, out: Path) -> Path:
    """Restore straight from MinIO (no proxy) to compare bit for bit with the source."""
    server = s3.server
    store = S3Store(
        S3Options(
            bucket=s3.bucket,
            prefix=f"cluster/{REPOSITORY_ROOT}/{namespace}",
            endpoint=server.url,
            region=server.region,
            path_style=True,
            access_key=server.access_key,
            secret_key=server.secret_key,
        )
    )
    restore_tree(Repository.open(store, env.password.encode()), snapshot, out)
    return out
