"""barge.kube.informer's thread under barge.probes.Vitals, over a fake of the list and watch it
reads (the cache and the watch themselves are tested on the real API server in
tests/integration/test_kube_informer.py)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

from kubernetes import client

from barge.clock import ManualClock
from barge.errors import TemporaryError
from barge.kube.informer import Informer
from barge.kube.resources import DATA_UPLOAD, Listing, Obj, Resource
from barge.probes import Vitals


class Stream:
    def __init__(self, error: Exception | None) -> None:
        self._error = error
        self._ended = threading.Event()

    def events(self) -> Iterator[tuple[str, Obj]]:
        if self._error is not None:
            raise self._error
        self._ended.wait(30)  # a quiet watch, until stop() aborts it
        yield from ()

    def abort(self) -> None:
        self._ended.set()

    def close(self) -> None:
        self._ended.set()


class Objects:
    """An empty list, then watches that fail with ``error`` (None: quiet until aborted)."""

    def __init__(self, error: Exception | None) -> None:
        self._error = error

    def list_with_version(self, resource: Resource, namespace: str | None, selector: str | None) -> Listing:
        return Listing((), "1")

    def watch(self, resource: Resource, namespace: str | None, version: str, selector: str | None,
              timeout_s: int) -> Stream:  # fmt: skip
        return Stream(self._error)


def informer(vitals: Vitals, error: Exception | None) -> Informer:
    watched = Informer(client.ApiClient(), DATA_UPLOAD, "velero", vitals=vitals, clock=ManualClock())
    watched._objects = Objects(error)  # type: ignore[assignment]
    return watched


def test_an_informer_whose_loop_dies_is_reported_dead() -> None:
    vitals, died = Vitals(ManualClock()), threading.Event()
    vitals.on_death = lambda loop, reason: died.set()
    dying = informer(vitals, ValueError("a watch line is not JSON"))
    dying.start()
    try:
        assert died.wait(timeout=30)
    finally:
        dying.stop()
    assert vitals.problems() == ["informer-datauploads died: ValueError: a watch line is not JSON"]


def test_an_informer_retrying_api_errors_or_stopped_is_no_problem_and_a_quiet_watch_is_no_stall() -> None:
    clock = ManualClock()
    vitals = Vitals(clock, stall_after_s=60)
    deaths: list[str] = []
    vitals.on_death = lambda loop, reason: deaths.append(loop)
    retrying = informer(vitals, TemporaryError("the API server is unreachable"))
    quiet = informer(vitals, None)
    retrying.start()
    quiet.start()
    assert quiet.wait_synced(30)
    clock.advance(3600)  # a watch may stay quiet longer than the stall bound: its own timeout ends it
    assert vitals.problems() == []
    retrying.stop()
    quiet.stop()
    assert deaths == []
    assert vitals.problems() == []
