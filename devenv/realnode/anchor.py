"""PID 1 of a real node's namespaces: prepares the private mounts, then reaps orphans until told to stop.

Run by ``unshare --mount --net --pid --fork --mount-proc``; everything of the node (containerd, the
kubelet, the shims and the containers) joins these namespaces. When this process exits, the kernel
kills every process in its PID namespace, and with the last of them the mounts and the network
namespace go: nothing of the node can outlive it.

    python -m devenv.realnode.anchor --ready FILE [--tmpfs DIR ...] [--bind SRC:DST ...]

``--tmpfs``: an empty tmpfs over DIR, seen only inside (the paths the kubelet and containerd
hard-code). ``--bind``: SRC over DST (files over the ``/proc/sys`` values the kubelet insists on
setting, so it finds them set and writes nothing the host shares). FILE is written once all is in
place.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path


def _mount(*args: str) -> None:
    # -n: no utab entries (libmount would record them under the host's /run before its tmpfs)
    subprocess.run(["mount", "-n", *args], check=True, stdin=subprocess.DEVNULL)


def prepare(tmpfs: list[str], binds: list[str]) -> None:
    for directory in tmpfs:
        _mount("-t", "tmpfs", "-o", "mode=0755", "barge-realnode", directory)
    for pair in binds:
        source, _, target = pair.partition(":")
        _mount("--bind", source, target)


def _reap_all() -> None:
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass


def serve() -> None:
    """Reap every orphan the namespace hands to PID 1 until SIGTERM or SIGINT.

    The signals stay blocked and are taken with sigwaitinfo, so none is lost between two waits;
    they also get a handler, since the kernel drops a PID 1's signals that have none."""
    signals = {signal.SIGTERM, signal.SIGINT, signal.SIGCHLD}
    for signum in signals:
        signal.signal(signum, lambda signum, frame: None)
    signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    while True:
        _reap_all()
        if signal.sigwaitinfo(signals).si_signo != signal.SIGCHLD:
            return


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="devenv.realnode.anchor")
    parser.add_argument("--ready", type=Path, required=True)
    parser.add_argument("--tmpfs", action="append", default=[])
    parser.add_argument("--bind", action="append", default=[])
    args = parser.parse_args(argv)
    if os.getpid() != 1:
        print("devenv.realnode.anchor: must run as PID 1 of a new PID namespace", file=sys.stderr)
        return 2
    prepare(args.tmpfs, args.bind)
    args.ready.write_text("ready\n")
    serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
