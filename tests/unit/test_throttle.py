"""The agent's upload rate limit: the ObjectStore contract kept, the rate held across callers."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from barge.clock import ManualClock, SystemClock
from barge.errors import InvalidInput
from barge.storage.local import LocalDirectoryStore
from barge.storage.throttle import RateLimit, ThrottledStore, parse_rate
from tests.storage_conformance import ObjectStoreConformance

MIB = 2**20


class TestThrottledStore(ObjectStoreConformance):
    @pytest.fixture
    def store(self, tmp_path: Path) -> ThrottledStore:
        return ThrottledStore(LocalDirectoryStore(tmp_path / "repo"), RateLimit(1 << 40, SystemClock()))


@pytest.mark.parametrize(
    ("text", "rate"),
    [("0", 0), ("1048576", MIB), ("64Mi", 64 * MIB), ("100M", 10**8), ("1.5Gi", 3 * 2**29), ("8k", 8000)],
)
def test_rates_are_read_as_kubernetes_quantities(text: str, rate: int) -> None:
    assert parse_rate(text) == rate


@pytest.mark.parametrize("text", ["", "fast", "-1Mi", "10MB", "1e6", "Mi"])
def test_a_rate_that_is_not_a_quantity_says_how_to_write_one(text: str) -> None:
    with pytest.raises(InvalidInput, match=r"e\.g\. 64Mi"):
        parse_rate(text)


def test_sending_holds_to_the_rate_after_a_one_second_burst() -> None:
    clock = ManualClock()
    limit = RateLimit(MIB, clock)
    start = clock.monotonic()
    for _ in range(10):
        limit.take(MIB)
    assert clock.monotonic() - start == pytest.approx(9.0)  # the first second's worth went at once


def test_idle_time_refills_at_most_one_seconds_worth() -> None:
    clock = ManualClock()
    limit = RateLimit(MIB, clock)
    limit.take(MIB)
    clock.advance(60)  # a minute idle
    assert limit.take(MIB) == 0.0
    assert limit.take(MIB) == pytest.approx(1.0)


def test_the_rate_holds_for_all_callers_together() -> None:
    """One limit per agent: four transfers at once share it rather than each getting it."""
    limit = RateLimit(8 * MIB, SystemClock())
    limit.take(8 * MIB)  # spend the initial burst: what follows is paced

    def send() -> None:
        for _ in range(4):
            limit.take(MIB // 2)

    workers = [threading.Thread(target=send) for _ in range(4)]
    started = SystemClock().monotonic()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    sent = 4 * 4 * (MIB // 2)
    assert SystemClock().monotonic() - started >= 0.95 * sent / (8 * MIB)


def test_a_throttled_store_waits_before_it_writes(tmp_path: Path) -> None:
    clock = ManualClock()
    store = ThrottledStore(LocalDirectoryStore(tmp_path), RateLimit(MIB, clock))
    store.put("a", bytes(MIB))  # the burst
    before = clock.monotonic()
    store.put("b", bytes(2 * MIB))
    assert clock.monotonic() - before == pytest.approx(2.0)
    assert store.get("b") == bytes(2 * MIB)
    store.get("a")  # reads are not limited
    assert clock.monotonic() - before == pytest.approx(2.0)


def test_a_limit_must_be_positive() -> None:
    with pytest.raises(InvalidInput):
        RateLimit(0, ManualClock())
