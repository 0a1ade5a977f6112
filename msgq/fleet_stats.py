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
    """Each kind's counts for the last 60 minutes, oldest first (the current minute last). A
    job's ending is counted in its partition's copy (in the slot of its record, written with
    it), the upstream's answers in the deployment's: every copy is read, one MGET each (one
    round trip; on a cluster one per shard), and summed."""
    end = minute_of(now_s)
    minutes = range(end - HOUR_MINUTES + 1, end + 1)
    copies = {part.prefix: part for part in [keys.root, *keys.root.parts]}.values()
    async with redis.pipeline(transaction=False) as pipe:
        for copy in copies:
            pipe.mget([copy.minute_key(kind, m, tenant) for kind in kinds for m in minutes])
        replies = await pipe.execute()
    values = [sum(int(v or 0) for v in column) for column in zip(*replies, strict=True)]
    return {kind: values[n * HOUR_MINUTES : (n + 1) * HOUR_MINUTES] for n, kind in enumerate(kinds)}
