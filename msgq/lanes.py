"""The batch lane's shared vocabulary: which lane a job takes, where a batch-lane job is
(the pool, or an upstream batch), and the atomic moves between those places.

A batch-lane job leaves arq once pooled: from then on its spec lives under `Keyspace.lane_spec_key`,
and `Keyspace.lane_where` says where it is ("pool", or the msgq handle of the upstream batch holding
it). Each move is one Lua script, so a job is always in exactly one place. The audit and the
reconciler read `locations` to tell a pooled or upstream job from an orphan.

The spec is in the job's partition; the lane's places are fleet-wide (the deployment's slot): on
a Redis Cluster no script may touch both. So the places keep each spec's size (`lane_sizes`) and
never read the spec: the spec is written before a job is pooled and dropped after it leaves
(`pool_job`, `leave`). A crash between leaves a spec with no place: a job still running is an
orphan the reconciler pools again (`recover_orphan`); an ended one's spec went with its
terminal record's write (`msgq.jobs.store`: same partition, same atomic step).
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from msgq.keys import Keyspace
from msgq.watched import Writes, watched
from schemas import Lane

POOL = "pool"
WAITING_POOL = "batch_pool"  # record.waiting_reason of a pooled job
# The Batches API refuses these inside a batch (reference §6.3); max_tokens 0 is refused by
# the schema's in-batch rule.
BATCH_REFUSED = ("stream", "speed")

# KEYS: where, sizes, pool, bytes. ARGV: job id, spec size, now ms. 1 pooled, 0 already placed.
POOL_ADD = """
if redis.call('HSETNX', KEYS[1], ARGV[1], 'pool') == 0 then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[3], 'NX', ARGV[3], ARGV[1])
redis.call('INCRBY', KEYS[4], ARGV[2])
return 1
"""

# Back to the pool from `expected` (an upstream handle; '' = from nowhere, the reconciler).
# KEYS: where, sizes, pool, bytes. ARGV: job id, expected, now ms, spec size (0: its size as
# kept). 1 moved, 0 not there, -1 no spec (no size kept, none given).
REPOOL = """
local at = redis.call('HGET', KEYS[1], ARGV[1])
if ARGV[2] ~= '' and at ~= ARGV[2] then return 0 end
local size = tonumber(ARGV[4])
if size == 0 then size = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0') end
if size == 0 then return -1 end
redis.call('HSET', KEYS[1], ARGV[1], 'pool')
redis.call('HSET', KEYS[2], ARGV[1], size)
if redis.call('ZADD', KEYS[3], 'NX', ARGV[3], ARGV[1]) == 1 then
  redis.call('INCRBY', KEYS[4], size)
end
return 1
"""

# The job leaves the lane (it ended, or goes realtime): forget where it was and its size; the
# caller then drops its spec (`leave`). KEYS: where, sizes, pool, bytes. ARGV: job id, expected
# ('' = wherever it is). 1 left.
LEAVE = """
local at = redis.call('HGET', KEYS[1], ARGV[1])
if ARGV[2] ~= '' and at ~= ARGV[2] then return 0 end
local size = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
if redis.call('ZREM', KEYS[3], ARGV[1]) == 1 then redis.call('DECRBY', KEYS[4], size) end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return 1
"""

State = Literal["creating", "submitted", "reading"]


class UpstreamBatch(BaseModel):
    """One upstream Message Batch as msgq tracks it, under a handle msgq chooses before the
    create call (the API's `msgbatch_` ID is only known once it answers)."""

    handle: str
    state: State = "creating"
    upstream_id: str | None = None
    count: int = 0  # requests in the create body
    size_bytes: int = 0
    sent_at: datetime | None = None  # a create may be in flight since then (None: not sent)
    attempts: int = 0  # create calls made
    polls: int = 0
    cancel_sent: bool = False
    last_error: str | None = None
    # What the create call sends: the members' API version and betas (one set per batch,
    # since betas apply to a whole Message Batch; the batcher pools only jobs that agree).
    anthropic_version: str | None = None
    betas: list[str] | None = None
    workspace_id: str | None = None
    api_headers: dict[str, str] | None = None


def resolve_lane(
    lane: Lane | None, *, deadline: datetime | None, now: datetime, sla_s: float
) -> Lane:
    """`auto` → batch when the deadline leaves room for the batch SLA (or there is none)."""
    if lane is None or lane is Lane.REALTIME:
        return Lane.REALTIME
    if lane is Lane.BATCH:
        return Lane.BATCH
    if deadline is None or deadline - now >= timedelta(seconds=sla_s):
        return Lane.BATCH
    return Lane.REALTIME


def batch_refusal(request: dict[str, Any]) -> str | None:
    """Why the Batches API would refuse this request (None: it would take it)."""
    if request.get("stream") is True:
        return "stream: true is not allowed inside a batch"
    if "speed" in request:
        return "speed is not allowed inside a batch"
    if request.get("max_tokens") == 0:
        return "max_tokens: 0 is not allowed inside a batch"
    return None


def custom_id_for(job_id: str, attempt: int) -> str:
    """`^[a-zA-Z0-9_-]{1,64}$` as the API wants; the attempt makes each send of a job distinct,
    so "no custom_id in two upstream batches" means "no send repeated by msgq's own doing"."""
    return f"j{hashlib.sha256(job_id.encode()).hexdigest()[:40]}-{attempt}"


def lane_keys(keys: Keyspace) -> list[str]:
    """The lane's places, as POOL_ADD, REPOOL and LEAVE take them."""
    return [keys.lane_where, keys.lane_sizes, keys.lane_pool, keys.lane_pool_bytes]


async def pool_job(redis: Redis, keys: Keyspace, job_id: str, spec: bytes, now_ms: int) -> bool:
    """Pool a job: its spec written in its partition first, then its place. True when pooled
    now (False: it was placed already, and its spec was written again, the same)."""
    await redis.set(keys.lane_spec_key(job_id), spec)
    add = redis.register_script(POOL_ADD)
    return bool(await add(keys=lane_keys(keys), args=[job_id, len(spec), now_ms]))


async def repool(redis: Redis, keys: Keyspace, job_id: str, expected: str, now_ms: int) -> int:
    """REPOOL, with the spec's size read from its partition (-1 when the spec is gone)."""
    size = int(await redis.strlen(keys.lane_spec_key(job_id)))
    if size == 0:
        return -1
    script = redis.register_script(REPOOL)
    return int(await script(keys=lane_keys(keys), args=[job_id, expected, now_ms, size]))


async def backfill_sizes(redis: Redis, keys: Keyspace) -> int:
    """Sizes for the jobs placed before the lane kept them (an upgrade), read from their specs:
    without one a job's bytes would never leave the pool's total. How many were missing."""
    placed = {k.decode() for k in await redis.hkeys(keys.lane_where)}  # type: ignore[misc]
    sized = {k.decode() for k in await redis.hkeys(keys.lane_sizes)}  # type: ignore[misc]
    for job_id in sorted(placed - sized):
        size = int(await redis.strlen(keys.lane_spec_key(job_id)))
        if size:
            await redis.hsetnx(keys.lane_sizes, job_id, str(size))  # type: ignore[misc]
    return len(placed - sized)


async def leave(redis: Redis, keys: Keyspace, job_id: str, expected: str) -> bool:
    """LEAVE, then the spec dropped from its partition. True when this call took it out."""
    script = redis.register_script(LEAVE)
    if not await script(keys=lane_keys(keys), args=[job_id, expected]):
        return False
    await redis.delete(keys.lane_spec_key(job_id))
    return True


async def locations(redis: Redis, keys: Keyspace, job_ids: list[str]) -> list[str | None]:
    """Where each job is in the batch lane, if that place still exists: "pool" (and it is in
    the pool), an upstream handle (whose record exists), else None."""
    if not job_ids:
        return []
    raw = await redis.hmget(keys.lane_where, job_ids)  # type: ignore[misc]  # redis-py's stubs
    where = [None if w is None else w.decode() for w in raw]
    async with redis.pipeline(transaction=False) as pipe:
        for job_id, at in zip(job_ids, where, strict=True):
            if at == POOL:
                pipe.zscore(keys.lane_pool, job_id)
            else:
                pipe.exists(keys.lane_batch_key(at or "-"))
        alive = await pipe.execute()
    return [
        at if at is not None and found not in (None, 0) else None
        for at, found in zip(where, alive, strict=True)
    ]


async def load_batch(redis: Redis, keys: Keyspace, handle: str) -> UpstreamBatch | None:
    raw = await redis.get(keys.lane_batch_key(handle))
    return None if raw is None else UpstreamBatch.model_validate_json(raw)


async def save_batch(redis: Redis, keys: Keyspace, batch: UpstreamBatch, *, due_ms: int) -> None:
    """Store the batch's state and when the manager should look at it next."""
    async with redis.pipeline(transaction=True) as pipe:
        pipe.set(keys.lane_batch_key(batch.handle), batch.model_dump_json())
        pipe.zadd(keys.lane_batches, {batch.handle: due_ms})
        await pipe.execute()


async def drop_batch(redis: Redis, keys: Keyspace, handle: str) -> None:
    """Every member has left: forget the batch."""
    async with redis.pipeline(transaction=True) as pipe:
        pipe.delete(
            keys.lane_batch_key(handle),
            keys.lane_batch_members_key(handle),
            keys.lane_batch_order_key(handle),
        )
        pipe.zrem(keys.lane_batches, handle)
        await pipe.execute()


async def member_chunks(
    redis: Redis, keys: Keyspace, handle: str, size: int = 500
) -> AsyncIterator[list[tuple[str, str, bool]]]:
    """(custom_id, job id, still here) for each member, in sending order, `size` at a time;
    "still here" is False for a member that has since left the batch (ended or moved)."""
    start = 0
    while True:
        order = keys.lane_batch_order_key(handle)
        raw = await redis.lrange(order, start, start + size - 1)  # type: ignore[misc]  # stubs
        cids = [c.decode() for c in raw]
        if not cids:
            return
        start += len(cids)
        ids = await redis.hmget(keys.lane_batch_members_key(handle), cids)  # type: ignore[misc]
        job_ids = [i.decode() if i else "" for i in ids]
        where = await redis.hmget(keys.lane_where, job_ids)  # type: ignore[misc]
        yield [
            (cid, job_id, at is not None and at.decode() == handle)
            for cid, job_id, at in zip(cids, job_ids, where, strict=True)
            if job_id
        ]


async def claim_send(redis: Redis, keys: Keyspace, batch: UpstreamBatch, *, due_ms: int) -> bool:
    """Store `batch` (about to be sent) only if the stored one is still `creating` with the
    attempts `batch` was built from: a second manager (a lock that lapsed under a stalled
    holder) can never send the same batch again after the first recorded or re-sent it."""
    key = keys.lane_batch_key(batch.handle)

    async def body(pipe: Pipeline) -> tuple[bool, Writes | None]:
        raw = await pipe.get(key)
        stored = None if raw is None else UpstreamBatch.model_validate_json(raw)
        if stored is None or stored.state != "creating" or stored.attempts + 1 != batch.attempts:
            return False, None

        def writes(pipe: Pipeline) -> None:
            pipe.set(key, batch.model_dump_json())
            pipe.zadd(keys.lane_batches, {batch.handle: due_ms})

        return True, writes

    # A write that lost is looked at again: whoever won moved the batch on, so this is False.
    return await watched(redis, [key], body)
