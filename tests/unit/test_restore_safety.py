"""Restores cannot be turned against the node: what a snapshot records that grants privilege (device
nodes, setuid/setgid bits, security.*/trusted.* attributes) is withheld unless asked for; a block
restore writes only onto the target itself, never through a symlink, and only onto a blank one
unless forced; and the caller, not the snapshot, chooses between a block and a filesystem restore.

These run as root (as the agent does): the device nodes, setuid-root files and privileged
attributes are real, and so is the loop device."""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from barge.cli.main import EXIT_OK, EXIT_USAGE, main
from barge.errors import InvalidInput
from barge.fs.backup import backup_tree
from barge.fs.block import backup_device, restore_device
from barge.fs.privileged import LISTED, PrivilegePolicy, Withheld
from barge.fs.restore import restore_tree
from barge.repo.crypto import KdfParams
from barge.repo.repository import Repository, RepositorySettings
from barge.repo.tree import Node
from barge.storage.local import LocalDirectoryStore
from devenv.trees import capture
from tests.fsbuild import MIB, NET_RAW_CAPABILITY, NULL_DEVICE, privileged_volume, write

SETTINGS = RepositorySettings(chunk_min=16 * 1024, chunk_avg=64 * 1024, chunk_max=256 * 1024, pack_target=MIB)


@pytest.fixture(autouse=True)
def as_root() -> None:
    assert os.geteuid() == 0, "restore-safety tests create device nodes and setuid-root files: run as root"


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    return Repository.init(LocalDirectoryStore(tmp_path / "repo"), b"pw", SETTINGS, KdfParams.for_tests())


def test_a_restore_withholds_device_nodes_setid_bits_and_privileged_attributes_by_default(
    repo: Repository, tmp_path: Path
) -> None:
    source = privileged_volume(tmp_path / "volume")
    snapshot = backup_tree(repo, source).snapshot_id
    target = tmp_path / "restored"

    result = restore_tree(repo, snapshot, target)

    assert not os.path.lexists(target / "null")
    assert not os.path.lexists(target / "disk")
    su = os.lstat(target / "bin" / "su")
    assert (stat.S_IMODE(su.st_mode), su.st_uid) == (0o755, 0)  # the file, owner and content stay
    assert (target / "bin" / "su").read_bytes() == b"\x7fELF pretend"
    assert stat.S_IMODE(os.lstat(target / "bin" / "wall").st_mode) == 0o755
    assert os.listxattr(target / "bin" / "ping") == ["user.note"]
    assert os.listxattr(target / "shared") == []
    assert stat.S_IMODE(os.lstat(target / "shared").st_mode) == 0o2775
    assert stat.S_ISFIFO(os.lstat(target / "pipe").st_mode)
    assert result.withheld == Withheld(device_nodes=2, setid_files=2, xattrs=2)
    assert "withheld: bin/su: mode 4755 restored as 0755" in result.warnings
    assert "withheld: null: chardev 1:3 not created" in result.warnings
    assert "withheld: bin/ping: extended attribute security.capability not set" in result.warnings
    assert "withheld: shared: extended attribute trusted.overlay.opaque not set" in result.warnings
    assert result.withheld.summary() == (
        "2 device node(s) not created; 2 file(s) restored without their setuid/setgid bits; "
        "2 security.*/trusted.* extended attribute(s) not set"
    )


def test_restore_privileged_recreates_them_as_the_snapshot_records_them(
    repo: Repository, tmp_path: Path
) -> None:
    source = privileged_volume(tmp_path / "volume")
    snapshot = backup_tree(repo, source).snapshot_id
    target = tmp_path / "restored"

    result = restore_tree(repo, snapshot, target, restore_privileged=True)

    assert capture(target) == capture(source)  # modes with setuid/setgid, every xattr, the nodes
    assert os.lstat(target / "null").st_rdev == NULL_DEVICE
    assert os.getxattr(target / "bin" / "ping", "security.capability") == NET_RAW_CAPABILITY
    assert os.lstat(target / "bin" / "su").st_uid == 0
    assert not result.withheld
    assert result.warnings == ()


def test_the_cli_withholds_unless_asked_and_says_how_to_restore_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BARGE_PASSWORD", "pw")
    url = f"file://{tmp_path / 'repo'}"
    assert main(["--repo", url, "repo", "init"]) == EXIT_OK
    assert main(["--repo", url, "backup", str(privileged_volume(tmp_path / "volume"))]) == EXIT_OK
    snapshot = Repository.open(LocalDirectoryStore(tmp_path / "repo"), b"pw").snapshot_ids()[0]
    capsys.readouterr()

    assert main(["--repo", url, "restore", snapshot, str(tmp_path / "plain")]) == EXIT_OK
    errors = capsys.readouterr().err
    assert "warning: withheld: bin/su: mode 4755 restored as 0755" in errors
    assert (
        "warning: 2 device node(s) not created; 2 file(s) restored without their setuid/setgid bits; "
        "2 security.*/trusted.* extended attribute(s) not set; pass --restore-privileged"
    ) in errors
    assert not os.path.lexists(tmp_path / "plain" / "null")

    everything = ["--repo", url, "restore", "--restore-privileged", snapshot, str(tmp_path / "all")]
    assert main(everything) == EXIT_OK
    assert "warning" not in capsys.readouterr().err
    assert capture(tmp_path / "all") == capture(tmp_path / "volume")


def test_the_policy_names_the_first_few_and_counts_the_rest() -> None:
    warnings: list[str] = []
    policy = PrivilegePolicy(restore_privileged=False, warn=warnings.append)
    device = Node(name=b"d", kind="chardev", mode=0o666, rdev=NULL_DEVICE)
    for index in range(LISTED + 5):
        assert policy.admit(device, b"dev/%d" % index) is None
    assert policy.withheld() == Withheld(device_nodes=LISTED + 5)
    assert len(warnings) == LISTED
    sticky = Node(name=b"tmp", kind="dir", mode=0o1777, xattrs=((b"user.a", b"1"),))
    assert policy.admit(sticky, b"tmp") is sticky  # nothing privileged: left as it is
    assert PrivilegePolicy(restore_privileged=True).admit(device, b"d") is device


# -- block restores: the target itself, blank unless forced ------------------------------------------


def image(path: Path, size: int = 4 * MIB) -> bytes:
    with path.open("wb") as out:
        out.truncate(size)
        out.seek(MIB)
        out.write(os.urandom(MIB))
    return path.read_bytes()


def test_a_block_restore_refuses_a_symlink_and_leaves_what_it_points_to_untouched(
    repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    image(tmp_path / "disk.img")
    snapshot = backup_device(repo, tmp_path / "disk.img").snapshot_id
    outside = tmp_path / "elsewhere" / "precious.db"
    write(outside, b"")  # empty, so only the symlink check can save it
    (tmp_path / "target").symlink_to(outside)
    with pytest.raises(InvalidInput, match=f"is a symlink \\(to {outside}\\)"):
        restore_device(repo, snapshot, tmp_path / "target")
    assert outside.stat().st_size == 0
    with pytest.raises(InvalidInput, match="is a symlink"):
        restore_device(repo, snapshot, tmp_path / "target", force=True)
    assert outside.read_bytes() == b""
    assert outside.stat().st_size == 0

    monkeypatch.setenv("BARGE_PASSWORD", "pw")
    url = f"file://{tmp_path / 'repo'}"
    command = ["--repo", url, "restore", "--block", "--force", snapshot, str(tmp_path / "target")]
    assert main(command) == EXIT_USAGE
    assert outside.stat().st_size == 0


def test_a_block_restore_refuses_a_non_empty_file_unless_forced(repo: Repository, tmp_path: Path) -> None:
    data = image(tmp_path / "disk.img")
    snapshot = backup_device(repo, tmp_path / "disk.img").snapshot_id
    write(tmp_path / "old.img", b"keep me")
    with pytest.raises(InvalidInput, match=r"is a file of 7 bytes, not blank; .* --force"):
        restore_device(repo, snapshot, tmp_path / "old.img")
    assert (tmp_path / "old.img").read_bytes() == b"keep me"

    forced = restore_device(repo, snapshot, tmp_path / "old.img", force=True)
    assert (tmp_path / "old.img").read_bytes() == data
    assert not forced.target_was_blank
    write(tmp_path / "empty.img", b"")
    assert restore_device(repo, snapshot, tmp_path / "empty.img").target_was_blank
    assert restore_device(repo, snapshot, tmp_path / "new.img").target_was_blank


def test_a_block_restore_refuses_what_is_neither_a_device_nor_a_file(
    repo: Repository, tmp_path: Path
) -> None:
    image(tmp_path / "disk.img")
    snapshot = backup_device(repo, tmp_path / "disk.img").snapshot_id
    os.mkfifo(tmp_path / "fifo")
    os.mknod(tmp_path / "null", 0o666 | stat.S_IFCHR, NULL_DEVICE)
    (tmp_path / "dir").mkdir()
    for name in ("fifo", "null", "dir"):
        with pytest.raises(InvalidInput, match="neither a block device nor a regular file"):
            restore_device(repo, snapshot, tmp_path / name)


@pytest.fixture
def loop_device(tmp_path: Path) -> Iterator[Path]:
    backing = tmp_path / "loop-backing"
    with backing.open("wb") as out:
        out.truncate(8 * MIB)  # blank: reads as zeros
    attach = subprocess.run(
        ["losetup", "-f", "--show", str(backing)], capture_output=True, text=True, check=False
    )
    assert attach.returncode == 0, f"needs a loop device: {attach.stderr.strip()}"
    device = Path(attach.stdout.strip())
    try:
        yield device
    finally:
        subprocess.run(["losetup", "-d", str(device)], check=False)


@pytest.mark.parametrize("offset", [1024, 8 * MIB - 512])  # an ext4 superblock; a GPT backup header
def test_a_device_with_data_at_either_end_is_refused_unless_forced(
    repo: Repository, tmp_path: Path, loop_device: Path, offset: int
) -> None:
    data = image(tmp_path / "disk.img")
    snapshot = backup_device(repo, tmp_path / "disk.img").snapshot_id
    with loop_device.open("r+b") as device:
        device.seek(offset)
        device.write(b"\x53\xef someone's filesystem")
    with pytest.raises(InvalidInput, match="a block device with data in its first or last MiB, not blank"):
        restore_device(repo, snapshot, loop_device, zero_fill=True)
    with loop_device.open("rb") as device:
        device.seek(MIB)
        assert device.read(MIB) == bytes(MIB)  # nothing of the snapshot was written

    forced = restore_device(repo, snapshot, loop_device, zero_fill=True, force=True)
    assert not forced.target_was_blank
    assert loop_device.read_bytes()[: len(data)] == data

    with loop_device.open("r+b") as device:
        device.write(bytes(8 * MIB))
    assert restore_device(repo, snapshot, loop_device, zero_fill=True).target_was_blank  # blank: fine


# -- the caller chooses the mode -------------------------------------------------------------------


def block_and_fs_snapshots(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[str, bytes, dict[str, str]]:
    """A repository holding one block and one filesystem snapshot, made through the CLI: its URL,
    the block image's bytes and the snapshot IDs by kind ("block", "fs")."""
    monkeypatch.setenv("BARGE_PASSWORD", "pw")
    url = f"file://{tmp_path / 'repo'}"
    data = image(tmp_path / "disk.img")
    write(tmp_path / "tree" / "f", b"file")
    assert main(["--repo", url, "repo", "init"]) == EXIT_OK
    assert main(["--repo", url, "backup", "--block", str(tmp_path / "disk.img")]) == EXIT_OK
    assert main(["--repo", url, "backup", str(tmp_path / "tree")]) == EXIT_OK
    repo = Repository.open(LocalDirectoryStore(tmp_path / "repo"), b"pw")
    return url, data, {repo.load_snapshot(s).kind.value: s for s in repo.snapshot_ids()}


def test_the_cli_restores_a_block_snapshot_only_when_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url, data, by_kind = block_and_fs_snapshots(tmp_path, monkeypatch)
    capsys.readouterr()

    assert main(["--repo", url, "restore", by_kind["block"], str(tmp_path / "out.img")]) == EXIT_USAGE
    assert "is a device image: restore it with --block" in capsys.readouterr().err
    assert not os.path.lexists(tmp_path / "out.img")

    assert main(["--repo", url, "restore", "--block", by_kind["fs"], str(tmp_path / "fs.img")]) == EXIT_USAGE
    assert "is a filesystem snapshot, not a device image" in capsys.readouterr().err
    assert not os.path.lexists(tmp_path / "fs.img")

    assert main(["--repo", url, "restore", "--block", by_kind["block"], str(tmp_path / "out.img")]) == EXIT_OK
    assert (tmp_path / "out.img").read_bytes() == data

    assert main(["--repo", url, "restore", "--force", by_kind["fs"], str(tmp_path / "x")]) == EXIT_USAGE
    assert "--force is for block restores" in capsys.readouterr().err


def test_a_block_device_as_the_target_means_a_block_restore(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, loop_device: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, data, by_kind = block_and_fs_snapshots(tmp_path, monkeypatch)
    capsys.readouterr()

    assert main(["--repo", url, "restore", by_kind["fs"], str(loop_device)]) == EXIT_USAGE
    assert "is a filesystem snapshot, not a device image" in capsys.readouterr().err
    assert main(["--repo", url, "restore", by_kind["block"], str(loop_device)]) == EXIT_OK
    assert loop_device.read_bytes()[: len(data)] == data
