"""The dispatcher's wake: a message on `sched_wake` when a job is placed in the scheduler (or the
fleet resumes), sent by producers only while none is owed (`msgq.tenancy.scheduling.
wake_dispatcher`), and paced, so a burst of submissions costs a tick every `WAKE_GAP_S`.

Before each submission sent its own message and woke a tick of its own: 2.2 of a submission's
3.3 Redis round trips and half its Redis CPU, on one node with 64 producers submitting at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import structlog
from redis.asyncio import Redis

from msgq.channels import subscriber
from msgq.keys import Keyspace

log = structlog.get_logger("msgq.dispatcher")

# A wake within this long of the last tick's start waits out the rest: one tick serves every job
# placed meanwhile. An idle dispatcher's first wake still ticks at once.
WAKE_GAP_S = 0.005


class DispatcherWake:
    """`await taken()` as a tick starts, `await wait(seconds)` between ticks; `listen()` runs
    beside them and sets `event` on each message."""

    def __init__(self, redis: Redis, keys: Keyspace) -> None:
        self.redis, self.keys = redis, keys
        self.event = asyncio.Event()
        self._ticked = 0.0
        self._owed = False  # a wake was taken: its flag is cleared by the tick's first read

    def taken(self) -> None:
        """A tick starts: a wake that came is consumed, and its owed flag is cleared by the
        tick's first read (`clear_in`), so a job placed after that read wakes another tick."""
        if self.event.is_set():
            self.event.clear()
            self._owed = True
        self._ticked = time.monotonic()

    def clear_in(self, pipe: Any) -> int:
        """Queue the owed flag's DEL first on the tick's first pipeline (one round trip less a
        woken tick); returns how many replies it adds (0 or 1). A pipeline that fails leaves
        the flag to its TTL (`msgq.tenancy.scheduling.WAKE_OWED_MS`, the idle poll)."""
        if not self._owed:
            return 0
        self._owed = False
        pipe.delete(self.keys.sched_woken)
        return 1

    async def wait(self, seconds: float) -> None:
        """Until a wake (then at least WAKE_GAP_S after the last tick began), or `seconds`."""
        with contextlib.suppress(TimeoutError):  # not wait_for: `msgq.cancel`
            async with asyncio.timeout(seconds):
                await self.event.wait()
                await asyncio.sleep(self._ticked + WAKE_GAP_S - time.monotonic())

    async def listen(self) -> None:
        while True:
            try:
                async with subscriber(self.redis, self.keys) as pubsub:
                    await pubsub.subscribe(self.keys.sched_wake)
                    # Subscribed: a tick now, which also clears a wake owed that no one heard.
                    self.event.set()
                    async for message in pubsub.listen():
                        if message["type"] == "message":
                            self.event.set()
            except Exception as exc:  # without wake-ups the dispatcher still polls each second
                log.warning("dispatcher.wake_unavailable", error=type(exc).__name__)
                await asyncio.sleep(1.0)
