"""Per-minute counters for the dashboard's chart: jobs ended (by status) and upstream 429s and
529s. One INCR on a key per minute (kept 2 h) where it happens, read back as the last hour."""

from __future__ import annotations

import time

from redis.asyncio import Redis
from redis.exceptions import RedisError

from msgq.keys import Keyspace

MINUTE_TTL_S = 2 * 3600
HOUR_MINUTES = 60


def minute_of(at_s: float | None = None) -> int:
    """Minutes since the epoch: the counters' bucket."""
    return int((time.time() if at_s is None else at_s) // 60)


def record_minute(pipe: Redis, keys: Keyspace, kind: str, *, tenant: str | None = None) -> None:
    """Count one `kind` this minute (and for `tenant`, when given) on the caller's pipeline."""
    minute = minute_of()
    names = [keys.minute_key(kind, minute)]
    if tenant:
        names.append(keys.minute_key(kind, minute, tenant))
    for key in names:
        pipe.incr(key)
        pipe.expire(key, MINUTE_TTL_S)


async def count_minute(redis: Redis, keys: Keyspace, kind: str) -> None:
    """`record_minute` on its own, best effort: a lost count never fails the caller."""
    try:
        async with redis.pipeline(transaction=False) as pipe:
            record_minute(pipe, keys, kind)
            await pipe.execute()
    except RedisError:
        pass  # a chart missing one count beats a job whose failure handling broke


async def last_hour(
    redis: Redis,
    keys: Keyspace,
    kinds: list[str],
    *,
    tenant: str | None = None,
    now_s: float | None = None,
) -> dict[str, list[int]]:
    """Each kind's counts for the last 60 minutes, oldest first (the current minute last)."""
    end = minute_of(now_s)
    minutes = range(end - HOUR_MINUTES + 1, end + 1)
    raw = await redis.mget([keys.minute_key(kind, m, tenant) for kind in kinds for m in minutes])
    values = [int(v) if v is not None else 0 for v in raw]
    return {kind: values[n * HOUR_MINUTES : (n + 1) * HOUR_MINUTES] for n, kind in enumerate(kinds)}
