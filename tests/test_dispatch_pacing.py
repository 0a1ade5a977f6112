"""The dispatcher's pacing: a burst of submissions is served by a tick every `WAKE_GAP_S`, not
a tick each (each tick is several Redis round trips; a submission's wake used to cost more
Redis CPU than the submission itself)."""

from __future__ import annotations

import asyncio
import time

import pytest
from redis.asyncio import Redis

from msgq.jobs.store import JobStore
from msgq.settings import Settings
from tests.conftest import KEYS, eventually
from worker.dispatch import dispatcher as dispatcher_module
from worker.dispatch.dispatcher import WAKE_GAP_S, Dispatcher
from worker.ratelimit import RateLimiter


class CountingDispatcher(Dispatcher):
    """The real loop, lock and wake listener; each tick only notes when it ran."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.ticks: list[float] = []

    async def tick(self) -> float:
        self.ticks.append(time.monotonic())
        return 1.0  # as an idle fleet's dispatcher: look again in a second unless woken


async def test_a_burst_of_wakes_is_served_by_paced_ticks(settings: Settings, redis: Redis) -> None:
    limiter = RateLimiter(redis, KEYS, {})
    dispatcher = CountingDispatcher(
        redis, JobStore.from_settings(redis, settings), settings, limiter
    )
    loop = asyncio.create_task(dispatcher.run_forever())
    try:
        await eventually(lambda: _ticked(dispatcher))  # the first tick: lock taken
        first = len(dispatcher.ticks)
        wakes, started = 0, time.monotonic()
        while time.monotonic() - started < 20 * WAKE_GAP_S:  # a wake every loop turn
            dispatcher.wake.set()
            wakes += 1
            await asyncio.sleep(0)
        await asyncio.sleep(2 * WAKE_GAP_S)
        burst = dispatcher.ticks[first:]
        assert burst, "a wake must bring a tick"
        gaps = [b - a for a, b in zip(dispatcher.ticks[first - 1 :], burst, strict=False)]
        assert min(gaps[1:], default=WAKE_GAP_S) >= WAKE_GAP_S * 0.99, gaps
        assert len(burst) <= 22 < wakes, (len(burst), wakes)
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)


async def test_the_gap_counts_from_the_last_tick_not_from_the_wake(
    settings: Settings, redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A wake soon after a tick waits out the gap; a wake long after one ticks at once, so a
    quiet fleet's latency (the drop-in's) pays nothing for the pacing. A long gap here, so
    the margins dwarf a loaded machine's scheduling delays."""
    gap = 0.3
    monkeypatch.setattr(dispatcher_module, "WAKE_GAP_S", gap)
    limiter = RateLimiter(redis, KEYS, {})
    dispatcher = CountingDispatcher(
        redis, JobStore.from_settings(redis, settings), settings, limiter
    )
    loop = asyncio.create_task(dispatcher.run_forever())
    try:
        await eventually(lambda: _ticked(dispatcher))
        dispatcher.wake.set()  # at once: within the gap
        await eventually(lambda: _ticked(dispatcher, 2))
        assert dispatcher.ticks[1] - dispatcher.ticks[0] >= gap * 0.99
        await asyncio.sleep(gap + 0.2)  # quiet, past the gap (the next poll is 1 s away)
        woken = time.monotonic()
        dispatcher.wake.set()
        await eventually(lambda: _ticked(dispatcher, 3))
        assert dispatcher.ticks[2] - woken < gap * 0.8, dispatcher.ticks[2] - woken
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)


async def _ticked(dispatcher: CountingDispatcher, count: int = 1) -> bool:
    return len(dispatcher.ticks) >= count
