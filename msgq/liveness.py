"""Is any worker alive on this Redis? Read from what workers write anyway, so a producer can
warn before a job waits forever on a queue nobody serves (the `msgq dev`-moved-Redis trap)."""

from __future__ import annotations

import time

import orjson
from redis.asyncio import Redis

from msgq.keys import Keyspace

# Workers announce themselves every second and refresh arq's health check every few seconds;
# 15 s without either is not a hiccup.
SEEN_WITHIN_S = 15.0


async def live_workers(redis: Redis, keys: Keyspace, *, within_s: float = SEEN_WITHIN_S) -> int:
    """Workers announced within `within_s` (at least 1 while arq's health-check key lives)."""
    entries = await redis.hgetall(keys.fleet_workers)  # type: ignore[misc]
    since_ms = (time.time() - within_s) * 1000
    seen = 0
    for raw in entries.values():
        try:
            seen += float(orjson.loads(raw).get("seen_ms", 0)) >= since_ms
        except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
            continue
    if seen:
        return seen
    return int(bool(await redis.exists(keys.health_check_key)))
