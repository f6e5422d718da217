"""What repository maintenance costs: Barge vs restic vs kopia on the same data (``make bench-maintenance``).

Each tool backs up the mixed tree and then the sparse image (two snapshots), forgets the tree's
snapshot, and then:

* reclaims: Barge ``gc`` twice (mark, then sweep: what two scheduled runs do), restic ``prune``,
  kopia ``maintenance run --full --safety=none`` (the full maintenance Velero's Kopia path runs
  daily; ``--safety=none`` deletes at once, as the other two here do);
* verifies structure: ``barge check``, ``restic check``, ``kopia snapshot verify``;
* verifies 10% of the data: ``barge check --read-data-subset 10%``, ``restic check
  --read-data-subset 10%``, ``kopia snapshot verify --verify-files-percent 10``.

Reported: wall seconds, peak RSS of the tool's process, and the repository's bytes before and
after reclaiming. Nothing is asserted; the ratios are read from the table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from bench.datasets import disk_usage, ensure, tree_bytes
from bench.run import ROOT, Barge, Kopia, Restic, Tool, run

STEPS = ("reclaim", "check", "check10pct")


def snapshot_ids(tool: Tool) -> list[str]:
    """Snapshot IDs, oldest first."""
    if isinstance(tool, Barge):
        _, _, out = run([tool.bin, "snapshots", "--json"], tool.env)
        return [s["id"] for s in json.loads(out)]
    if isinstance(tool, Restic):
        _, _, out = run(["restic", "snapshots", "--json"], tool.env)
        return [s["id"] for s in json.loads(out)]
    assert isinstance(tool, Kopia)
    _, _, out = run([tool.bin, "snapshot", "list", "--all", "--json"], tool.env)
    return [s["id"] for s in json.loads(out)]


def forget(tool: Tool, snapshot_id: str) -> None:
    if isinstance(tool, Barge):
        run([tool.bin, "forget", snapshot_id], tool.env)
    elif isinstance(tool, Restic):
        run(["restic", "forget", snapshot_id], tool.env)
    else:
        assert isinstance(tool, Kopia)
        run([tool.bin, "snapshot", "delete", snapshot_id, "--delete"], tool.env)


def steps(tool: Tool) -> dict[str, list[list[str]]]:
    if isinstance(tool, Barge):
        b = tool.bin
        return {"reclaim": [[b, "gc"], [b, "gc"]], "check": [[b, "check"]],
                "check10pct": [[b, "check", "--read-data-subset", "10%"]]}  # fmt: skip
    if isinstance(tool, Restic):
        return {"reclaim": [["restic", "prune"]], "check": [["restic", "check"]],
                "check10pct": [["restic", "check", "--read-data-subset", "10%"]]}  # fmt: skip
    assert isinstance(tool, Kopia)
    k = tool.bin
    return {"reclaim": [[k, "maintenance", "run", "--full", "--safety=none"]],
            "check": [[k, "snapshot", "verify"]],
            "check10pct": [[k, "snapshot", "verify", "--verify-files-percent", "10"]]}  # fmt: skip


@dataclass
class Costs:
    before: int = 0  # repository bytes after the forget
    after: int = 0  # ... and after reclaiming
    steps: dict[str, tuple[float, float]] = field(default_factory=dict)  # step -> (seconds, RSS MiB)


def bench_tool(tool_cls: type[Tool], tree: Path, image: Path, scratch: Path) -> Costs:
    work = Path(tempfile.mkdtemp(prefix=f"maint-{tool_cls.name}-", dir=scratch))
    tool = tool_cls(work)
    try:
        tool.init()
        run(tool.backup(tree), tool.env)
        run(tool.backup_block(image), tool.env)
        forget(tool, snapshot_ids(tool)[0])
        costs = Costs(before=disk_usage(tool.repo))
        for step, commands in steps(tool).items():
            seconds, rss = 0.0, 0.0
            for argv in commands:
                s, r, _ = run(argv, tool.env)
                seconds, rss = seconds + s, max(rss, r)
            costs.steps[step] = (seconds, rss)
            if step == "reclaim":
                costs.after = disk_usage(tool.repo)
        return costs
    finally:
        shutil.rmtree(work)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scale", type=float, default=0.25, help="dataset size factor (1.0: make bench's)")
    parser.add_argument("--tools", default="barge,restic,kopia")
    args = parser.parse_args()
    cache = Path(os.environ.get("BARGE_CACHE_DIR", Path.home() / ".cache" / "barge")) / "bench"
    subprocess.run(
        [sys.executable, "-m", "bench.datasets", str(cache), str(args.scale)], check=True, cwd=ROOT
    )
    tree, image = ensure(cache, scale=args.scale)
    print(f"forgotten: the mixed tree, {tree_bytes(tree) / 2**20:.0f} MiB; kept: the sparse image")
    scratch = cache / "runs"
    scratch.mkdir(parents=True, exist_ok=True)
    classes = {c.name: c for c in (Barge, Restic, Kopia)}
    results = {name: bench_tool(classes[name], tree, image, scratch) for name in args.tools.split(",")}
    print("| tool | step | s | peak RSS MiB |")
    print("|---|---|---:|---:|")
    for name, costs in results.items():
        for step in STEPS:
            seconds, rss = costs.steps[step]
            print(f"| {name} | {step} | {seconds:.2f} | {rss:.0f} |")
    print("\n| tool | repo MiB before | after reclaiming |")
    print("|---|---:|---:|")
    for name, costs in results.items():
        print(f"| {name} | {costs.before / 2**20:.1f} | {costs.after / 2**20:.1f} |")
    if "barge" in results:
        for peer in (p for p in results if p != "barge"):
            ratios = ", ".join(
                f"{step} {results[peer].steps[step][0] / results['barge'].steps[step][0]:.2f}x"
                for step in STEPS
            )
            print(f"Barge speed vs {peer} (peer time / Barge time): {ratios}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
