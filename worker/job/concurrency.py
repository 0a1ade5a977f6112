"""Adaptive concurrency per worker: halve on 429/529, creep up by one while calls are clean."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator


class AdaptiveConcurrency:
    """AIMD within [1, max_limit], like TCP: overload signals cut fast, recovery is gradual.

    A burst of overload answers from calls already in flight counts once per `cut_interval_s`,
    or one bad moment would collapse the limit to 1.
    """

    def __init__(self, max_limit: int, *, cut_interval_s: float = 1.0) -> None:
        self.max_limit = max_limit
        self.limit = max_limit
        self.in_flight = 0
        self.cut_interval_s = cut_interval_s
        self._clean = 0
        self._last_cut = 0.0
        self._changed = asyncio.Condition()

    async def acquire(
        self, *, timeout_s: float | None = None
    ) -> contextlib.AbstractAsyncContextManager[None]:
        """Take a slot, waiting at most `timeout_s` (TimeoutError); release it with `async with`."""
        async with asyncio.timeout(timeout_s), self._changed:
            await self._changed.wait_for(lambda: self.in_flight < self.limit)
            self.in_flight += 1
        return self._held()

    @contextlib.asynccontextmanager
    async def _held(self) -> AsyncIterator[None]:
        try:
            yield
        finally:
            async with self._changed:
                self.in_flight -= 1
                self._changed.notify_all()

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Wait as long as it takes for a slot (tests and benchmarks)."""
        async with await self.acquire():
            yield

    def overloaded(self) -> None:
        now = time.monotonic()
        if now - self._last_cut >= self.cut_interval_s:
            self.limit = max(1, self.limit // 2)
            self._last_cut = now
        self._clean = 0

    async def succeeded(self) -> None:
        self._clean += 1
        if self._clean >= self.limit and self.limit < self.max_limit:
            self.limit += 1
            self._clean = 0
            async with self._changed:
                self._changed.notify_all()
