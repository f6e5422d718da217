"""Run code as root *without* the capabilities that let root read any file (tests only).

The tests run as root, and root reads a ``chmod 000`` file. Linux capabilities are per thread and
inherited by the threads a thread creates, so a thread that drops CAP_DAC_OVERRIDE and
CAP_DAC_READ_SEARCH from its effective set (and every worker thread it starts) gets the kernel's
real EACCES on such a file, while the rest of the test process keeps its privileges.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

_CAPABILITY_VERSION_3 = 0x20080522
CAP_DAC_OVERRIDE = 1
CAP_DAC_READ_SEARCH = 2


class _Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _Data(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def _drop_file_read_override() -> None:
    """Clear CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from the calling thread's effective set."""
    libc = ctypes.CDLL(None, use_errno=True)
    header = _Header(_CAPABILITY_VERSION_3, 0)
    data = (_Data * 2)()
    if libc.capget(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capget failed")
    data[0].effective &= ~((1 << CAP_DAC_OVERRIDE) | (1 << CAP_DAC_READ_SEARCH))
    if libc.capset(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capset failed")


def without_file_read_override(work: Callable[[], T], timeout: float = 120.0) -> T:
    """``work()`` on a thread that cannot bypass file permissions; its result or its exception."""
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            _drop_file_read_override()
            outcome["value"] = work()
        except BaseException as err:  # handed to the caller's thread
            outcome["error"] = err

    thread = threading.Thread(target=run, name="no-dac-override")
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(f"work without CAP_DAC_OVERRIDE did not end within {timeout:.0f}s")
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["value"]  # type: ignore[return-value]


def unreadable_file(path: os.PathLike[str] | str) -> None:
    """Mode 000: only a process with CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH can read it."""
    os.chmod(path, 0)
