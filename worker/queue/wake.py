"""Wake an idle worker as soon as the dispatcher makes jobs ready, not at its next poll.

Why: the worker polls arq's queue every `poll_delay_s` (10 ms), so a job admitted by the
dispatcher waited half of that on average before a worker picked it up, on top of the API's
own latency: most of what a drop-in call adds over calling the API directly. The dispatcher
publishes on `queue_wake` in the same Lua step that moves jobs into arq's queue; each worker
listens, and one with a free slot polls at once. The poll stays as it was: it finds what
nobody announces (raw producers, retries coming due, jobs deferred by another worker), so a
lost message costs at most one poll delay.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import structlog
from redis.asyncio import Redis

log = structlog.get_logger("msgq.worker")


class QueueWake:
    """`before_poll()` as a poll starts (a wake that comes during it is kept for the next
    idle), then `idle(seconds)`: the poll delay, ended early by a wake. `has_room` says
    whether this worker could take a job now; a full worker ignores wakes."""

    def __init__(self, redis: Redis, channel: str, has_room: Callable[[], bool]) -> None:
        self.redis, self.channel = redis, channel  # the deployment's `Keyspace.queue_wake`
        self.has_room = has_room
        self._event = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def before_poll(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._listen())
        self._event.clear()

    async def idle(self, seconds: float) -> None:
        if self._event.is_set():
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._event.wait()

    async def _listen(self) -> None:
        while True:
            try:
                async with self.redis.pubsub() as pubsub:
                    await pubsub.subscribe(self.channel)
                    async for message in pubsub.listen():
                        if message["type"] == "message" and self.has_room():
                            self._event.set()
            except Exception as exc:  # without wakes the worker still polls each poll delay
                log.warning("worker.wake_unavailable", error=type(exc).__name__)
                await asyncio.sleep(1.0)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
