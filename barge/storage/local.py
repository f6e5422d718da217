"""The embedded default backend: a directory on a local (or mounted) filesystem.

Writes go to a temporary file, are fsynced, then linked into place: ``link`` fails if the name
exists, which gives create-only semantics without a lock, and a crash never leaves a partial
object under a real name.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from barge.errors import InvalidInput, TemporaryError
from barge.storage import ObjectExists, ObjectInfo, ObjectNotFound

_TMP_DIR = ".tmp"


def _check_key(key: str) -> None:
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts) or parts[0] == _TMP_DIR:
        raise InvalidInput(f"invalid object key {key!r}")


def _pread_fully(fd: int, length: int, offset: int) -> bytes:
    """Up to ``length`` bytes from ``offset``: fewer only at the end of the file."""
    data = os.pread(fd, length, offset)
    if len(data) == length or not data:
        return data
    parts = [data]
    got = len(data)
    while got < length and (more := os.pread(fd, length - got, offset + got)):
        parts.append(more)
        got += len(more)
    return b"".join(parts)


class LocalDirectoryStore:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        (self.root / _TMP_DIR).mkdir(parents=True, exist_ok=True)

    def describe(self) -> str:
        return f"file://{self.root}"

    def _path(self, key: str) -> Path:
        _check_key(key)
        return self.root / key

    def put(self, key: str, data: bytes | memoryview, *, overwrite: bool = False) -> None:
        """A failed write (disk full, I/O error) is a TemporaryError naming the store, never a bare
        OSError: callers reading a source volume must not mistake it for an unreadable source file."""
        final = self._path(key)
        try:
            self._put(final, key, data, overwrite=overwrite)
        except OSError as err:
            raise TemporaryError(f"cannot store {key} in {self.describe()}: {err.strerror or err}") from err

    def _put(self, final: Path, key: str, data: bytes | memoryview, *, overwrite: bool) -> None:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.root / _TMP_DIR / f"{uuid.uuid4().hex}.tmp"
        try:
            with tmp.open("xb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            if tmp.stat().st_size != len(data):
                raise OSError(f"short write to {tmp}")
            if overwrite:
                tmp.replace(final)
            else:
                try:
                    os.link(tmp, final)
                except FileExistsError:
                    raise ObjectExists(f"{key} already exists in {self.describe()}") from None
            self._fsync_dir(final.parent)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    @staticmethod
    def _fsync_dir(directory: Path) -> None:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            raise ObjectNotFound(f"{key} not found in {self.describe()}") from None

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        """With the bare system calls (``os.open``, ``os.pread``), not a buffered file object: a
        restore reads each blob this way, and the file object's layers cost more than the read."""
        try:
            fd = os.open(self._path(key), os.O_RDONLY | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            raise ObjectNotFound(f"{key} not found in {self.describe()}") from None
        try:
            if offset < 0:
                offset = max(0, os.fstat(fd).st_size + offset)
            return _pread_fully(fd, length, offset)
        except OSError as err:
            raise ObjectNotFound(f"cannot read {key}: {err}") from err
        finally:
            os.close(fd)

    def stat(self, key: str) -> ObjectInfo:
        try:
            st = self._path(key).stat()
        except (FileNotFoundError, NotADirectoryError):
            raise ObjectNotFound(f"{key} not found in {self.describe()}") from None
        return ObjectInfo(key, st.st_size, datetime.fromtimestamp(st.st_mtime, UTC))

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        found: list[ObjectInfo] = []
        base = self.root / prefix.rsplit("/", 1)[0] if "/" in prefix else self.root
        for dirpath, dirnames, filenames in os.walk(base):
            rel_dir = os.path.relpath(dirpath, self.root)
            if rel_dir == _TMP_DIR:
                dirnames.clear()
                continue
            for name in filenames:
                key = name if rel_dir == "." else f"{rel_dir}/{name}"
                if key.startswith(prefix):
                    with contextlib.suppress(FileNotFoundError):
                        st = os.stat(os.path.join(dirpath, name))
                        found.append(ObjectInfo(key, st.st_size, datetime.fromtimestamp(st.st_mtime, UTC)))
        yield from sorted(found, key=lambda info: info.key)

    def folders(self, prefix: str) -> tuple[str, ...]:
        directory = self.root / prefix.strip("/")
        try:
            entries = list(os.scandir(directory))
        except (FileNotFoundError, NotADirectoryError):
            return ()
        hidden = _TMP_DIR if directory == self.root else None
        names = (e.name for e in entries if e.is_dir() and e.name != hidden and _holds_files(e.path))
        return tuple(sorted(names))

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(key).unlink()


def _holds_files(path: str) -> bool:
    """A directory is a folder of the store only while some object lies below it (deletes leave
    empty directories behind)."""
    return any(files for _, _, files in os.walk(path))
