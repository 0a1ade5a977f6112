"""The copy of a job's spec kept after it ends, so `msgq retry` can re-run it."""

from __future__ import annotations

from typing import Any

import orjson
from redis.asyncio import Redis

from msgq import arq_format
from msgq.keys import Keyspace


async def keep_spec_from_queue(redis: Redis, keys: Keyspace, job_id: str, *, ttl_s: int) -> bool:
    """Copy a job's spec from where it waits (arq's payload, or the batch lane's copy) to the
    retry key, unless one is kept already. An ending decided before any attempt (budget,
    deadline) would otherwise drop the only copy along with the queue entry. The deadline is
    left out: a retry is a new run, and the old deadline has passed."""
    payload, lane_spec = await redis.mget([keys.arq_job_key(job_id), keys.lane_spec_key(job_id)])
    spec: Any = None
    try:
        if payload is not None:
            spec = arq_format.deserialize(payload).get("k")
        elif lane_spec is not None:
            spec = orjson.loads(lane_spec)
    except orjson.JSONDecodeError:
        return False
    if not isinstance(spec, dict) or "request" not in spec:
        return False
    kept = {k: v for k, v in spec.items() if k != "deadline"}
    return bool(await redis.set(keys.spec_key(job_id), orjson.dumps(kept), ex=ttl_s, nx=True))
