"""The dispatcher's wake: producers send it only while none is owed, and a burst of wakes is
served by a tick every `WAKE_GAP_S`, not a tick each (each tick is several Redis round trips; a
submission's wake used to cost more Redis CPU than the submission itself)."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable

import pytest
from redis.asyncio import Redis

from msgq.channels import listeners, subscriber
from msgq.client import Client
from msgq.jobs.store import JobStore
from msgq.settings import Settings
from tests.conftest import KEYS, eventually
from worker.dispatch import wakes as wakes_module
from worker.dispatch.dispatcher import Dispatcher
from worker.dispatch.wakes import WAKE_GAP_S, DispatcherWake
from worker.ratelimit import RateLimiter

BODY = {
    "model": "claude-haiku-4-5",
    "max_tokens": 16,
    "messages": [{"role": "user", "content": "Hello"}],
}


class CountingDispatcher(Dispatcher):
    """The real loop, lock and wake; each tick only notes when it ran."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.ticks: list[float] = []

    async def tick(self) -> float:
        self.ticks.append(time.monotonic())
        return 1.0  # as an idle fleet's dispatcher: look again in a second unless woken


async def wake_burst(event: asyncio.Event, for_s: float, every_s: float = 0.0) -> int:
    """Set `event` every `every_s` (0: every loop turn) for `for_s`; how many times it was."""
    wakes, started = 0, time.monotonic()
    while time.monotonic() - started < for_s:
        event.set()
        wakes += 1
        await asyncio.sleep(every_s)
    return wakes


def assert_paced(runs: list[float], gap_s: float, wakes: int, *, most: int) -> None:
    """The runs that served a burst of `wakes` (the one before it first) are at least `gap_s`
    apart, at most `most` of them, and fewer than the wakes."""
    gaps = [b - a for a, b in itertools.pairwise(runs)]
    assert min(gaps) >= gap_s * 0.99, gaps
    assert len(runs) <= most < wakes, (len(runs), wakes)


async def take(wake: DispatcherWake, redis: Redis) -> None:
    """What a tick does with a wake: taken, its owed flag cleared by the tick's first read."""
    wake.taken()
    async with redis.pipeline(transaction=False) as pipe:
        assert wake.clear_in(pipe) == 1
        await pipe.execute()


def counting(settings: Settings, redis: Redis) -> CountingDispatcher:
    limiter = RateLimiter(redis, KEYS, {})
    return CountingDispatcher(redis, JobStore.from_settings(redis, settings), settings, limiter)


async def _subscribed(redis: Redis) -> bool:
    return await listeners(redis, KEYS, KEYS.sched_wake) > 0


async def test_a_burst_of_submissions_sends_one_wake_until_a_tick_takes_it(
    client: Client, redis: Redis
) -> None:
    wake = DispatcherWake(redis, KEYS)
    listener = asyncio.create_task(wake.listen())
    try:
        await eventually(lambda: _subscribed(redis))
        await eventually(_set(wake))  # the subscription's own wake
        await take(wake, redis)
        for _ in range(5):
            await client.submit(BODY)
        await eventually(_set(wake))
        ttl = await redis.pttl(KEYS.sched_woken)
        assert 0 < ttl <= 1000  # owed: a lost message holds the next wake back a second at most
        await take(wake, redis)  # a tick starts: the wake consumed, the next one may be sent
        assert not await redis.exists(KEYS.sched_woken)
        await client.submit(BODY)
        await eventually(_set(wake))  # owed no longer: the next job placed wakes again
    finally:
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)


async def test_the_burst_sends_one_message(client: Client, redis: Redis) -> None:
    """Counted on a subscription of the test's own: five submissions, one message."""
    async with subscriber(redis, KEYS) as pubsub:  # sharded on a cluster
        await pubsub.subscribe(KEYS.sched_wake)
        await redis.delete(KEYS.sched_woken)
        for _ in range(5):
            await client.submit(BODY)
        await redis.delete(KEYS.sched_woken)  # as a tick does
        await client.submit(BODY)
        got = []
        deadline = time.monotonic() + 5
        while len(got) < 3 and time.monotonic() < deadline:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
            if message is not None:
                got.append(message["data"])
        assert len(got) == 2, got


async def test_a_burst_of_wakes_is_served_by_paced_ticks(settings: Settings, redis: Redis) -> None:
    dispatcher = counting(settings, redis)
    loop = asyncio.create_task(dispatcher.run_forever())
    try:
        await eventually(lambda: _ticked(dispatcher))  # the first tick: lock taken
        first = len(dispatcher.ticks)
        wakes = await wake_burst(dispatcher.wakes.event, 20 * WAKE_GAP_S)  # every loop turn
        await eventually(lambda: _ticked(dispatcher, first + 1))
        assert_paced(dispatcher.ticks[first - 1 :], WAKE_GAP_S, wakes, most=23)
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)


async def test_the_gap_counts_from_the_last_tick_not_from_the_wake(
    settings: Settings, redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A wake long after a tick ticks at once, so a quiet fleet's latency (the drop-in's) pays
    nothing for the pacing; a wake soon after one waits out the gap. A long gap here, so the
    margins dwarf a loaded machine's scheduling delays."""
    gap = 0.3
    monkeypatch.setattr(wakes_module, "WAKE_GAP_S", gap)
    dispatcher = counting(settings, redis)
    loop = asyncio.create_task(dispatcher.run_forever())
    try:
        await eventually(lambda: _subscribed(redis))
        await eventually(lambda: _ticked(dispatcher))
        await asyncio.sleep(gap + 0.2)  # quiet: past the gap (the next poll is 1 s away)
        n = len(dispatcher.ticks)
        woken = time.monotonic()
        dispatcher.wakes.event.set()
        await eventually(lambda: _ticked(dispatcher, n + 1))
        assert dispatcher.ticks[n] - woken < gap * 0.8, dispatcher.ticks[n] - woken
        dispatcher.wakes.event.set()  # soon after that tick: within the gap
        await eventually(lambda: _ticked(dispatcher, n + 2))
        assert dispatcher.ticks[n + 1] - dispatcher.ticks[n] >= gap * 0.99
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)


def _set(wake: DispatcherWake) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return wake.event.is_set()

    return check


async def _ticked(dispatcher: CountingDispatcher, count: int = 1) -> bool:
    return len(dispatcher.ticks) >= count
