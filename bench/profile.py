"""Where one Barge command spends its time, on every thread: ``python -m bench.profile --report F -- ARGS``.

``make bench`` runs each operation that misses its target once more under this wrapper and prints
the report. cProfile and pyinstrument follow one thread, but a backup works on a pool of readers
and uploaders, so this samples every thread's innermost Python frame every few milliseconds
instead. A C call that releases the interpreter lock (zstd, AES-GCM, BLAKE3, a read) shows as the
Python line that made it. The report also gives the process's CPU time against its wall time
(how many of the cores it kept busy, and the kernel's share), and what the imports cost.

Read it knowing its bias: the sampler itself needs the interpreter lock, which it gets at once
while a thread sits in a system call but only at the next switch interval (5 ms) from a thread
running Python, so lines that release the lock are over-counted and pure-Python work under-counted.
A thread waiting to take the lock back shows on the line it released it from (often a ``return``).
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()  # before the imports below: they are part of a command's fixed cost

import argparse  # noqa: E402
import linecache  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
from collections import Counter  # noqa: E402
from pathlib import Path  # noqa: E402
from types import FrameType  # noqa: E402

# Frames in these modules are a thread waiting for work or for a lock, not doing any.
_WAITING = ("threading.py", "queue.py", "concurrent/futures/", "selectors.py")
Site = tuple[str, str, int]  # file, function, line


class ThreadSampler:
    """Every ``interval`` seconds, note where each other thread's innermost Python frame is."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.busy: Counter[Site] = Counter()
        self.functions: Counter[tuple[str, str]] = Counter()
        self.waiting = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-sampler", daemon=True)

    def __enter__(self) -> ThreadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        me = threading.get_ident()
        while not self._stop.wait(self.interval):
            for ident, frame in sys._current_frames().items():
                if ident != me:
                    self._note(frame)

    def _note(self, frame: FrameType) -> None:
        path = frame.f_code.co_filename
        if any(part in path for part in _WAITING):
            self.waiting += 1
            return
        site = (_short(path), frame.f_code.co_name, frame.f_lineno)
        self.busy[site] += 1
        self.functions[site[:2]] += 1

    def report(self, top: int = 12) -> list[str]:
        total = sum(self.busy.values())
        waiting = f"waiting: {self.waiting:,} (threads idle in a pool or on a lock)"
        lines = [f"  busy thread samples: {total:,}; {waiting}"]
        for (path, function), count in self.functions.most_common(top):
            line = max((s for s in self.busy if s[:2] == (path, function)), key=self.busy.__getitem__)
            source = linecache.getline(_full(path), line[2]).strip()[:70]
            lines.append(f"  {100 * count / max(total, 1):5.1f}%  {path}:{line[2]} {function}: {source}")
        return lines


def _short(path: str) -> str:
    root = str(Path(__file__).resolve().parent.parent) + os.sep
    if path.startswith(root):
        return path[len(root) :]
    return path.rsplit("site-packages" + os.sep, 1)[-1]


def _full(path: str) -> str:
    candidate = Path(__file__).resolve().parent.parent / path
    return str(candidate) if candidate.exists() else path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--report", type=Path, required=True, help="where the report is written")
    parser.add_argument("--label", default="barge")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="-- then the barge command's arguments")
    options = parser.parse_args()
    argv = options.args[1:] if options.args[:1] == ["--"] else options.args
    imports_started = time.perf_counter()
    from barge.cli.main import main as barge_main  # noqa: PLC0415 - timed: a fixed cost of every command

    imported = time.perf_counter()
    with ThreadSampler() as sampler:
        code = barge_main(argv)
    wall = time.perf_counter() - STARTED
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage.ru_utime + usage.ru_stime
    header = (
        f"profile of {options.label} (one extra run, every thread sampled every 5 ms): wall {wall:.2f} s, "
        f"CPU {usage.ru_utime:.2f} s user + {usage.ru_stime:.2f} s system = {cpu / wall:.2f} of "
        f"{os.cpu_count()} cores busy, {100 * usage.ru_stime / max(cpu, 1e-9):.0f}% of it in the kernel; "
        f"start-up {imported - STARTED:.2f} s, of which Barge's imports {imported - imports_started:.2f} s"
    )
    options.report.write_text("\n".join([header, *sampler.report()]) + "\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
