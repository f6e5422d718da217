"""What finding a backup's parent costs as a repository grows (``python -m bench.parent_lookup``,
``make bench-parent``).

Repositories of 100, 1,000 and 10,000 snapshots on the local store, manifests written directly
through the Repository API (no data: the lookup never reads any), as daily backups of many PVCs
kept ``--days`` days. For one PVC, the agent's lookup (``latest_snapshot`` by kind and volume
identity tags) is counted (object LISTs, HEADs, GETs, PUTs) and timed:

* *old format*: the repository as a Barge without source entries left it; the first lookup after
  the upgrade reads every manifest (the old algorithm) and writes that PVC's entries;
* *by source*: the same PVC's next lookup, through its entries;
* *new PVC*: a PVC with no snapshot yet, once the entries are complete (a new repository, or
  after ``barge gc``).

The store lives on /dev/shm where there is one, so the figures count requests rather than disk
syncs; on S3 each request is a round trip (~1-20 ms), which is what the counts are for. Nothing
is asserted: docs/performance.md quotes a run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from barge.repo.crypto import KdfParams
from barge.repo.repository import Repository
from barge.repo.snapshot import Snapshot, SnapshotKind, SnapshotSummary
from barge.repo.sources import SOURCES_PREFIX
from barge.storage.local import LocalDirectoryStore
from tests.faultystore import FaultyStore

SIZES = (100, 1_000, 10_000)
PASSWORD = b"bench"
KIND = SnapshotKind.FILESYSTEM


@dataclass(frozen=True)
class Cost:
    requests: Counter[str]
    seconds: float

    def row(self, snapshots: int, case: str) -> str:
        r = self.requests
        gets = r["get"] + r["get_range"]
        return (
            f"{snapshots:>9,}  {case:<11}  {r['list']:>5}  {r['stat']:>5}  {gets:>6}  {r['put']:>5}"
            f"  {self.seconds * 1000:>9.1f}"
        )


def identity(pvc: int) -> dict[str, str]:
    return {"barge.io/source-namespace": f"ns-{pvc % 7}", "barge.io/source-pvc": f"pvc-{pvc}"}


def fill(repo: Repository, snapshots: int, days: int) -> None:
    """``snapshots`` manifests: ``snapshots // days`` PVCs backed up once a day for ``days`` days."""
    pvcs = max(1, snapshots // days)
    for n in range(snapshots):
        day, pvc = divmod(n, pvcs)
        repo.save_snapshot(
            Snapshot(
                kind=KIND,
                time=f"2026-{1 + day // 28:02d}-{1 + day % 28:02d}T01:{pvc % 60:02d}:00+00:00",
                hostname=f"node-{pvc % 50}",
                paths=(f"/var/lib/kubelet/pods/{n}/volumes/kubernetes.io~csi/pvc-{pvc}/mount",),
                tree=None,
                summary=SnapshotSummary(files=1000, bytes_total=10**9),
                tags=identity(pvc) | {"velero.io/backup-name": f"daily-{day}"},
            )
        )


def measure(counted: FaultyStore, lookup: Callable[[], str | None]) -> tuple[Cost, str | None]:
    counted.calls.clear()
    started = time.perf_counter()
    found = lookup()
    seconds = time.perf_counter() - started
    return Cost(Counter(op for op, _ in counted.calls), seconds), found


def run(base: Path, snapshots: int, days: int) -> list[str]:
    store = LocalDirectoryStore(base / f"repo-{snapshots}")
    Repository.init(store, PASSWORD, kdf=KdfParams.for_tests())
    counted = FaultyStore(store)
    repo = Repository.open(counted, PASSWORD, with_index=False)
    fill(repo, snapshots, days)
    pvc = max(1, snapshots // days) // 2
    shutil.rmtree(store.root / SOURCES_PREFIX.rstrip("/"))  # as a Barge without entries left it
    old, by_scan = measure(counted, lambda: repo.latest_snapshot(KIND, tags=identity(pvc)))
    new, by_entries = measure(counted, lambda: repo.latest_snapshot(KIND, tags=identity(pvc)))
    assert by_scan == by_entries is not None, "the two lookups disagree"
    store.put(f"{SOURCES_PREFIX}complete", b"")  # what gc (or init, for a new repository) writes
    fresh, none = measure(counted, lambda: repo.latest_snapshot(KIND, tags=identity(10**6)))
    assert none is None
    cases = {"old format": old, "by source": new, "new PVC": fresh}
    return [cost.row(snapshots, case) for case, cost in cases.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="snapshots per repository")
    parser.add_argument("--days", type=int, default=30, help="snapshots kept per PVC")
    args = parser.parse_args()
    shm = Path("/dev/shm")
    where = shm if os.access(shm, os.W_OK) else None
    with tempfile.TemporaryDirectory(prefix="barge-bench-", dir=where) as tmp:
        print("snapshots  lookup        LIST   HEAD    GET    PUT    time ms")
        for size in args.sizes:
            for line in run(Path(tmp), size, args.days):
                print(line, flush=True)


if __name__ == "__main__":
    main()
