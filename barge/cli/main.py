"""``barge``: inspect, verify and restore Barge repositories by hand; also what benchmarks drive.

Exit codes are a contract for scripts: 0 ok, 1 failed, 2 usage, 3 repository damaged, 130 interrupted.
Every failure prints one line that says what went wrong and what to do, never a traceback: not even
an unexpected error (a bug), whose traceback is printed only with ``BARGE_DEBUG=1``.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import stat
import sys
import traceback
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from barge import __version__
from barge.errors import BargeError, Canceled, CorruptionDetected, InvalidInput, one_line
from barge.fs.backup import BackupOptions, backup_tree
from barge.fs.block import backup_device, restore_device
from barge.fs.restore import restore_tree
from barge.repo import retention
from barge.repo.check import check_repository
from barge.repo.gc import GcReport, collect_garbage
from barge.repo.relocate import move_repository
from barge.repo.repository import Repository
from barge.repo.retention import RetentionPolicy
from barge.repo.snapshot import SnapshotKind
from barge.storage.url import open_store

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_DAMAGED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


class UsageError(InvalidInput):
    """Wrong invocation: exit code 2."""


def _password(
    args: argparse.Namespace, env: str = "BARGE_PASSWORD", file_attr: str = "password_file"
) -> bytes:
    path = getattr(args, file_attr, None)
    if path:
        try:
            return Path(path).read_bytes().rstrip(b"\r\n")
        except OSError as err:
            raise UsageError(f"cannot read password file {path}: {err.strerror}") from err
    if os.environ.get(env):
        return os.environ[env].encode()
    if sys.stdin.isatty():
        return getpass.getpass("repository password: ").encode()
    raise UsageError(f"no repository password: set {env} or pass --password-file FILE")


def _repo_url(args: argparse.Namespace) -> str:
    url: str | None = args.repo or os.environ.get("BARGE_REPOSITORY")
    if not url:
        raise UsageError("no repository: pass --repo URL or set BARGE_REPOSITORY")
    return url


def _cache_dir(args: argparse.Namespace) -> Path | None:
    """Where the repository index is kept between runs; None with --no-cache (a temporary file)."""
    if getattr(args, "no_cache", False):
        return None
    if getattr(args, "cache_dir", None):
        return Path(args.cache_dir)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "barge"


def _open(args: argparse.Namespace) -> Repository:
    return Repository.open(open_store(_repo_url(args)), _password(args), cache_dir=_cache_dir(args))


class _ProgressLine:
    """A one-line progress display on a TTY; silent when output is piped."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.enabled = sys.stderr.isatty()

    def __call__(self, done: int, total: int) -> None:
        if self.enabled:
            percent = 100 * done / total if total else 100.0
            sys.stderr.write(
                f"\r{self.label}: {done / 2**20:,.0f} / {total / 2**20:,.0f} MiB ({percent:5.1f}%)"
            )
            sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")


def cmd_repo_init(args: argparse.Namespace) -> int:
    repo = Repository.init(open_store(_repo_url(args)), _password(args))
    print(f"created repository {repo.config.repository_id} at {repo.store.describe()}")
    return EXIT_OK


def _is_block_device(path: Path) -> bool:
    try:
        return stat.S_ISBLK(path.stat().st_mode)
    except OSError:
        return False


def cmd_backup(args: argparse.Namespace) -> int:
    repo = _open(args)
    source = Path(args.path).resolve()
    block = args.block or _is_block_device(source)
    kind = SnapshotKind.BLOCK if block else SnapshotKind.FILESYSTEM
    parent = (
        None if args.no_parent else (args.parent or repo.latest_snapshot(kind, paths=[os.fsdecode(source)]))
    )
    options = BackupOptions(
        parent=parent, tags=dict(_parse_tag(t) for t in args.tag), on_unreadable=args.on_unreadable
    )
    progress = _ProgressLine("backup")
    try:
        if block:
            result = backup_device(repo, source, options=options, progress=progress)
        else:
            result = backup_tree(repo, source, options=options, progress=progress)
    finally:
        progress.close()
    summary = {
        "snapshot_id": result.snapshot_id,
        "parent": parent,
        "bytes_total": result.bytes_total,
        "bytes_read": result.bytes_read,
        "bytes_new": result.bytes_new,
        "bytes_stored": result.bytes_stored,
        "files": result.files,
        "dirs": result.dirs,
        "files_unchanged": result.files_unchanged,
        "skipped": list(result.skipped),
        "duration_s": round(result.duration_s, 3),
    }
    if args.json:
        print(json.dumps(summary))
    else:
        print(
            f"snapshot {result.snapshot_id} saved: {result.files} files, {result.dirs} dirs, "
            f"{result.bytes_total:,} bytes ({result.bytes_new:,} new, {result.bytes_stored:,} stored) "
            f"in {result.duration_s:.1f}s"
        )
        for skipped in result.skipped:
            print(f"skipped: {skipped}", file=sys.stderr)
    return EXIT_OK


def _parse_tag(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise UsageError(f"--tag {text!r}: use KEY=VALUE")
    return key, value


def _percentage(text: str) -> float:
    """``10%`` or ``10`` -> 0.1; argparse turns the error into a usage error (exit 2)."""
    try:
        value = float(text.strip().removesuffix("%"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a percentage (e.g. 10%)") from None
    if not 0 < value <= 100:
        raise argparse.ArgumentTypeError(f"{text!r}: give a percentage above 0 and at most 100")
    return value / 100


def cmd_restore(args: argparse.Namespace) -> int:
    """The mode is the caller's (``--block``, or a block device as the target), not the snapshot's."""
    target = Path(args.target)
    block = args.block or _is_block_device_itself(target)
    if args.force and not block:
        raise UsageError("--force is for block restores; a filesystem restore needs an empty directory")
    repo = _open(args)
    _require_snapshot_kind(repo, args.snapshot_id, block)
    progress = _ProgressLine("restore")
    try:
        if block:
            device = restore_device(
                repo, args.snapshot_id, target, zero_fill=args.zero_fill, force=args.force, progress=progress
            )
        else:
            result = restore_tree(
                repo,
                args.snapshot_id,
                target,
                progress=progress,
                sparse=args.sparse,
                restore_privileged=args.restore_privileged,
            )
    finally:
        progress.close()
    if block:
        print(
            f"restored {device.bytes_total:,} bytes to {args.target}: {device.bytes_written:,} written, "
            f"{device.zeroed:,} zero-filled, the rest left as holes"
        )
        return EXIT_OK
    print(
        f"restored {result.files} files, {result.dirs} dirs, {result.bytes_written:,} bytes to {args.target}"
    )
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if result.withheld:
        print(f"warning: {result.withheld.summary()}; pass --restore-privileged to restore them as "
              "the snapshot records them", file=sys.stderr)  # fmt: skip
    return EXIT_OK


def _is_block_device_itself(path: Path) -> bool:
    """A block device named directly; a symlink to one is not followed (block restores refuse it)."""
    try:
        return stat.S_ISBLK(path.lstat().st_mode)
    except OSError:
        return False


def _require_snapshot_kind(repo: Repository, snapshot_id: str, block: bool) -> None:
    """A snapshot of the other kind fails before anything is written."""
    kind = repo.load_snapshot(snapshot_id).kind
    if block and kind is not SnapshotKind.BLOCK:
        raise UsageError(
            f"snapshot {snapshot_id[:16]} is a filesystem snapshot, not a device image: restore it without "
            "--block into an empty directory"
        )
    if not block and kind is SnapshotKind.BLOCK:
        raise UsageError(
            f"snapshot {snapshot_id[:16]} is a device image: restore it with --block onto a blank "
            "block device or a new image file"
        )


def cmd_snapshots(args: argparse.Namespace) -> int:
    """Lists every manifest that reads; each damaged one gets a line on stderr and exit code 3."""
    repo = _open(args)
    snapshots, damaged = repo.read_snapshots()
    rows = []
    for snapshot_id, snapshot in snapshots.items():
        document = snapshot.to_json()
        row = {k: document[k] for k in ("time", "kind", "hostname", "paths", "tags")}
        rows.append({"id": snapshot_id, **row, "bytes_total": snapshot.summary.bytes_total})
    rows.sort(key=lambda row: str(row["time"]))
    if args.json:
        print(json.dumps(rows))
    else:
        for row in rows:
            paths = ",".join(row["paths"] or [])
            print(
                f"{row['id'][:16]}  {row['time']}  {row['kind']:5}  {row['bytes_total'] or 0:>15,}  {paths}"
            )
    for problem in damaged.values():
        print(f"barge: repository damaged: {problem}", file=sys.stderr)
    return EXIT_DAMAGED if damaged else EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    repo = _open(args)
    share = 1.0 if args.read_data else args.read_data_subset
    report = check_repository(repo, read_data=share, log=lambda line: print(line, file=sys.stderr))
    for problem in report.problems:
        print(f"error: {problem}")
    for note in report.notes:
        print(f"note: {note}")
    print(
        f"{report.snapshots} snapshots, {report.trees} trees, {report.packs} packs"
        + (f", {report.blobs_verified} blobs read and verified" if share > 0 else "")
        + (": no problems found" if report.ok else f": {len(report.problems)} problem(s)")
    )
    return EXIT_OK if report.ok else EXIT_DAMAGED


def cmd_forget(args: argparse.Namespace) -> int:
    policy = _retention_policy(args)
    if bool(args.snapshot_ids) == (policy is not None):
        raise UsageError("give snapshot IDs or a policy (--keep-last/-daily/-weekly): one of the two")
    repo = _open(args)
    doomed = args.snapshot_ids if policy is None else _outside_policy(repo, policy)
    for snapshot_id in doomed:
        if args.dry_run:
            print(f"would forget snapshot {snapshot_id}")
        else:
            repo.forget_snapshot(snapshot_id)
            print(f"forgot snapshot {snapshot_id}")
    if args.prune and not args.dry_run:
        return _prune(repo)
    if doomed and not args.dry_run:
        print("run `barge gc` to reclaim their space (or pass --prune)")
    return EXIT_OK


def _retention_policy(args: argparse.Namespace) -> RetentionPolicy | None:
    if not (args.keep_last or args.keep_daily or args.keep_weekly):
        return None
    return RetentionPolicy(last=args.keep_last, daily=args.keep_daily, weekly=args.keep_weekly)


def _outside_policy(repo: Repository, policy: RetentionPolicy) -> list[str]:
    """The snapshots ``policy`` does not keep; one whose time cannot be read is always kept."""
    entries = []
    for snapshot_id in repo.snapshot_ids():
        snapshot = repo.load_snapshot(snapshot_id)
        try:
            finished = datetime.fromisoformat(snapshot.time)
        except ValueError:
            continue
        if finished.tzinfo is None:
            continue
        group = retention.group_of(snapshot.hostname, snapshot.paths, snapshot.tags)
        entries.append(retention.SnapshotEntry(snapshot_id, finished, group))
    kept = retention.keep(entries, policy)
    return sorted(e.snapshot_id for e in entries if e.snapshot_id not in kept)


def _prune(repo: Repository) -> int:
    """Garbage collection right after forgetting: a mark, then (when no older backup or restore
    runs) the sweep that deletes, as two `barge gc` runs would."""
    report = collect_garbage(repo, log=lambda line: print(line, file=sys.stderr))
    if report.phase == "mark":
        report = collect_garbage(repo, log=lambda line: print(line, file=sys.stderr))
    return _print_gc(report)


def cmd_gc(args: argparse.Namespace) -> int:
    repo = _open(args)
    return _print_gc(collect_garbage(repo, log=lambda line: print(line, file=sys.stderr)))


def _print_gc(report: GcReport) -> int:
    if report.phase == "waiting":
        print(
            f"{report.condemned_packs} packs await deletion until {report.waiting_for_sessions} older "
            "backup/restore session(s) end; run gc again later"
        )
    else:
        print(
            f"deleted {report.deleted_packs} packs ({report.deleted_bytes:,} bytes), repacked "
            f"{report.repacked_packs}, condemned {report.condemned_packs} for the next run"
        )
    return EXIT_OK


def _new_password(args: argparse.Namespace) -> bytes:
    if args.new_password_file or os.environ.get("BARGE_NEW_PASSWORD"):
        return _password(args, env="BARGE_NEW_PASSWORD", file_attr="new_password_file")
    if sys.stdin.isatty():
        new = getpass.getpass("new password: ").encode()
        if getpass.getpass("new password again: ").encode() != new:
            raise UsageError("the two new passwords differ")
        return new
    raise UsageError("no new password: set BARGE_NEW_PASSWORD or pass --new-password-file FILE")


def cmd_change_password(args: argparse.Namespace) -> int:
    repo = _open(args)
    repo.change_password(_new_password(args))
    print("password changed")
    return EXIT_OK


def cmd_key_add(args: argparse.Namespace) -> int:
    repo = _open(args)
    repo.add_password(_new_password(args))
    print("password added; the repository opens with either password")
    return EXIT_OK


def cmd_key_remove(args: argparse.Namespace) -> int:
    repo = _open(args)
    repo.remove_password()
    print("password removed; the repository no longer opens with it")
    return EXIT_OK


def cmd_repo_move(args: argparse.Namespace) -> int:
    """Needs no password: objects are copied as the sealed bytes they are."""
    report = move_repository(open_store(_repo_url(args)), open_store(args.to))
    print(f"moved {report.objects} objects ({report.bytes} bytes; {report.already_there} were "
          f"already at the target) to {args.to.split('?')[0]}")  # fmt: skip
    return EXIT_OK


def _forget_arguments(forget: argparse.ArgumentParser) -> None:
    forget.add_argument("snapshot_ids", nargs="*", metavar="SNAPSHOT_ID")
    forget.add_argument("--keep-last", type=int, default=0, metavar="N", help="keep the newest N")
    forget.add_argument("--keep-daily", type=int, default=0, metavar="N",
                        help="keep the newest of each of the last N days that have one (UTC)")  # fmt: skip
    forget.add_argument("--keep-weekly", type=int, default=0, metavar="N",
                        help="keep the newest of each of the last N ISO weeks that have one")  # fmt: skip
    forget.add_argument("--dry-run", action="store_true", help="print what would go; forget nothing")
    forget.add_argument("--prune", action="store_true", help="run garbage collection afterwards")


def _add_repository_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repo", help="repository URL: file:///path or s3://bucket/prefix?endpoint=... "
                        "(default: $BARGE_REPOSITORY)")  # fmt: skip
    parser.add_argument("--password-file", help="read the password from FILE (default: $BARGE_PASSWORD)")
    parser.add_argument("--cache-dir", help="where the repository index is kept between runs "
                        "(default: $XDG_CACHE_HOME/barge, else ~/.cache/barge)")  # fmt: skip
    parser.add_argument("--no-cache", action="store_true",
                        help="keep nothing between runs (the index goes to a temporary file)")  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="barge", description="Barge backup repository tool")
    parser.add_argument("--version", action="version", version=f"barge {__version__}")
    _add_repository_options(parser)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(
        name: str, handler: Callable[[argparse.Namespace], int], help_text: str
    ) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(handler=handler)
        return sub

    repo_cmd = commands.add_parser("repo", help="repository administration")
    repo_sub = repo_cmd.add_subparsers(dest="repo_command", required=True, metavar="COMMAND")
    repo_sub.add_parser("init", help="create a new repository").set_defaults(handler=cmd_repo_init)
    move = repo_sub.add_parser(
        "move",
        help="move the repository to another location (e.g. out of the legacy <prefix>/barge/ folder)",
    )
    move.add_argument("--to", required=True, metavar="URL", help="the new location (must be empty)")
    move.set_defaults(handler=cmd_repo_move)

    backup = add("backup", cmd_backup, "back up a directory into a new snapshot")
    backup.add_argument("path", help="a directory, or with --block a device or image file")
    backup.add_argument("--block", action="store_true", help="back up PATH as a raw device image "
                        "(automatic for block devices)")  # fmt: skip
    backup.add_argument("--json", action="store_true", help="print one JSON object with the result")
    backup.add_argument("--parent", help="snapshot to compare against (default: latest of the same path)")
    backup.add_argument("--no-parent", action="store_true", help="read every file, even unchanged ones")
    backup.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE")
    backup.add_argument("--on-unreadable", choices=("fail", "skip"), default="fail",
                        help="what to do with a file that cannot be read (default: fail)")  # fmt: skip

    restore = add("restore", cmd_restore, "restore a snapshot into an empty directory, or with --block "
                  "onto a device or image file")  # fmt: skip
    restore.add_argument("snapshot_id")
    restore.add_argument("target", help="an empty directory, or with --block a blank device or a new file")
    restore.add_argument("--block", action="store_true", help="restore a block snapshot onto TARGET, a "
                         "device or image file (automatic when TARGET is a block device)")  # fmt: skip
    restore.add_argument(
        "--force",
        action="store_true",
        help="block restores: overwrite a target that is not blank (a non-empty file, a device with "
        "data in its first or last MiB)",
    )
    restore.add_argument(
        "--restore-privileged",
        action="store_true",
        help="filesystem restores: also recreate device nodes, setuid/setgid bits and security.*/"
        "trusted.* extended attributes as the snapshot records them (by default they are withheld, "
        "with a warning)",
    )
    fill = restore.add_mutually_exclusive_group()
    fill.add_argument(
        "--zero-fill",
        action="store_true",
        help="block snapshots: also write zeros where the snapshot has holes",
    )
    fill.add_argument(
        "--sparse",
        action="store_true",
        help="filesystem snapshots: also leave all-zero blocks of file data unwritten, as holes "
        "(Velero's WriteSparseFiles); the source's own holes are always restored as holes",
    )

    snapshots = add("snapshots", cmd_snapshots, "list snapshots")
    snapshots.add_argument("--json", action="store_true")

    check = add("check", cmd_check, "verify the repository's structure (and with --read-data, every byte)")
    reading = check.add_mutually_exclusive_group()
    reading.add_argument("--read-data", action="store_true", help="read and verify every stored byte")
    reading.add_argument(
        "--read-data-subset",
        type=_percentage,
        default=0.0,
        metavar="PERCENT",
        help="read and verify the bytes of this share of the packs, e.g. 10%%; a different share each "
        "run, chosen at random",
    )

    forget_help = ("remove snapshots by ID or by a retention policy (space is reclaimed by gc); a policy "
                   "applies to each source (a Velero volume, or a host and its paths) on its own and keeps "
                   "a snapshot when any --keep rule does")  # fmt: skip
    _forget_arguments(add("forget", cmd_forget, forget_help))

    add("gc", cmd_gc, "delete data no snapshot needs; safe while backups run (two runs reclaim it)")

    key_cmd = commands.add_parser("key", help="repository password")
    key_sub = key_cmd.add_subparsers(dest="key_command", required=True, metavar="COMMAND")
    change = key_sub.add_parser("change-password", help="re-wrap the master keys under a new password")
    change.add_argument("--new-password-file")
    change.set_defaults(handler=cmd_change_password)
    add_key = key_sub.add_parser("add", help="add another password; the current one keeps working")
    add_key.add_argument("--new-password-file")
    add_key.set_defaults(handler=cmd_key_add)
    key_sub.add_parser(
        "remove", help="remove the password given ($BARGE_PASSWORD or --password-file), never the last"
    ).set_defaults(handler=cmd_key_remove)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse: 0 after --help/--version, else a usage error
        return EXIT_OK if not exit_.code else EXIT_USAGE
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return _run(handler, args)
    except Exception as err:  # a bug: still one line and an exit code, the traceback only on request
        if os.environ.get("BARGE_DEBUG"):
            traceback.print_exc(file=sys.stderr)
        print(
            f"barge: unexpected error: {one_line(err)} (a bug: please report it; "
            "BARGE_DEBUG=1 prints the traceback)",
            file=sys.stderr,
        )
        return EXIT_FAILED


def _run(handler: Callable[[argparse.Namespace], int], args: Any) -> int:
    try:
        return handler(args)
    except InvalidInput as err:  # a wrong argument, URL or target: the caller must change the call
        print(f"barge: {err}", file=sys.stderr)
        return EXIT_USAGE
    except CorruptionDetected as err:
        print(f"barge: repository damaged: {err}", file=sys.stderr)
        return EXIT_DAMAGED
    except (KeyboardInterrupt, Canceled):
        print("barge: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BargeError as err:
        print(f"barge: {err}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as err:
        print(f"barge: {err.strerror or err}: {err.filename or ''}".rstrip(": "), file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
