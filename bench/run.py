"""Barge vs restic vs kopia on the same data, same machine, same run (``make bench``).

Each tool gets a fresh local repository per repetition and runs: full backup of the mixed tree,
no-change re-backup, 1%-change re-backup, restore of the latest snapshot, and a full backup of the
sparse block image. Reported: median wall time, MB/s (of the dataset's logical size), peak RSS of
the tool's process, repository size; then Barge/peer ratios. Nothing here is asserted: speed
targets are read from this table, never from unit tests.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bench.datasets import apply_change, disk_usage, ensure, tree_bytes

ROOT = Path(__file__).resolve().parent.parent
OPS = ("full", "nochange", "change1pct", "restore", "block")
Timings = dict[str, tuple[float, float]]


@dataclass(frozen=True)
class Target:
    """Issue 14's speed targets: Barge's speed over ``peer``'s on ``op`` must be at least ``ratio``."""

    op: str
    peer: str
    ratio: float


TARGETS = (
    Target("full", "restic", 1.5),
    Target("full", "kopia", 1.0),
    Target("restore", "restic", 1.5),
    Target("restore", "kopia", 1.0),
    Target("nochange", "kopia", 1.0),
    Target("change1pct", "kopia", 1.0),
    Target("block", "restic", 2.0),
    Target("block", "kopia", 2.0),
)
RSS_TARGET_MIB = 300  # Barge's peak RSS in every operation


@dataclass
class Result:
    seconds: list[float] = field(default_factory=list)
    rss_mib: list[float] = field(default_factory=list)


def run(argv: list[str], env: dict[str, str], cwd: Path | None = None) -> tuple[float, float, str]:
    """Run one tool command; wall seconds, the process's peak RSS (MiB) and its stdout."""
    started = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    out, err = proc.stdout.read(), proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv[:4])} failed ({proc.returncode}): {err.decode(errors='replace')[-800:]}"
        )
    return seconds, usage.ru_maxrss / 1024, out.decode(errors="replace")


class Tool:
    name = ""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.repo = work / "repo"
        self.env = {**os.environ, "TMPDIR": str(work)}

    def init(self) -> None: ...
    def backup(self, source: Path) -> list[str]: ...
    def backup_block(self, image: Path) -> list[str]:
        return self.backup(image)

    def restore(self, target: Path) -> list[str]: ...

    def profiled(self, op: str, argv: list[str], report: Path) -> list[str]:
        return argv  # only Barge's own commands are profiled


class Barge(Tool):
    name = "barge"

    def __init__(self, work: Path) -> None:
        super().__init__(work)
        self.bin = str(ROOT / ".venv" / "bin" / "barge")
        self.env |= {"BARGE_REPOSITORY": f"file://{self.repo}", "BARGE_PASSWORD": "bench-password"}

    def init(self) -> None:
        # Byte-compiled, as pip installs a package: with PYTHONDONTWRITEBYTECODE set (as on the
        # machines that ran this), an editable install compiled every module on every command.
        for package in ("barge", "coordinator", "agent"):
            compileall.compile_dir(ROOT / package, quiet=1)
        run([self.bin, "repo", "init"], self.env)

    def backup(self, source: Path) -> list[str]:
        return [self.bin, "backup", str(source), "--json"]

    def backup_block(self, image: Path) -> list[str]:
        return [self.bin, "backup", "--block", str(image), "--json"]

    def restore(self, target: Path) -> list[str]:
        _, _, out = run([self.bin, "snapshots", "--json"], self.env)
        latest = [s for s in json.loads(out) if s["kind"] == "fs"][-1]["id"]
        return [self.bin, "restore", latest, str(target)]

    def profiled(self, op: str, argv: list[str], report: Path) -> list[str]:
        wrapper = [sys.executable, "-m", "bench.profile", "--report", str(report), "--label", f"barge {op}"]
        return [*wrapper, "--", *argv[1:]]


class Restic(Tool):
    name = "restic"

    def __init__(self, work: Path) -> None:
        super().__init__(work)
        self.env |= {"RESTIC_REPOSITORY": str(self.repo), "RESTIC_PASSWORD": "bench-password",
                     "RESTIC_CACHE_DIR": str(work / "cache")}  # fmt: skip

    def init(self) -> None:
        run(["restic", "init"], self.env)

    def backup(self, source: Path) -> list[str]:
        return ["restic", "backup", "--quiet", str(source)]

    def restore(self, target: Path) -> list[str]:
        return ["restic", "restore", "latest", "--target", str(target)]


class Kopia(Tool):
    name = "kopia"

    def __init__(self, work: Path) -> None:
        super().__init__(work)
        self.bin = str(
            Path(os.environ.get("BARGE_CACHE_DIR", Path.home() / ".cache" / "barge")) / "bin" / "kopia"
        )
        self.env |= {"KOPIA_PASSWORD": "bench-password", "KOPIA_CONFIG_PATH": str(work / "kopia.config"),
                     "KOPIA_LOG_DIR": str(work / "logs"), "KOPIA_CACHE_DIRECTORY": str(work / "cache"),
                     "KOPIA_CHECK_FOR_UPDATES": "false"}  # fmt: skip

    def init(self) -> None:
        run([self.bin, "repository", "create", "filesystem", f"--path={self.repo}"], self.env)

    def backup(self, source: Path) -> list[str]:
        return [self.bin, "snapshot", "create", str(source), "--no-progress"]

    def restore(self, target: Path) -> list[str]:
        _, _, out = run([self.bin, "snapshot", "list", "--all", "--json"], self.env)
        snapshots = [s for s in json.loads(out) if not s["source"]["path"].endswith(".img")]
        return [self.bin, "restore", snapshots[-1]["rootEntry"]["obj"], str(target)]


def bench_tool(
    tool_cls: type[Tool], tree: Path, image: Path, scratch: Path, profile: Mapping[str, Path] | None = None
) -> tuple[Timings, int]:
    """One repetition of every operation; the ops in ``profile`` run under ``bench.profile``,
    which writes its report to the path given."""
    profile = profile or {}
    work = Path(tempfile.mkdtemp(prefix=f"{tool_cls.name}-", dir=scratch))
    tool = tool_cls(work)
    tool.init()
    timings: Timings = {}

    def timed(op: str, argv: list[str]) -> None:
        if op in profile:
            argv = tool.profiled(op, argv, profile[op])
        seconds, rss, _ = run(argv, tool.env, cwd=ROOT)
        timings[op] = (seconds, rss)

    timed("full", tool.backup(tree))
    repo_size = disk_usage(tool.repo)
    timed("nochange", tool.backup(tree))
    apply_change(tree, changed=True)
    try:
        timed("change1pct", tool.backup(tree))
    finally:
        apply_change(tree, changed=False)
    target = work / "restored"
    target.mkdir()
    timed("restore", tool.restore(target))
    shutil.rmtree(target)
    timed("block", tool.backup_block(image))
    shutil.rmtree(work)
    return timings, repo_size


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--scale", type=float, default=1.0, help="dataset size factor (1.0 = the issue's sizes)"
    )
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--tools", default="barge,restic,kopia")
    parser.add_argument("--json-out", type=Path)
    parser.add_argument(
        "--no-profile", action="store_true", help="skip the extra profiled run of missed operations"
    )
    args = parser.parse_args()
    cache = Path(os.environ.get("BARGE_CACHE_DIR", Path.home() / ".cache" / "barge")) / "bench"
    # Generate in a child process: this process must stay small, because a spawned tool's peak RSS
    # (ru_maxrss) includes the moment it was forked from us.
    subprocess.run(
        [sys.executable, "-m", "bench.datasets", str(cache), str(args.scale)], check=True, cwd=ROOT
    )
    tree, image = ensure(cache, scale=args.scale)
    sizes = {"tree": tree_bytes(tree), "image": image.stat().st_size}
    print(
        f"datasets: mixed tree {sizes['tree'] / 2**30:.2f} GiB, sparse image {sizes['image'] / 2**30:.2f} GiB"
    )
    classes = {c.name: c for c in (Barge, Restic, Kopia)}
    tools = [classes[name] for name in args.tools.split(",")]
    results: dict[str, dict[str, Result]] = {t.name: {op: Result() for op in OPS} for t in tools}
    repo_sizes: dict[str, list[int]] = {t.name: [] for t in tools}
    scratch = cache / "runs"
    scratch.mkdir(parents=True, exist_ok=True)
    for rep in range(1, args.reps + 1):
        for tool in tools:
            print(f"rep {rep}/{args.reps}: {tool.name}...", flush=True)
            timings, repo_size = bench_tool(tool, tree, image, scratch)
            repo_sizes[tool.name].append(repo_size)
            for op, (seconds, rss) in timings.items():
                results[tool.name][op].seconds.append(seconds)
                results[tool.name][op].rss_mib.append(rss)
    report = summarize(results, repo_sizes, sizes)
    print(report)
    verdicts, missed = judge(results)
    print("\n".join(verdicts))
    if missed and not args.no_profile:
        print(f"\nprofiling the missed operations ({', '.join(missed)}) in one more Barge run...", flush=True)
        reports = {op: scratch / f"profile-{op}.txt" for op in missed}
        bench_tool(Barge, tree, image, scratch, profile=reports)
        for op in missed:
            print("\n" + reports[op].read_text().rstrip())
        print("\nWhy these limits remain in Python: docs/performance.md, 'Where the time goes'.")
    if args.json_out:
        raw = {t: {op: r.__dict__ for op, r in ops.items()} for t, ops in results.items()}
        args.json_out.write_text(
            json.dumps({"sizes": sizes, "repo_sizes": repo_sizes, "results": raw}, indent=1)
        )
    return 0


def summarize(
    results: dict[str, dict[str, Result]], repo_sizes: dict[str, list[int]], sizes: dict[str, int]
) -> str:
    lines = ["", "| op | tool | median s | MB/s | peak RSS MiB | repo MiB |", "|---|---|---:|---:|---:|---:|"]
    for op in OPS:
        logical = sizes["image"] if op == "block" else sizes["tree"]
        for tool, ops in results.items():
            secs = statistics.median(ops[op].seconds)
            repo = f"{statistics.median(repo_sizes[tool]) / 2**20:,.0f}" if op == "full" else ""
            lines.append(f"| {op} | {tool} | {secs:.2f} | {logical / secs / 1e6:,.0f} | "
                         f"{max(ops[op].rss_mib):,.0f} | {repo} |")  # fmt: skip
    if "barge" in results:
        lines += ["", "| op | peer | Barge speed / peer speed (>1 = Barge faster) |", "|---|---|---:|"]
        for op in OPS:
            for peer in (t for t in results if t != "barge"):
                lines.append(f"| {op} | {peer} | {speed_ratio(results, op, peer):.2f} |")
        for peer in (t for t in results if t != "barge"):
            ratio = statistics.median(repo_sizes["barge"]) / statistics.median(repo_sizes[peer])
            lines.append(f"| repository size | {peer} | Barge/peer = {ratio:.3f} |")
    return "\n".join(lines)


def speed_ratio(results: dict[str, dict[str, Result]], op: str, peer: str) -> float:
    """Barge's speed over ``peer``'s on ``op`` (> 1: Barge is faster), from the median times."""
    return statistics.median(results[peer][op].seconds) / statistics.median(results["barge"][op].seconds)


def judge(results: dict[str, dict[str, Result]]) -> tuple[list[str], list[str]]:
    """Each of issue 14's targets as met or missed (lines to print), and the missed operations."""
    if "barge" not in results:
        return [], []
    lines = ["", "| target | measured | met? |", "|---|---:|---|"]
    missed: list[str] = []
    for target in (t for t in TARGETS if t.peer in results):
        ratio = speed_ratio(results, target.op, target.peer)
        met = ratio >= target.ratio
        verdict = "yes" if met else f"**no**, {target.ratio / ratio:.2f}x short"
        lines.append(f"| {target.op} >= {target.ratio}x {target.peer} | {ratio:.2f}x | {verdict} |")
        if not met and target.op not in missed:
            missed.append(target.op)
    for op, result in results["barge"].items():
        peak = max(result.rss_mib)
        met = peak <= RSS_TARGET_MIB
        verdict = "yes" if met else "**no**"
        lines.append(f"| {op} peak RSS <= {RSS_TARGET_MIB} MiB | {peak:,.0f} MiB | {verdict} |")
        if not met and op not in missed:
            missed.append(op)
    return lines, missed


if __name__ == "__main__":
    sys.exit(main())
