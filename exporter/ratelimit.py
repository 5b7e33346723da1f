"""A per-source token bucket shared by every upstream request of that source."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from exporter.settings import RateLimit


class RateLimitWait(Exception):
    """Waiting for a token would go past the caller's deadline."""

    def __init__(self, wait: float) -> None:
        super().__init__(f"rate limit: next request allowed in {wait:.2f}s, after the deadline")
        self.wait = wait


class TokenBucket:
    """Holds `capacity` tokens, refilled continuously at `per_second`.

    A caller reserves its token up front (the balance may go negative) and then sleeps until
    the reservation matures; that keeps callers in arrival order without a queue.
    """

    def __init__(self, limit: RateLimit, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self._clock = clock
        self._tokens = limit.capacity
        self._stamp = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(
            self.limit.capacity, self._tokens + (now - self._stamp) * self.limit.per_second
        )
        self._stamp = now

    def reserve(self, max_wait: float) -> float:
        """Take one token; return how long to sleep before using it, or raise RateLimitWait."""
        self._refill()
        wait = max(0.0, (1.0 - self._tokens) / self.limit.per_second)
        if wait > max_wait:
            raise RateLimitWait(wait)
        self._tokens -= 1.0
        return wait

    @property
    def headroom(self) -> float:
        """Tokens background work leaves for scrapes: a tenth of the bucket, at least 2."""
        return min(max(2.0, self.limit.capacity * 0.1), max(self.limit.capacity - 1.0, 0.0))

    async def acquire(self, deadline: float, *, background: bool = False) -> float:
        """Wait for a token, but never past `deadline` (a loop.time() value); return the
        seconds waited.

        Background work (a long full sync) takes a token only while `headroom` would remain and
        never reserves ahead, so a scrape's requests always go first.
        """
        loop = asyncio.get_running_loop()
        if not background:
            wait = self.reserve(deadline - loop.time())
            if wait > 0:
                await asyncio.sleep(wait)
            return wait
        waited = 0.0
        while True:
            self._refill()
            needed = 1.0 + self.headroom - self._tokens
            if needed <= 0:
                self._tokens -= 1.0
                return waited
            wait = needed / self.limit.per_second
            if loop.time() + wait > deadline:
                raise RateLimitWait(wait)
            await asyncio.sleep(wait)
            waited += wait

    @property
    def available(self) -> float:
        self._refill()
        return self._tokens
