"""The one way to wait for a job to end: the store publishes each job ID on the done channel as
its record turns terminal, and one subscription per process wakes every waiter.

Used by `Client.wait`, the HTTP API's long poll and SSE, and captioning's window. A waiter also
re-reads its record every few seconds, so a notification lost to a dropped connection costs a
little latency, never a wait that outlives the job.

The same connection carries the progress channels SSE streams follow (`follow`): a channel is
subscribed while at least one stream follows it, so a process holds one pub/sub connection
however many streams are open (one each, before: 300 streams were 300 Redis clients).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import structlog
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from msgq.cancel import cancel_and_wait
from msgq.channels import subscriber
from msgq.jobs.store import JobStore
from msgq.slot_routing import SlotRouting
from schemas import JobRecord

log = structlog.get_logger("msgq.endings")
RECHECK_S = 5.0
SUBSCRIBE_WAIT_S = 5.0  # longest wait for Redis to confirm a new progress subscription
FOLLOW_BUFFER = 10_000  # messages a slow follower may fall behind before its stream is ended


class Follower:
    """One stream's view of a job's progress channel: its messages in order, or `overflowed`
    when it fell too far behind (a partial text would be wrong: the stream ends instead)."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()
        self.overflowed = False

    def put(self, data: bytes) -> None:
        if self.queue.qsize() >= FOLLOW_BUFFER:
            self.overflowed = True
        elif not self.overflowed:
            self.queue.put_nowait(data)

    async def get(self, timeout_s: float) -> bytes | None:
        """The next message, or None after `timeout_s` without one."""
        try:
            return await asyncio.wait_for(self.queue.get(), timeout_s)
        except TimeoutError:
            return None


class Endings:
    """`await endings.wait(job_id, timeout_s)`; or `queue = endings.listen()` for every ending."""

    def __init__(self, redis: Redis, store: JobStore) -> None:
        self.redis = redis
        self.store = store
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}
        self._listeners: set[asyncio.Queue[str]] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._followers: dict[str, set[Follower]] = {}  # progress channel -> its followers
        self._confirmed: dict[str, asyncio.Future[None]] = {}  # subscriptions not yet confirmed
        # Each partition publishes its jobs' endings on its own channel. On a cluster each
        # partition's channels are on its own shard: a subscription each (`subscriptions`);
        # elsewhere one carries them all.
        parts = store.keys.parts
        self._done_channels = frozenset(part.done_channel for part in parts)
        self._groups = [list(parts)] if not isinstance(redis, SlotRouting) else [[p] for p in parts]
        self._pubsubs: list[PubSub | None] = [None] * len(self._groups)
        self._ready = [asyncio.Event() for _ in self._groups]

    async def start(self) -> None:
        """Subscribe; returns once subscribed, so no ending after this call is missed."""
        if not self._tasks:
            self._tasks = [asyncio.create_task(self._listen(n)) for n in range(len(self._groups))]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(r.wait() for r in self._ready)), 5.0)

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        await cancel_and_wait(tasks)
        for ready in self._ready:
            ready.clear()

    def _group_of(self, channel: str) -> int:
        """Which subscription carries `channel` (named under one partition's prefix)."""
        for n, parts in enumerate(self._groups):
            if any(channel.startswith(part.prefix) for part in parts):
                return n
        return 0

    async def _listen(self, group: int) -> None:
        delay = 0.1
        parts = self._groups[group]
        while True:
            try:
                async with subscriber(self.redis, parts[0]) as pubsub:
                    # After a reconnect: every channel still followed, in the same command.
                    mine = [c for c in self._followers if self._group_of(c) == group]
                    await pubsub.subscribe(*(part.done_channel for part in parts), *mine)
                    self._pubsubs[group] = pubsub
                    self._ready[group].set()
                    delay = 0.1
                    async for message in pubsub.listen():
                        self._dispatch(message)
            except (RedisError, OSError) as exc:
                self._pubsubs[group] = None
                log.warning("endings.reconnecting", error=type(exc).__name__, delay_s=delay)
                self._wake_all()  # let waiters re-read rather than miss an ending
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _dispatch(self, message: dict[str, Any]) -> None:
        if message["type"] not in ("message", "subscribe"):
            return  # unsubscribe confirmations, pongs
        channel = message["channel"].decode()
        if message["type"] == "subscribe":
            confirmed = self._confirmed.pop(channel, None)
            if confirmed is not None and not confirmed.done():
                confirmed.set_result(None)
        elif channel in self._done_channels:
            self._ended(message["data"].decode())
        else:
            for follower in self._followers.get(channel, ()):
                follower.put(message["data"])

    @contextlib.asynccontextmanager
    async def follow(self, job_id: str, *, channel: str | None = None) -> AsyncIterator[Follower]:
        """The job's progress messages (or `channel`'s) from now on, over the shared
        subscription; returns once Redis confirmed it (or after SUBSCRIBE_WAIT_S), so a record
        read next misses none."""
        await self.start()
        channel = channel or self.store.keys.progress_channel(job_id)
        follower = Follower()
        first = channel not in self._followers
        self._followers.setdefault(channel, set()).add(follower)
        try:
            confirmed = self._confirmed.get(channel)
            if first:
                confirmed = asyncio.get_running_loop().create_future()
                self._confirmed[channel] = confirmed
                await self._send("subscribe", channel)
            if confirmed is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(confirmed), SUBSCRIBE_WAIT_S)
            yield follower
        finally:
            followers = self._followers.get(channel, set())
            followers.discard(follower)
            if not followers:
                self._followers.pop(channel, None)
                self._confirmed.pop(channel, None)
                await self._send("unsubscribe", channel)

    async def _send(self, command: str, channel: str) -> None:
        """(Un)subscribe on the shared connection; while it is down there is nothing to do: the
        listener subscribes every followed channel when it reconnects."""
        pubsub = self._pubsubs[self._group_of(channel)]
        if pubsub is None:
            return
        with contextlib.suppress(RedisError, OSError):
            if command == "subscribe":
                await pubsub.subscribe(channel)
            else:
                await pubsub.unsubscribe(channel)

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
