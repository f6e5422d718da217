"""Block mode: device images round-trip; zero and sparse ranges are never stored; restores onto a
real (loop) block device write only what is needed, or guarantee zeros with zero_fill."""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from barge.cli.main import EXIT_OK, main
from barge.errors import InvalidInput
from barge.fs.block import backup_device, restore_device
from barge.repo.crypto import KdfParams
from barge.repo.repository import Repository, RepositorySettings
from barge.storage.local import LocalDirectoryStore
from tests.fsbuild import MIB

SETTINGS = RepositorySettings(chunk_min=64 * 1024, chunk_avg=256 * 1024, chunk_max=MIB, pack_target=4 * MIB)


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    return Repository.init(LocalDirectoryStore(tmp_path / "repo"), b"pw", SETTINGS, KdfParams.for_tests())


def make_image(path: Path, size: int) -> bytes:
    """An image with random data, explicitly written zeros, and holes; returns its bytes."""
    with path.open("wb") as out:
        out.truncate(size)
        out.seek(MIB)
        out.write(os.urandom(3 * MIB))
        out.seek(8 * MIB)
        out.write(bytes(4 * MIB))  # written zeros: allocated, but must not be stored
        out.seek(20 * MIB)
        out.write(os.urandom(MIB // 2) + b"tail")
    return path.read_bytes()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_image_round_trips_and_only_data_is_stored(repo: Repository, tmp_path: Path) -> None:
    image = make_image(tmp_path / "disk.img", 32 * MIB)
    result = backup_device(repo, tmp_path / "disk.img")
    assert result.bytes_total == 32 * MIB
    assert result.bytes_new < 4 * MIB  # 3.5 MiB of random data; zeros and holes cost nothing
    outcome = restore_device(
        Repository.open(repo.store, b"pw"), result.snapshot_id, tmp_path / "restored.img"
    )
    restored = (tmp_path / "restored.img").read_bytes()
    assert sha(restored) == sha(image)
    assert (tmp_path / "restored.img").stat().st_blocks * 512 < 6 * MIB  # holes stayed holes
    assert outcome.bytes_written < 4 * MIB + SETTINGS.chunk_max


def test_a_forced_restore_onto_an_existing_file_leaves_no_old_bytes(repo: Repository, tmp_path: Path) -> None:
    image = make_image(tmp_path / "disk.img", 24 * MIB)
    result = backup_device(repo, tmp_path / "disk.img")
    (tmp_path / "old.img").write_bytes(b"\xee" * 30 * MIB)
    restore_device(repo, result.snapshot_id, tmp_path / "old.img", force=True)
    assert sha((tmp_path / "old.img").read_bytes()) == sha(image)


def test_rebackup_of_an_unchanged_device_stores_nothing(repo: Repository, tmp_path: Path) -> None:
    make_image(tmp_path / "disk.img", 16 * MIB)
    backup_device(repo, tmp_path / "disk.img")
    assert backup_device(repo, tmp_path / "disk.img").bytes_new < 4096  # only the tiny tree blob


@pytest.fixture
def loop_device(tmp_path: Path) -> Iterator[Path]:
    backing = tmp_path / "loop-backing"
    backing.write_bytes(b"\xab" * 32 * MIB)  # a "device" full of old data
    attach = subprocess.run(
        ["losetup", "-f", "--show", str(backing)], capture_output=True, text=True, check=False
    )
    assert attach.returncode == 0, (
        f"block-mode tests need a loop device (run as root): {attach.stderr.strip()}"
    )
    device = Path(attach.stdout.strip())
    try:
        yield device
    finally:
        subprocess.run(["losetup", "-d", str(device)], check=False)


def test_restore_onto_a_block_device_writes_only_data_or_guarantees_zeros(
    repo: Repository, tmp_path: Path, loop_device: Path
) -> None:
    image = make_image(tmp_path / "disk.img", 24 * MIB)
    snapshot = backup_device(repo, tmp_path / "disk.img").snapshot_id

    only_data = restore_device(repo, snapshot, loop_device, force=True)  # not blank: forced
    assert only_data.zeroed == 0
    content = loop_device.read_bytes()[: len(image)]
    assert content[MIB : 4 * MIB] == image[MIB : 4 * MIB]
    assert (
        content[:MIB] == b"\xab" * MIB
    )  # an unknown device's old bytes are left where the snapshot has holes

    zero_filled = restore_device(repo, snapshot, loop_device, zero_fill=True, force=True)
    assert zero_filled.zeroed + zero_filled.bytes_written == len(image)
    assert sha(loop_device.read_bytes()[: len(image)]) == sha(image)


def test_a_device_smaller_than_the_snapshot_is_refused(
    repo: Repository, tmp_path: Path, loop_device: Path
) -> None:
    make_image(tmp_path / "big.img", 40 * MIB)
    snapshot = backup_device(repo, tmp_path / "big.img").snapshot_id
    with pytest.raises(InvalidInput, match="the snapshot needs"):
        restore_device(repo, snapshot, loop_device)


def test_block_device_source_backs_up_like_an_image(
    repo: Repository, tmp_path: Path, loop_device: Path
) -> None:
    original = loop_device.read_bytes()
    result = backup_device(repo, loop_device)
    restore_device(repo, result.snapshot_id, tmp_path / "copy.img")
    assert sha((tmp_path / "copy.img").read_bytes()) == sha(original)


def test_cli_backs_up_and_restores_block_images(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BARGE_PASSWORD", "pw")
    url = f"file://{tmp_path / 'repo'}"
    image = make_image(tmp_path / "disk.img", 16 * MIB)
    assert main(["--repo", url, "repo", "init"]) == EXIT_OK
    assert main(["--repo", url, "backup", "--block", str(tmp_path / "disk.img")]) == EXIT_OK
    snapshot = Repository.open(LocalDirectoryStore(tmp_path / "repo"), b"pw").snapshot_ids()[0]
    assert main(["--repo", url, "restore", "--block", snapshot, str(tmp_path / "out.img")]) == EXIT_OK
    assert sha((tmp_path / "out.img").read_bytes()) == sha(image)
