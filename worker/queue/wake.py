"""Wake an idle worker as soon as there is work for it, rather than polling for work.

The dispatcher publishes on `queue_wake` in the same Lua step that moves jobs into arq's queue,
and so does every producer that writes arq's queue itself (a submit with the scheduler off, a
retry); each worker listens, and one with a free slot polls at once. A worker whose job ends
polls at once too (`poke`) when a wake came while it was full, or its last poll filled every
slot (more may be due), or the job was deferred; else it waits for a wake. A job deferred to later
(a retry's backoff) is polled for when it comes due, from the poll's answer. What is left
to the poll delay (`MSGQ_POLL_DELAY_S`, 1 s) is what nobody announces: a raw producer that does
not publish the wake, a dead worker's lapsed lock, a lost message. An idle worker used to poll
every 10 ms: about 100 round trips a second each, for nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import structlog
from redis.asyncio import Redis

from msgq.cancel import cancel_and_wait
from msgq.channels import subscriber
from msgq.keys import Keyspace

log = structlog.get_logger("msgq.worker")


class QueueWake:
    """`before_poll()` as a poll starts (a wake that comes during it is kept for the next
    idle), then `idle(seconds)`: the poll delay, ended early by a wake. `has_room` says
    whether this worker could take a job now; a full worker ignores wakes."""

    def __init__(self, redis: Redis, keys: Keyspace, has_room: Callable[[], bool]) -> None:
        self.redis, self.keys, self.channel = redis, keys, keys.queue_wake
        self.has_room = has_room
        self._event = asyncio.Event()
        self.missed = False  # a wake came while this worker had no room
        self._task: asyncio.Task[None] | None = None

    def before_poll(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._listen())
        self._event.clear()

    def poke(self) -> None:
        """End the current (or next) idle at once: this worker has room again."""
        self._event.set()

    async def idle(self, seconds: float) -> None:
        if self._event.is_set():
            return
        if self.missed and self.has_room():  # a wake came while full (or mid-claim): room now
            self.missed = False
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._event.wait()

    async def _listen(self) -> None:
        while True:
            try:
                async with subscriber(self.redis, self.keys) as pubsub:
                    await pubsub.subscribe(self.channel)
                    async for message in pubsub.listen():
                        if message["type"] in ("subscribe", "ssubscribe"):
                            # Listening from now on: one poll catches work that was announced
                            # before (between this worker's first poll and its subscription).
                            self._event.set()
                            continue
                        if message["type"] != "message":
                            continue
                        if self.has_room():
                            self._event.set()
                        else:
                            self.missed = True
            except Exception as exc:  # without wakes the worker still polls each poll delay
                log.warning("worker.wake_unavailable", error=type(exc).__name__)
                await asyncio.sleep(1.0)

    async def aclose(self) -> None:
        if self._task is not None:
            await cancel_and_wait([self._task])
