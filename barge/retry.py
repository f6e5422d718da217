"""The one retry policy: exponential backoff, capped, jittered where many clients retry at once.

Used by every loop that retries: the agent's reconnects, the informers' relists and the
coordinator's reconciles that failed. (Object storage retries live in the storage clients, which
are configured with the same shape; see ``barge.storage``.)
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    first_s: float
    max_s: float

    def delay(self, failures: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after ``failures`` failures in a row (1 = the first): doubling from
        ``first_s`` up to ``max_s``. With ``rng``, a random point in the upper half of that, never
        under ``first_s``, so that a fleet that failed together does not retry together."""
        ceiling = min(self.max_s, self.first_s * 2.0 ** min(max(failures, 1) - 1, 32))
        if rng is None:
            return ceiling
        return max(self.first_s, ceiling * rng.uniform(0.5, 1.0))
