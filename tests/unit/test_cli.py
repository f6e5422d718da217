"""The ``barge`` CLI contract: commands, JSON output, exit codes, one-line errors."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from barge.cli import main as cli_main
from barge.cli.main import EXIT_DAMAGED, EXIT_FAILED, EXIT_OK, EXIT_USAGE, main
from devenv.trees import capture
from tests.fsbuild import awkward_tree, nested_tree, remove_tree


@pytest.fixture
def repo_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("BARGE_PASSWORD", "s3cret-pass")
    monkeypatch.delenv("BARGE_REPOSITORY", raising=False)
    url = f"file://{tmp_path / 'repo'}"
    assert main(["--repo", url, "repo", "init"]) == EXIT_OK
    return url


def backup_json(url: str, source: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> dict[str, object]:
    capsys.readouterr()
    assert main(["--repo", url, "backup", str(source), "--json", *extra]) == EXIT_OK
    result: dict[str, object] = json.loads(capsys.readouterr().out)
    return result


def test_backup_json_then_restore_round_trips(
    repo_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = awkward_tree(tmp_path / "src")
    first = backup_json(repo_url, source, capsys)
    assert {"snapshot_id", "bytes_total", "bytes_new", "files", "duration_s"} <= set(first)
    second = backup_json(repo_url, source, capsys)
    assert second["parent"] == first["snapshot_id"]
    assert second["bytes_new"] == 0
    assert main(["--repo", repo_url, "restore", str(second["snapshot_id"]), str(tmp_path / "out")]) == EXIT_OK
    assert capture(tmp_path / "out") == capture(source)

    capsys.readouterr()
    assert main(["--repo", repo_url, "snapshots", "--json"]) == EXIT_OK
    listed = json.loads(capsys.readouterr().out)
    assert [row["id"] for row in listed] == [first["snapshot_id"], second["snapshot_id"]]


def test_restore_sparse_leaves_zero_blocks_as_holes(
    repo_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = os.urandom(64 * 1024) + bytes(1024 * 1024)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "zeros.bin").write_bytes(data)
    snapshot = str(backup_json(repo_url, tmp_path / "src", capsys)["snapshot_id"])
    for flag, out in (([], "dense"), (["--sparse"], "sparse")):
        assert main(["--repo", repo_url, "restore", snapshot, str(tmp_path / out), *flag]) == EXIT_OK
        assert (tmp_path / out / "zeros.bin").read_bytes() == data
    assert (tmp_path / "dense" / "zeros.bin").stat().st_blocks * 512 >= len(data)
    assert (tmp_path / "sparse" / "zeros.bin").stat().st_blocks * 512 < 128 * 1024
    both = ["--repo", repo_url, "restore", snapshot, str(tmp_path / "x"), "--sparse", "--zero-fill"]
    assert main(both) == EXIT_USAGE
    assert "not allowed with argument" in capsys.readouterr().err


def test_password_is_never_printed(repo_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = awkward_tree(tmp_path / "src")
    backup_json(repo_url, source, capsys)
    main(["--repo", repo_url, "snapshots"])
    main(["--repo", repo_url, "check"])
    out = capsys.readouterr()
    assert "s3cret-pass" not in out.out + out.err


def test_password_file_and_change_password(
    repo_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "new").write_text("brand new\n")
    assert (
        main(["--repo", repo_url, "key", "change-password", "--new-password-file", str(tmp_path / "new")])
        == 0
    )
    assert main(["--repo", repo_url, "snapshots"]) == EXIT_FAILED
    assert "wrong password" in capsys.readouterr().err
    monkeypatch.delenv("BARGE_PASSWORD")
    assert main(["--repo", repo_url, "--password-file", str(tmp_path / "new"), "snapshots"]) == EXIT_OK


def test_moving_off_a_password_while_writers_still_use_it(
    repo_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The migration off Velero's default: add the new password (both open the repository while
    the agents switch Secrets), then remove the old one; the last password is never removed."""
    (tmp_path / "new").write_text("strong and new\n")
    new = ["--repo", repo_url, "--password-file", str(tmp_path / "new")]
    assert main(["--repo", repo_url, "key", "add", "--new-password-file", str(tmp_path / "new")]) == EXIT_OK
    assert main(["--repo", repo_url, "snapshots"]) == EXIT_OK  # the old one still works
    assert main([*new, "snapshots"]) == EXIT_OK
    assert main(["--repo", repo_url, "key", "remove"]) == EXIT_OK
    capsys.readouterr()
    assert main(["--repo", repo_url, "snapshots"]) == EXIT_FAILED
    assert "wrong password" in capsys.readouterr().err
    assert main([*new, "key", "remove"]) == EXIT_USAGE
    assert "only password of the repository" in capsys.readouterr().err
    assert main([*new, "snapshots"]) == EXIT_OK


def test_check_read_data_finds_a_flipped_byte_with_exit_3(
    repo_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    backup_json(repo_url, awkward_tree(tmp_path / "src"), capsys)
    assert main(["--repo", repo_url, "check", "--read-data"]) == EXIT_OK
    packs = sorted(
        (tmp_path / "repo" / "data").rglob("*"), key=lambda p: p.stat().st_size if p.is_file() else 0
    )
    victim = packs[-1]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x40
    victim.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["--repo", repo_url, "check", "--read-data"]) == EXIT_DAMAGED
    assert "damaged" in capsys.readouterr().out


def test_check_read_data_subset_reads_a_share_and_refuses_a_bad_percentage(
    repo_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    backup_json(repo_url, awkward_tree(tmp_path / "src"), capsys)
    capsys.readouterr()
    assert main(["--repo", repo_url, "check", "--read-data-subset", "100%"]) == EXIT_OK
    assert "blobs read and verified: no problems found" in capsys.readouterr().out
    for bad in ("0", "150%", "ten"):
        assert main(["--repo", repo_url, "check", "--read-data-subset", bad]) == EXIT_USAGE
        assert "percentage" in capsys.readouterr().err


def test_check_without_read_data_finds_any_missing_pack(
    repo_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    backup_json(repo_url, awkward_tree(tmp_path / "src"), capsys)
    packs = [p for p in (tmp_path / "repo" / "data").rglob("*") if p.is_file()]
    assert len(packs) >= 2  # at least one data pack and one tree pack
    for pack in packs:
        hidden = pack.with_suffix(".hidden")
        pack.rename(hidden)
        capsys.readouterr()
        assert main(["--repo", repo_url, "check"]) == EXIT_DAMAGED, pack
        assert "missing from storage" in capsys.readouterr().out
        hidden.rename(pack)
    assert main(["--repo", repo_url, "check"]) == EXIT_OK


def test_check_detects_a_deleted_index_as_missing_data(
    repo_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    backup_json(repo_url, awkward_tree(tmp_path / "src"), capsys)
    for index in (tmp_path / "repo" / "index").iterdir():
        index.unlink()
    assert main(["--repo", repo_url, "check"]) == EXIT_DAMAGED


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["snapshots"], EXIT_USAGE, "no repository"),
        (["--repo", "relative/path", "snapshots"], EXIT_USAGE, "file:///absolute/path"),
        (["--repo", "gopher://x", "snapshots"], EXIT_USAGE, "unsupported scheme"),
        (["--repo", "s3://b/p?colour=blue", "snapshots"], EXIT_USAGE, "unknown S3 option"),
        (["frobnicate"], EXIT_USAGE, "invalid choice"),
    ],
)
def test_usage_errors_exit_2_with_one_line(
    argv: list[str],
    code: int,
    message: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("BARGE_REPOSITORY", raising=False)
    monkeypatch.setenv("BARGE_PASSWORD", "x")
    assert main(argv) == code
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_operational_failures_exit_1_with_one_line(
    repo_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--repo", f"file://{tmp_path / 'nothing'}", "snapshots"]) == EXIT_FAILED
    assert "barge repo init" in capsys.readouterr().err
    assert main(["--repo", repo_url, "restore", "ab" * 32, str(tmp_path / "t")]) == EXIT_FAILED
    err = capsys.readouterr().err
    assert "does not exist" in err
    assert err.count("\n") == 1


def test_missing_password_without_a_tty_is_a_usage_error(
    repo_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("BARGE_PASSWORD")
    assert main(["--repo", repo_url, "snapshots"]) == EXIT_USAGE
    assert "BARGE_PASSWORD" in capsys.readouterr().err


def test_console_script_is_installed() -> None:
    import shutil
    import subprocess

    barge = shutil.which("barge") or os.path.join(os.path.dirname(os.sys.executable), "barge")
    completed = subprocess.run([barge, "--version"], capture_output=True, text=True, check=False)
    assert completed.returncode == 0
    assert completed.stdout.startswith("barge ")


def test_forget_and_gc_reclaim_space(
    repo_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "big").write_bytes(os.urandom(3_000_000))
    snapshot = backup_json(repo_url, source, capsys)
    data = tmp_path / "repo" / "data"
    before = sum(p.stat().st_size for p in data.rglob("*") if p.is_file())
    assert main(["--repo", repo_url, "forget", str(snapshot["snapshot_id"])]) == EXIT_OK
    assert main(["--repo", repo_url, "gc"]) == EXIT_OK
    assert main(["--repo", repo_url, "gc"]) == EXIT_OK
    after = sum(p.stat().st_size for p in data.rglob("*") if p.is_file())
    assert before > 3_000_000 > after
    assert main(["--repo", repo_url, "check"]) == EXIT_OK


def test_forget_by_retention_policy_with_prune(
    repo_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--keep-last per source, --dry-run forgets nothing, --prune reclaims at once (no backup runs)."""
    sources = {name: tmp_path / name for name in ("db", "web")}
    ids: dict[str, list[str]] = {"db": [], "web": []}
    for _ in range(3):
        for name, source in sources.items():
            source.mkdir(exist_ok=True)
            (source / "data").write_bytes(os.urandom(1_000_000))  # each round replaces the data
            ids[name].append(str(backup_json(repo_url, source, capsys, "--no-parent")["snapshot_id"]))
    doomed = sorted(ids["db"][:2] + ids["web"][:2])
    data = tmp_path / "repo" / "data"
    before = sum(p.stat().st_size for p in data.rglob("*") if p.is_file())

    assert main(["--repo", repo_url, "forget", "--keep-last", "1", "--dry-run"]) == EXIT_OK
    assert capsys.readouterr().out.split() == [w for i in doomed for w in ("would", "forget", "snapshot", i)]
    assert main(["--repo", repo_url, "forget", "--keep-last", "1", "--prune"]) == EXIT_OK
    out = capsys.readouterr().out
    assert [line.split()[-1] for line in out.splitlines() if line.startswith("forgot")] == doomed
    assert out.splitlines()[-1].startswith("deleted "), out  # the sweep ran, not only the mark
    after = sum(p.stat().st_size for p in data.rglob("*") if p.is_file())
    assert before - after > 4_000_000, (before, after)
    assert main(["--repo", repo_url, "snapshots", "--json"]) == EXIT_OK
    left = {row["id"] for row in json.loads(capsys.readouterr().out)}
    assert left == {ids["db"][2], ids["web"][2]}
    assert main(["--repo", repo_url, "check", "--read-data"]) == EXIT_OK


@pytest.mark.parametrize(
    "argv",
    [["forget"], ["forget", "a" * 64, "--keep-last", "1"], ["forget", "--keep-last", "-1"]],
)
def test_forget_needs_ids_or_a_policy(
    repo_url: str, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--repo", repo_url, *argv]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "Traceback" not in err


def _largest_pack(repo: Path) -> Path:
    return max((p for p in (repo / "data").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def _flip_a_byte(repo: Path) -> None:
    pack = _largest_pack(repo)
    data = bytearray(pack.read_bytes())
    data[len(data) // 3] ^= 0x01
    pack.write_bytes(bytes(data))


def _truncate_a_pack(repo: Path) -> None:
    pack = _largest_pack(repo)
    pack.write_bytes(pack.read_bytes()[: pack.stat().st_size // 2])


def _delete_the_index(repo: Path) -> None:
    for index in (repo / "index").iterdir():
        index.unlink()


@pytest.mark.parametrize("damage", [_flip_a_byte, _truncate_a_pack, _delete_the_index])
def test_damage_is_found_by_check_read_data_and_fails_the_restore_loudly(
    damage: Callable[[Path], None], repo_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    snapshot = backup_json(repo_url, awkward_tree(tmp_path / "src"), capsys)["snapshot_id"]
    damage(tmp_path / "repo")
    capsys.readouterr()
    assert main(["--repo", repo_url, "check", "--read-data"]) == EXIT_DAMAGED
    assert "problem(s)" in capsys.readouterr().out
    assert main(["--repo", repo_url, "restore", str(snapshot), str(tmp_path / "out")]) == EXIT_DAMAGED
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "Traceback" not in err


@pytest.mark.parametrize("debug", [False, True], ids=["plain", "BARGE_DEBUG"])
def test_an_unexpected_error_exits_1_with_one_line_and_a_traceback_only_when_debugging(
    repo_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    debug: bool,
) -> None:
    def broken_backup(*args: object, **kwargs: object) -> None:
        raise RecursionError("maximum recursion depth exceeded\nwhile walking")

    monkeypatch.setattr(cli_main, "backup_tree", broken_backup)
    if debug:
        monkeypatch.setenv("BARGE_DEBUG", "1")
    else:
        monkeypatch.delenv("BARGE_DEBUG", raising=False)
    (tmp_path / "src").mkdir()
    capsys.readouterr()
    assert main(["--repo", repo_url, "backup", str(tmp_path / "src")]) == EXIT_FAILED
    err = capsys.readouterr().err
    line = (
        "barge: unexpected error: RecursionError: maximum recursion depth exceeded while walking "
        "(a bug: please report it; BARGE_DEBUG=1 prints the traceback)"
    )
    assert err.splitlines()[-1] == line
    if debug:
        assert err.startswith("Traceback (most recent call last):")
        assert "broken_backup" in err
    else:
        assert err == line + "\n"


def test_a_tree_deeper_than_the_recursion_limit_backs_up_and_restores(
    repo_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = nested_tree(tmp_path / "src", 1_100)
    try:
        snapshot = str(backup_json(repo_url, source, capsys)["snapshot_id"])
        assert main(["--repo", repo_url, "restore", snapshot, str(tmp_path / "out")]) == EXIT_OK
        assert capture(tmp_path / "out") == capture(source)
    finally:  # rm -rf: pytest's own clean-up recurses
        remove_tree(source)
        remove_tree(tmp_path / "out")
