"""Supervising the local server processes: free ports, readiness waits, clean teardown.

Children get a parent-death signal so that a killed test run (``kill -9`` of pytest, a CI timeout)
never leaves an etcd or kube-apiserver behind holding ports and data directories.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import random
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Generic, TypeVar

from barge.errors import TemporaryError
from devenv.waiting import wait_for

EndpointT = TypeVar("EndpointT")


def dying_with_parent(argv: Sequence[str]) -> list[str]:
    """``argv`` run so that the kernel kills it when its parent dies, set by util-linux's
    ``setpriv`` in the child before it execs ``argv``. Not a ``preexec_fn``: that makes Python
    fork (not vfork) and run Python code in the child of a process that has grpcio loaded, whose
    fork handlers then aborted a child (SIGABRT, "epoll_wait error: Bad file descriptor").
    Without ``setpriv`` the child runs unguarded."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", *argv] if setpriv else list(argv)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# Below the kernel's ephemeral ports (32768 up) and NodePorts (30000-32767), above the node's
# well-known ones (kubelet 10250, kube-proxy 10249/10256).
_NAMESPACE_PORTS = range(20000, 30000)
_handed_out: set[int] = set()
_handed_out_lock = threading.Lock()


def namespace_port() -> int:
    """A TCP port for a server in a network namespace of its own (the real node's). A port
    ``free_port`` finds free here is from the ephemeral range, which the namespace's kubelet,
    kube-proxy and containerd use for their outgoing connections: one of them held it when Velero
    bound (``bind: address already in use``), and a check from this namespace cannot see that.
    Below that range only the namespace's servers listen; each port is handed out once."""
    with _handed_out_lock:
        choices = [port for port in _NAMESPACE_PORTS if port not in _handed_out]
        port = random.SystemRandom().choice(choices)
        _handed_out.add(port)
    return port


class ServerProcess:
    """One long-running server child with its output in a log file."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self._env = dict(env) if env is not None else None
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                dying_with_parent(self.argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._env,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError(f"{self.name} was never started")
        return self._proc.pid

    def exit_code(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def wait_ready(self, probe: Callable[[], bool], timeout: float, what: str) -> None:
        """Poll ``probe`` until it is true; fail fast if the process exits, with its log tail."""

        def ready() -> bool:
            code = self.exit_code()
            if code is not None:
                raise TemporaryError(
                    f"{self.name} exited with code {code} before {what}; log {self.log_path}:\n"
                    f"{self.log_tail()}"
                )
            with contextlib.suppress(OSError):
                return bool(probe())
            return False

        try:
            wait_for(ready, timeout, what=f"{self.name} {what}", interval=0.1)
        except TemporaryError:
            if self.exit_code() is not None:
                raise  # it says so, with the log tail
            log = f"log {self.log_path}:\n{self.log_tail()}"
            raise TemporaryError(f"{self.name} not {what} after {timeout:.0f}s; {log}") from None

    def pause(self) -> None:
        """SIGSTOP: the process keeps its sockets but answers nothing (an unresponsive server)."""
        os.killpg(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.killpg(self.pid, signal.SIGCONT)

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds; always reaps the child."""
        if self._proc is None or self._proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._proc.pid, signal.SIGCONT)
            os.killpg(self._proc.pid, signal.SIGTERM)
        try:
            self._proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait(timeout=grace)


def http_ok(host: str, port: int, path: str, context: ssl.SSLContext | None = None) -> bool:
    """True when GET ``path`` answers 200; plain HTTP unless an SSL context is given."""
    conn: http.client.HTTPConnection
    if context is None:
        conn = http.client.HTTPConnection(host, port, timeout=2)
    else:
        conn = http.client.HTTPSConnection(host, port, timeout=2, context=context)
    try:
        conn.request("GET", path)
        return conn.getresponse().status == 200
    finally:
        conn.close()


class StartedWhileEntered(Generic[EndpointT]):
    """A context manager that starts on entering and stops on leaving; a start that fails part-way
    is stopped too, so nothing it launched outlives the ``with``."""

    def start(self) -> EndpointT:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> EndpointT:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class TemporaryServer(StartedWhileEntered[EndpointT]):
    """A server child on a scratch directory, as a context manager yielding where it listens;
    leaving stops it and removes the directory. Subclasses implement ``start``.
    """

    name = "server"

    def __init__(self, workdir: Path | None = None) -> None:
        self._own_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix=f"barge-{self.name}-"))
        self.process: ServerProcess | None = None

    def start(self) -> EndpointT:
        """Start ``self.process`` and wait until it serves."""
        raise NotImplementedError

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


def http_answers(host: str, port: int) -> bool:
    """True when anything answers HTTP on the port (servers whose every path needs credentials)."""
    conn = http.client.HTTPConnection(host, port, timeout=2)
    try:
        conn.request("GET", "/")
        conn.getresponse().read()
        return True
    finally:
        conn.close()
