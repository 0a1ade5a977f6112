"""How many more jobs the dispatcher may admit now: sized by what the fleet can really send.

- The fleet's slots. Each worker announces its slots every second (`fleet_workers`); jobs due
  in arq's queue (running, or ready for a slot) take them. Admission runs at most
  `dispatch_window` jobs ahead of the free slots, so a job that arrives late with a higher
  priority is never behind a long line of admitted work, and no fixed count caps the fleet.
- Before any rate limit is known (configured, or learned from the API's headers), a slow start,
  as TCP's: a window of calls in flight that starts at `admit_initial_window`, grows by one for
  each call answered (so it doubles every round trip while answers come back clean) and halves
  when a 429 cools the fleet down. Once a limit is known the limiter's buckets pace admission
  and the window no longer binds.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from redis.asyncio import Redis

from msgq.keys import Keyspace
from msgq.settings import Settings

WORKER_FRESH_MS = 15_000  # a worker unheard of for longer is not counted
WORKER_FORGET_MS = 120_000  # ...and is dropped from the registry after this
SLOTS_CACHE_S = 1.0


class AdmissionWindow:
    def __init__(self, redis: Redis, settings: Settings) -> None:
        self.redis, self.settings = redis, settings
        self.cwnd = float(settings.admit_initial_window)
        self._last_due: int | None = None
        self._admitted_since = 0
        self._was_cooling = False
        self._slots_at = -SLOTS_CACHE_S
        self._slots = settings.max_jobs

    def admitted(self, count: int) -> None:
        self._admitted_since += count

    async def room(self, *, limits_known: bool) -> int:
        """Jobs that may be admitted now (may be zero or negative: none)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            self.ask(pipe)
            replies = await pipe.execute()
        return await self.room_from(replies, limits_known=limits_known)

    def ask(self, pipe: Any) -> int:
        """Queue the window's reads on `pipe` (a tick's first look shares them); returns how
        many replies they add, for `room_from`."""
        # Due or running: a running job is scored at its lock's expiry (worker.queue.claim)
        horizon_ms = int((time.time() + self.settings.lock_s) * 1000)
        pipe.exists(self.settings.keys.cooling_key)
        for part in self.settings.keys.parts:  # arq's queue, one per partition
            pipe.zcount(part.queue, "-inf", horizon_ms)
        return 1 + len(self.settings.keys.parts)

    async def room_from(self, replies: list[Any], *, limits_known: bool) -> int:
        """`room` from the replies of `ask`'s reads."""
        cooling, *dues = replies
        due = sum(int(n) for n in dues)
        self._observe(int(due), bool(cooling), limits_known)
        cap = await self.fleet_slots() + self.settings.dispatch_window
        if not limits_known:
            cap = min(cap, int(self.cwnd))
        return cap - int(due)

    def _observe(self, due: int, cooling: bool, limits_known: bool) -> None:
        """Slow start from what left arq's queue since the last look (answered, or deferred)."""
        if self._last_due is not None:
            answered = max(0, self._last_due + self._admitted_since - due)
            if cooling and not self._was_cooling:
                self.cwnd = max(float(self.settings.admit_initial_window), self.cwnd / 2)
            elif not cooling:
                self.cwnd += answered
        if limits_known:  # the buckets pace now; if they age out, start from what flows
            self.cwnd = max(self.cwnd, float(due))
        self.cwnd = min(self.cwnd, 1e9)
        self._was_cooling = cooling
        self._last_due, self._admitted_since = due, 0

    async def fleet_slots(self) -> int:
        """The slots of every worker heard from lately (at least this process's own)."""
        now = time.monotonic()
        if now - self._slots_at < SLOTS_CACHE_S:
            return self._slots
        entries = await self.redis.hgetall(self.settings.keys.fleet_workers)  # type: ignore[misc]
        now_ms, total, stale = int(time.time() * 1000), 0, []
        for worker_id, raw in entries.items():
            try:
                seen = orjson.loads(raw)
                age = now_ms - int(seen["seen_ms"])
                slots = int(seen["slots"])
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                stale.append(worker_id)
                continue
            if age <= WORKER_FRESH_MS:
                total += max(0, slots)
            elif age > WORKER_FORGET_MS:
                stale.append(worker_id)
        if stale:
            await self.redis.hdel(self.settings.keys.fleet_workers, *stale)  # type: ignore[misc]
        self._slots, self._slots_at = max(total, self.settings.max_jobs), now
        return self._slots


async def announce(
    redis: Redis, keys: Keyspace, worker_id: str, slots: int, running: int, limit: int | None = None
) -> None:
    """A worker says it is alive and how many slots it has (the dispatcher sums them), and its
    adaptive concurrency limit, so the dashboard can say when overload answers cut it."""
    value = {"slots": slots, "running": running, "seen_ms": int(time.time() * 1000)}
    if limit is not None:
        value["limit"] = limit
    await redis.hset(keys.fleet_workers, worker_id, orjson.dumps(value).decode())  # type: ignore[misc]
