"""A test run killed with -9 leaves its node's (empty) cgroups; the next node removes them, and
never those of a node whose owner is alive."""

from __future__ import annotations

import os
import subprocess
import sys

from devenv.realnode.namespace import CGROUP_PREFIX, cgroup_mounts, remove_stale_cgroup_roots


def test_cgroup_roots_of_a_dead_owner_are_removed_and_a_live_owners_kept() -> None:
    exited = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    stale = f"{CGROUP_PREFIX}{exited.stdout.strip()}-test"
    live = f"{CGROUP_PREFIX}{os.getpid()}-test"
    mounts = cgroup_mounts()
    try:
        for mount in mounts:
            for name in (stale, live):
                (mount / name / "kubepods" / "besteffort").mkdir(parents=True)
        removed = remove_stale_cgroup_roots()
        assert sorted(removed) == sorted(mount / stale for mount in mounts)
        assert all((mount / live).exists() and not (mount / stale).exists() for mount in mounts)
    finally:
        for mount in mounts:
            for name in (stale, live):
                for leaf in ("kubepods/besteffort", "kubepods", ""):
                    if (mount / name / leaf).exists():
                        (mount / name / leaf).rmdir()
