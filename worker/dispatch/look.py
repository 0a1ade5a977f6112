"""The dispatcher's reads at the start of a tick, each one round trip: what a busy tick needs
before it reads the queues (`look`), and whether an idle one has anything to do (`idle_look`).

Why: made one by one, a busy tick's first reads were four of the ten round trips it cost, and
an idle dispatcher read the inbox, the backlog, the deadlines, the window and the fleet's slots
every second.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from msgq.keys import Keyspace
from worker.dispatch.window import AdmissionWindow


@dataclass(frozen=True)
class Look:
    inbox: int  # raw producers' jobs in the inbox
    backlog: list[str]  # the scheduler queues listed (sorted)
    window: tuple[Any, Any]  # what `AdmissionWindow.room(seen=...)` takes


async def look(redis: Redis, keys: Keyspace, window: AdmissionWindow) -> Look:
    """The inbox's size, the scheduler queues listed and the window's reads, in one round trip."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zcard(keys.sched_inbox)
        pipe.smembers(keys.sched_backlog)
        window.read(pipe)
        inbox, backlog, due, cooling = await pipe.execute()
    return Look(int(inbox), sorted(q.decode() for q in backlog), (due, cooling))


async def idle_look(redis: Redis, keys: Keyspace) -> tuple[bool, bool]:
    """(no job waiting: nothing in the inbox, no scheduler queue listed; a waiting job's
    deadline has passed), in one round trip."""
    now_ms = int(time.time() * 1000)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zcard(keys.sched_inbox)
        pipe.scard(keys.sched_backlog)
        pipe.zrangebyscore(keys.sched_deadlines, "-inf", now_ms, start=0, num=1)
        inbox, backlog, expiring = await pipe.execute()
    return not inbox and not backlog, bool(expiring)
