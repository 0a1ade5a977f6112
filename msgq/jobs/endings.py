"""The one way to wait for a job to end: the store publishes each job ID on the done channel as
its record turns terminal, and one subscription per process wakes every waiter.

Used by `Client.wait`, the HTTP API's long poll and SSE, and captioning's window. A waiter also
re-reads its record every few seconds, so a notification lost to a dropped connection costs a
little latency, never a wait that outlives the job.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from msgq.jobs.store import JobStore
from msgq.keys import DONE_CHANNEL
from schemas import JobRecord

log = structlog.get_logger("msgq.endings")
RECHECK_S = 5.0


class Endings:
    """`await endings.wait(job_id, timeout_s)`; or `queue = endings.listen()` for every ending."""

    def __init__(self, redis: Redis, store: JobStore) -> None:
        self.redis = redis
        self.store = store
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}
        self._listeners: set[asyncio.Queue[str]] = set()
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    async def start(self) -> None:
        """Subscribe; returns once subscribed, so no ending after this call is missed."""
        if self._task is None:
            self._task = asyncio.create_task(self._listen())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), 5.0)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
            self._ready.clear()

    async def _listen(self) -> None:
        delay = 0.1
        while True:
            try:
                async with self.redis.pubsub() as pubsub:
                    await pubsub.subscribe(DONE_CHANNEL)
                    self._ready.set()
                    delay = 0.1
                    async for message in pubsub.listen():
                        if message["type"] == "message":
                            self._ended(message["data"].decode())
            except (RedisError, OSError) as exc:
                log.warning("endings.reconnecting", error=type(exc).__name__, delay_s=delay)
                self._wake_all()  # let waiters re-read rather than miss an ending
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _ended(self, job_id: str) -> None:
        for queue in self._listeners:
            queue.put_nowait(job_id)
        for future in self._waiters.pop(job_id, set()):
            if not future.done():
                future.set_result(None)

    def _wake_all(self) -> None:
        for job_id in list(self._waiters):
            self._ended(job_id)

    def listen(self) -> asyncio.Queue[str]:
        """A queue that receives every job ID that ends from now on; `unlisten` it after."""
        queue: asyncio.Queue[str] = asyncio.Queue()
        self._listeners.add(queue)
        return queue

    def unlisten(self, queue: asyncio.Queue[str]) -> None:
        self._listeners.discard(queue)

    async def wait(self, job_id: str, timeout_s: float) -> JobRecord | None:
        """The record once terminal, or as it stands after `timeout_s` (None: no such job)."""
        await self.start()
        deadline = time.monotonic() + timeout_s
        while True:
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.setdefault(job_id, set()).add(future)
            try:
                record = await self.store.get(job_id)  # after registering: no ending is missed
                left = deadline - time.monotonic()
                if record is None or record.status.terminal or left <= 0:
                    return record
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(future, min(left, RECHECK_S))
            finally:
                waiters = self._waiters.get(job_id)
                if waiters is not None:
                    waiters.discard(future)
                    if not waiters:
                        self._waiters.pop(job_id, None)
