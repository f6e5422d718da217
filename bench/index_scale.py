"""What opening a large repository costs an agent (``python -m bench.index_scale``, ``make bench-index``).

A synthetic repository on the local store (in /dev/shm where there is one; ``--s3``: on a MinIO
started for the run): one real snapshot of a
small tree (its packs really stored, so its first byte can be read), ``--blobs`` more blobs written
directly as index objects (``encode_indexes``: objects of up to a million blobs, as garbage
collection consolidates them, plus ``--recent`` small ones, as backups since the last collection
leave them; their packs are never stored, nothing reads them) and ``--snapshots`` more manifests
through the Repository API. Then, in a fresh child process each, as an agent receiving an
assignment:

* *ready*: unlock the repository and load its index (``Repository.open``), find the parent
  (``latest_snapshot``) and start a writer: what precedes the first byte of a backup;
* *first byte*: from there, the parent's root tree and its first file's first blob read: what
  precedes the first byte of a restore;
* *cpu*: the CPU seconds (user + system) the child spent up to the first byte, which a machine
  shared with other work disturbs less than the wall time;
* *peak RSS*: the child's VmHWM, and its RSS after imports alone (*base*).

*cold* is the first open on the machine (an empty cache directory), *warm* the next one, *+1 new*
one more after another agent's backup added an index object of 2,000 blobs. Nothing is asserted:
docs/performance.md quotes a run.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from barge.fs.backup import BackupOptions, backup_tree
from barge.repo.index import MAX_BLOBS_PER_OBJECT, encode_indexes, index_key
from barge.repo.pack import BlobLocation, BlobType
from barge.repo.repository import Repository
from barge.repo.snapshot import Snapshot, SnapshotKind, SnapshotSummary
from barge.storage.url import open_store

SIZES = (100_000, 1_000_000)
PASSWORD = b"bench"
BLOBS_PER_PACK = 100
TREE_PATHS = ["/bench/source"]


def vm_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise ValueError(f"no {field} line")


def synthetic_packs(rng: random.Random, blobs: int) -> dict[bytes, dict[bytes, BlobLocation]]:
    """``blobs`` random blob IDs in packs of BLOBS_PER_PACK, laid out as a writer lays them out."""
    packs: dict[bytes, dict[bytes, BlobLocation]] = {}
    for first in range(0, blobs, BLOBS_PER_PACK):
        pack_id = rng.randbytes(32)
        offset, locations = 0, {}
        for _ in range(min(BLOBS_PER_PACK, blobs - first)):
            stored = rng.randrange(1 << 10, 1 << 21)
            locations[rng.randbytes(32)] = BlobLocation(BlobType.DATA, pack_id, offset, stored, stored)
            offset += stored
        packs[pack_id] = locations
    return packs


def write_index_objects(repo: Repository, blobs: int, recent: int, seed: int) -> int:
    """``blobs`` blobs in index objects: full ones as gc writes them, then ``recent`` small ones."""
    rng = random.Random(seed)
    small = min(blobs // (2 * recent), 2_000) if recent else 0
    written = 0
    sizes = [small] * recent if small else []
    rest = blobs - sum(sizes)
    sizes = [min(MAX_BLOBS_PER_OBJECT, rest - n) for n in range(0, rest, MAX_BLOBS_PER_OBJECT)] + sizes
    for size in sizes:
        for index_id, sealed in encode_indexes(repo.keys, synthetic_packs(rng, size)):
            repo.store.put(index_key(index_id), sealed)
            written += 1
    return written


def write_manifests(repo: Repository, snapshots: int) -> None:
    """Daily backups of ``snapshots // 30`` PVCs (other sources than the real snapshot's)."""
    pvcs = max(1, snapshots // 30)
    for n in range(snapshots):
        day, pvc = divmod(n, pvcs)
        repo.save_snapshot(
            Snapshot(
                kind=SnapshotKind.FILESYSTEM,
                time=f"2026-{1 + day // 28 % 12:02d}-{1 + day % 28:02d}T01:{pvc % 60:02d}:00+00:00",
                hostname=f"node-{pvc % 50}",
                paths=(f"/var/lib/kubelet/pods/{n}/volumes/kubernetes.io~csi/pvc-{pvc}/mount",),
                tree=None,
                summary=SnapshotSummary(files=1000, bytes_total=10**9),
                tags={"barge.io/source-pvc": f"pvc-{pvc}"},
            )
        )


def build(url: str, root: Path, blobs: int, snapshots: int, recent: int) -> tuple[int, float]:
    """The synthetic repository at ``url`` (its source tree under ``root``): how many index
    objects, and seconds to write it all."""
    started = time.perf_counter()
    repo = Repository.init(open_store(url), PASSWORD)
    source = root / "source"
    (source / "dir").mkdir(parents=True)
    for n in range(20):
        (source / "dir" / f"file-{n}").write_bytes(os.urandom(64 * 1024))
    backup_tree(repo, source, options=BackupOptions(tags={"bench": "index"}))
    write_index_objects(repo, blobs, recent, seed=blobs)
    write_manifests(repo, snapshots)
    return len(repo.index_objects()), time.perf_counter() - started


def child(url: str, source: str, cache: Path) -> None:
    """One agent's view: open, find the parent, start a writer; then read the parent's first byte."""
    base = vm_kib("VmRSS")
    # An older checkout (before the local index) has no cache_dir: the bench compares both.
    options = {"cache_dir": cache} if "cache_dir" in inspect.signature(Repository.open).parameters else {}
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    repo = Repository.open(open_store(url), PASSWORD, **options)
    opened = time.perf_counter()
    parent = repo.latest_snapshot(SnapshotKind.FILESYSTEM, paths=[source])
    assert parent is not None, "the real snapshot is not found"
    writer = repo.writer()
    ready = time.perf_counter()
    snapshot = repo.load_snapshot(parent)
    assert snapshot.tree is not None
    (directory,) = repo.read_tree(snapshot.tree)
    assert directory.subtree is not None
    first = next(node for node in repo.read_tree(directory.subtree) if node.content)
    blob_id = first.content[0][0]
    assert blob_id is not None
    data = repo.read_blob(blob_id)
    first_byte = time.perf_counter()
    used = resource.getrusage(resource.RUSAGE_SELF)
    assert data
    writer.abort()
    print(json.dumps({
        "open": opened - started, "ready": ready - started, "first_byte": first_byte - started,
        "cpu": used.ru_utime + used.ru_stime - cpu.ru_utime - cpu.ru_stime,
        "hwm_mib": vm_kib("VmHWM") / 1024, "base_mib": base / 1024,
    }))  # fmt: skip


def measure(url: str, source: Path, cache: Path) -> dict[str, float]:
    """One fresh process's costs (its imports are not timed: an agent has them loaded)."""
    command = [sys.executable, "-m", "bench.index_scale", "--child", url, str(source), str(cache)]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    result: dict[str, float] = json.loads(out.splitlines()[-1])
    return result


def run(base: Path, location: str | None, blobs: int, snapshots: int, recent: int) -> list[str]:
    """``location``: an S3 URL with ``{name}`` for the repository's prefix; None: the local store."""
    root = base / f"repo-{blobs}"
    url = location.format(name=f"repo-{blobs}") if location else f"file://{root / 'repo'}"
    objects, seconds = build(url, root, blobs, snapshots, recent)
    wrote = f"{blobs:,} blobs in {objects} index objects and {snapshots:,} manifests"
    print(f"  (wrote {wrote} in {seconds:.0f} s)")
    rows = []
    for case in ("cold", "warm", "+1 new"):
        if case == "+1 new":  # another agent's backup since: one more index object to fetch
            repo = Repository.open(open_store(url), PASSWORD, with_index=False)
            write_index_objects(repo, 2_000, 0, seed=blobs + 1)
        m = measure(url, root / "source", root / "cache")
        rows.append(
            f"{blobs:>11,}  {snapshots:>9,}  {case:<6}  {m['open']:>7.2f}  {m['ready']:>7.2f}"
            f"  {m['first_byte']:>10.2f}  {m['cpu']:>5.2f}  {m['hwm_mib']:>8.0f}  {m['base_mib']:>8.0f}"
        )
    return rows


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], Path(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="blobs per repository")
    parser.add_argument("--snapshots", type=int, default=1_000, help="manifests per repository")
    parser.add_argument("--recent", type=int, default=50, help="small index objects besides the full ones")
    parser.add_argument("--dir", type=Path, help="where to build the repositories (default: /dev/shm)")
    parser.add_argument("--s3", action="store_true", help="the repositories on a local MinIO instead")
    args = parser.parse_args()
    shm = Path("/dev/shm")
    where = args.dir or (shm if os.access(shm, os.W_OK) else None)
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="barge-bench-index-", dir=where))
        location = minio_location(stack, Path(tmp)) if args.s3 else None
        print("      blobs  snapshots  case    open s  ready s  1st byte s  cpu s  peak MiB  base MiB")
        for size in args.sizes:
            for line in run(Path(tmp), location, size, args.snapshots, args.recent):
                print(line, flush=True)


def minio_location(stack: contextlib.ExitStack, tmp: Path) -> str:
    """A bucket on a MinIO started for the run, as an S3 URL with ``{name}`` for the prefix."""
    # Imported here: the measured child processes import this module and must not pay for them.
    import boto3  # noqa: PLC0415

    from devenv.s3server import LocalS3Server  # noqa: PLC0415

    endpoint = stack.enter_context(LocalS3Server())
    boto3.client(
        "s3",
        endpoint_url=endpoint.url,
        aws_access_key_id=endpoint.access_key,
        aws_secret_access_key=endpoint.secret_key,
        region_name=endpoint.region,
    ).create_bucket(Bucket="bench")
    credentials = tmp / "credentials"
    credentials.write_text(
        f"[default]\naws_access_key_id={endpoint.access_key}\naws_secret_access_key={endpoint.secret_key}\n"
    )
    return f"s3://bench/{{name}}?endpoint={endpoint.url}&path_style=true&credentials_file={credentials}"


if __name__ == "__main__":
    main()
