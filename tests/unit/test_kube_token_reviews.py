"""Reuse of accepted TokenReviews (``CachedReviews``), counted through a TokenReview port."""

from __future__ import annotations

import base64
import json
import pickle
from dataclasses import dataclass, field

from barge.clock import ManualClock
from barge.kube.tokenreview import CachedReviews, Review, token_expiry

AGENT = "system:serviceaccount:barge:barge-agent"


@dataclass
class CountingReviews:
    """The API server's TokenReview: knows some tokens; counts the reviews it was asked for."""

    known: set[str] = field(default_factory=set)
    count: int = 0

    def __call__(self, token: str) -> Review:
        self.count += 1
        if token in self.known:
            return Review(True, AGENT, {"authentication.kubernetes.io/pod-name": ["agent-x"]})
        return Review(False, error="invalid bearer token")


def jwt(claims: dict[str, object]) -> str:
    def part(data: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    return f"{part({'alg': 'RS256'})}.{part(claims)}.c2lnbmF0dXJl"


def cached(
    known: set[str], clock: ManualClock, max_entries: int = 100
) -> tuple[CachedReviews, CountingReviews]:
    port = CountingReviews(known)
    return CachedReviews(port, clock, ttl_s=60, max_entries=max_entries), port


def test_an_accepted_token_is_reviewed_once_per_ttl() -> None:
    clock = ManualClock()
    reviews, port = cached({"good"}, clock)
    for _ in range(5):
        assert reviews.review("good").username == AGENT
    assert port.count == 1
    clock.advance(59)
    reviews.review("good")
    assert port.count == 1
    clock.advance(1)
    reviews.review("good")
    assert port.count == 2


def test_a_rejected_token_is_reviewed_every_time() -> None:
    reviews, port = cached(set(), ManualClock())
    assert [reviews.review("forged").authenticated for _ in range(3)] == [False] * 3
    assert port.count == 3
    port.known.add("forged")  # the API server learns of a new token: accepted at once
    assert reviews.review("forged").authenticated


def test_reuse_never_outlives_the_tokens_expiry() -> None:
    clock = ManualClock()
    now = clock.now().timestamp()
    soon, expired = jwt({"sub": "agent", "exp": int(now) + 10}), jwt({"sub": "agent", "exp": int(now) - 1})
    reviews, port = cached({soon, expired}, clock)
    reviews.review(soon)
    reviews.review(soon)
    assert port.count == 1
    clock.advance(10)
    reviews.review(soon)
    assert port.count == 2
    reviews.review(expired)
    reviews.review(expired)
    assert port.count == 4


def test_the_cache_is_bounded_and_keeps_the_most_recently_used() -> None:
    reviews, port = cached({"a", "b", "c"}, ManualClock(), max_entries=2)
    for token in ("a", "b", "a", "c"):  # "b" is the least recently used when "c" arrives
        reviews.review(token)
    assert port.count == 3
    reviews.review("a")
    assert port.count == 3
    reviews.review("b")
    assert port.count == 4


def test_the_cache_holds_a_hash_of_the_token_never_the_token() -> None:
    token = jwt({"sub": "agent", "secret-part": "s3cr3t-token-material"})
    reviews, _ = cached({token}, ManualClock())
    reviews.review(token)
    dump = pickle.dumps(vars(reviews)["_entries"])
    assert token.encode() not in dump
    assert b"s3cr3t-token-material" not in dump


def test_token_expiry_reads_the_exp_claim_of_a_jwt_only() -> None:
    assert token_expiry(jwt({"exp": 1_900_000_000})) == 1_900_000_000
    assert token_expiry(jwt({"sub": "no-exp"})) is None
    assert token_expiry(jwt({"exp": True})) is None
    a_list = base64.urlsafe_b64encode(b"[1]").decode()
    for garbage in ("", "opaque-token", "a.b.c", "a.!!!.c", f"x.{a_list}.y"):
        assert token_expiry(garbage) is None
