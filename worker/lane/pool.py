"""The batcher: pooled batch-lane jobs → one upstream Message Batch, created exactly once.

A flush moves jobs from the pool into a new upstream batch (one Lua script: each job is in
exactly one place), marks their records `in_progress`, and records the batch (`creating`)
before the create call; the answer's `msgbatch_` ID is recorded after it (`submitted`).
The one window the API leaves open, a create sent whose answer never arrived, is resolved by
`batch_adopt` once `batch_create_timeout_s` has passed: adopt the batch it made, or send again.
An answer that does not say whether the API took the create counts as none (`AMBIGUOUS`).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

import orjson
import structlog

from msgq import lanes
from msgq.errors import UpstreamError
from msgq.jobs.records import utcnow
from msgq.lanes import UpstreamBatch, custom_id_for
from schemas import JobError, JobRecord, JobStatus
from worker import transitions
from worker.job.backoff import retry_delay_for
from worker.lane import adopt as batch_adopt
from worker.lane import records as batch_records
from worker.lane.api import LaneApi
from worker.lane.budget import leave_lane
from worker.services import Services
from worker.upstream.client import call_headers

log = structlog.get_logger("msgq.batch")
ITEM_OVERHEAD = 100  # bytes per request around its params in the create body
# Statuses a gateway answers whatever became of the request behind it (408 a proxy's timeout,
# 502 a lost upstream answer, 504 a proxy giving up on a call still running): the batch may
# exist and bill, so these go through adoption like no answer at all. A 200 whose body is not a
# batch too. The API's own errors (429, 500, 503, 529, 4xx) mean nothing was created.
AMBIGUOUS = frozenset({200, 408, 502, 504})

# KEYS: pool, bytes, where, members, order, meta, batches, sizes (all the fleet's: the specs
# are in their partitions). ARGV: handle, meta JSON, due ms, then (job id, custom id) pairs.
# Returns how many moved.
MOVE = """
local moved, size = 0, 0
for n = 1, (#ARGV - 3) / 2 do
  local job, cid = ARGV[2 + 2 * n], ARGV[3 + 2 * n]
  if redis.call('ZREM', KEYS[1], job) == 1 then
    size = size + tonumber(redis.call('HGET', KEYS[8], job) or '0')
    redis.call('HSET', KEYS[3], job, ARGV[1])
    redis.call('HSET', KEYS[4], cid, job)
    redis.call('RPUSH', KEYS[5], cid)
    moved = moved + 1
  end
end
if moved == 0 then return 0 end
redis.call('DECRBY', KEYS[2], size)
redis.call('SET', KEYS[6], ARGV[2])
redis.call('ZADD', KEYS[7], ARGV[3], ARGV[1])
return moved
"""


Group = tuple[str | None, tuple[str, ...] | None, str | None, tuple[tuple[str, str], ...] | None]


def group_of(record: JobRecord) -> Group:
    """What must agree within one upstream batch: version, betas (a set), workspace and the
    other anthropic-* headers (all are the create call's, for the whole batch)."""
    betas = tuple(sorted(set(record.betas))) if record.betas is not None else None
    others = tuple(sorted(record.api_headers.items())) if record.api_headers else None
    return record.anthropic_version, betas, record.workspace_id, others


def now_ms() -> int:
    return int(time.time() * 1000)


class Batcher:
    def __init__(self, services: Services, api: LaneApi) -> None:
        self.services, self.api, self.redis = services, api, services.redis
        self.settings = services.settings
        self.keys = services.settings.keys
        self._move = self.redis.register_script(MOVE)
        self.cool_until = 0.0  # monotonic: the batch endpoints said 429 until then

    async def due(self) -> tuple[bool, list[bytes], int]:
        """(a flush is due: enough requests, enough bytes, or the oldest waited long enough;
        the upstream batches due for a look; the jobs pooled), in one round trip: what an
        idle lane costs."""
        s = self.settings
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zcard(self.keys.lane_pool)
            pipe.get(self.keys.lane_pool_bytes)
            pipe.zrange(self.keys.lane_pool, 0, 0, withscores=True)
            pipe.zrangebyscore(self.keys.lane_batches, 0, now_ms(), start=0, num=50)
            count, size, oldest, batches = await pipe.execute()
        if not count:
            return False, batches, 0
        waited_ms = now_ms() - (oldest[0][1] if oldest else now_ms())
        flush = (
            count >= s.batch_max_requests
            or int(size or 0) >= s.batch_max_bytes
            or waited_ms >= s.batch_max_wait_s * 1000
        )
        return flush, batches, int(count)

    async def flush(self) -> UpstreamBatch | None:
        """Move the oldest pooled jobs (up to the count and size limits) that share the oldest
        one's API version, betas and workspace into a new batch; the others wait their turn."""
        chosen, group = await self._choose()
        if not chosen:
            return None
        version, betas, workspace, others = group or (None, None, None, None)
        batch = UpstreamBatch(
            handle="ub_" + secrets.token_hex(10),
            anthropic_version=version,
            betas=list(betas) if betas is not None else None,
            workspace_id=workspace,
            api_headers=dict(others) if others else None,
        )
        ks = self.keys
        keys = [ks.lane_pool, ks.lane_pool_bytes, ks.lane_where]
        keys += [ks.lane_batch_members_key(batch.handle), ks.lane_batch_order_key(batch.handle)]
        keys += [ks.lane_batch_key(batch.handle), ks.lane_batches, ks.lane_sizes]
        args: list[Any] = [batch.handle, batch.model_dump_json(), now_ms()]
        for pair in chosen:
            args.extend(pair)
        moved = await self._move(keys=keys, args=args)
        log.info("batch.pooled_flushed", handle=batch.handle, jobs=moved)
        return batch if moved else None

    async def _choose(self) -> tuple[list[tuple[str, str]], Group | None]:
        """(job id, custom id) of the oldest pooled jobs that fit and share the first one's
        group; ended ones leave the pool."""
        s = self.settings
        budget = s.batch_max_bytes - 1024
        chosen: list[tuple[str, str]] = []
        group: Group | None = None
        start = 0
        while len(chosen) < s.batch_max_requests and budget > 0:
            ids = [
                i.decode() for i in await self.redis.zrange(self.keys.lane_pool, start, start + 999)
            ]
            if not ids:
                break
            start += len(ids)
            records = await self.services.store.get_many(ids)
            async with self.redis.pipeline(transaction=False) as pipe:
                for job_id in ids:
                    pipe.strlen(self.keys.lane_spec_key(job_id))
                sizes = await pipe.execute()
            for job_id, record, size in zip(ids, records, sizes, strict=True):
                if not await self._still_wanted(job_id, record):
                    continue
                assert record is not None
                if group is None:
                    group = group_of(record)
                elif group_of(record) != group:
                    continue  # another version or betas: a later batch of its own
                cost = size + ITEM_OVERHEAD
                if chosen and (cost > budget or len(chosen) >= s.batch_max_requests):
                    return chosen, group
                chosen.append((job_id, custom_id_for(job_id, record.attempts + 1)))
                budget -= cost
        return chosen, group

    async def _still_wanted(self, job_id: str, record: JobRecord | None) -> bool:
        if record is not None and not record.status.terminal:
            if record.deadline is None or utcnow() < record.deadline:
                return True
            await transitions.finish(self.services.store, job_id, JobStatus.EXPIRED)
        await leave_lane(self.redis, self.keys, job_id, lanes.POOL, record=record)
        return False

    async def advance(self, batch: UpstreamBatch) -> None:
        """Take a `creating` batch one step: prepare and send it, or resolve an unanswered send."""
        if batch.sent_at is None:
            if time.monotonic() < self.cool_until:
                await self._later(batch, self.cool_until - time.monotonic())
                return
            await self._prepare(batch)
            await self._send(batch)
            return
        window = timedelta(seconds=self.settings.batch_create_timeout_s + 5)
        if utcnow() < batch.sent_at + window:
            await self._later(batch, (batch.sent_at + window - utcnow()).total_seconds())
            return
        found = await batch_adopt.find_orphan(
            self.redis,
            self.keys,
            self.api,
            batch,
            create_timeout_s=self.settings.batch_create_timeout_s,
        )
        if found is not None:
            log.warning("batch.adopted", handle=batch.handle, upstream_id=found["id"])
            await self._record(batch, found)
            return
        log.warning("batch.resent", handle=batch.handle, reason="create answer never seen")
        await self._send(batch.model_copy(update={"sent_at": None}))

    async def _prepare(self, batch: UpstreamBatch) -> None:
        """Mark each member `in_progress` (its attempt counted once), drop those that ended."""
        count = size = 0
        async for chunk in lanes.member_chunks(self.redis, self.keys, batch.handle, 200):
            here = [(cid, job_id) for cid, job_id, still in chunk if still]
            stored = await asyncio.gather(
                *(self.services.store.update(job_id, _sent_as(cid)) for cid, job_id in here)
            )
            for (_, job_id), record in zip(here, stored, strict=True):
                if record is None or record.status.terminal:
                    await leave_lane(self.redis, self.keys, job_id, batch.handle, record=record)
                else:
                    count += 1
                    size += int(await self.redis.strlen(self.keys.lane_spec_key(job_id)))
        batch.count, batch.size_bytes = count, size

    async def _send(self, batch: UpstreamBatch) -> None:
        """The create call: sent_at is stored first, so a crash mid-call is known to be one."""
        if batch.count == 0:
            await lanes.drop_batch(self.redis, self.keys, batch.handle)
            return
        batch.sent_at, batch.attempts = utcnow(), batch.attempts + 1
        timeout_s = self.settings.batch_create_timeout_s
        due_ms = now_ms() + int(timeout_s * 1000) + 5000
        if not await lanes.claim_send(self.redis, self.keys, batch, due_ms=due_ms):
            log.warning("batch.send_skipped", handle=batch.handle, reason="taken over")
            return
        log.info("batch.create_sent", handle=batch.handle, requests=batch.count)
        try:
            async with asyncio.timeout(timeout_s):
                headers = call_headers(
                    self.settings,
                    anthropic_version=batch.anthropic_version,
                    betas=batch.betas,
                    workspace_id=batch.workspace_id,
                    api_headers=batch.api_headers,
                )
                created = await self.api.create(self._body(batch), headers=headers)
        except TimeoutError:
            log.warning("batch.create_unanswered", handle=batch.handle, reason="timeout")
            return  # resolved by `advance` once the window has passed
        except UpstreamError as exc:
            await self._create_failed(batch, exc)
            return
        await self._record(batch, created)

    async def _create_failed(self, batch: UpstreamBatch, exc: UpstreamError) -> None:
        error = JobError.model_validate(exc.as_record_error())
        log.warning("batch.create_failed", handle=batch.handle, status_code=exc.status_code)
        if exc.status_code is None or exc.status_code in AMBIGUOUS:
            # It may have been created: `advance` lists and adopts once the window has passed,
            # and sends again only if nothing matches (re-sending now could run and bill twice).
            log.warning("batch.create_unanswered", handle=batch.handle, reason=error.message)
            return
        if exc.status_code == 429:
            self.cool_until = time.monotonic() + (exc.retry_after_s or 1.0)
        if exc.retryable:
            delay_s = retry_delay_for(self.settings, batch.attempts, exc.retry_after_s)
            batch.sent_at, batch.last_error = None, error.message
            await self._later(batch, delay_s)
            return
        # The API refused the batch itself (auth, size): its jobs fail with that answer.
        async for chunk in lanes.member_chunks(self.redis, self.keys, batch.handle):
            for _, job_id, still in chunk:
                if still:
                    await transitions.finish(
                        self.services.store, job_id, JobStatus.FAILED, error=error
                    )
                    await leave_lane(self.redis, self.keys, job_id, batch.handle)
        await lanes.drop_batch(self.redis, self.keys, batch.handle)

    async def _later(self, batch: UpstreamBatch, delay_s: float) -> None:
        await lanes.save_batch(
            self.redis, self.keys, batch, due_ms=now_ms() + int(max(delay_s, 0.05) * 1000)
        )

    async def _body(self, batch: UpstreamBatch) -> AsyncIterator[bytes]:
        """`{"requests": [...]}` one member at a time, read from Redis as it is sent."""
        yield b'{"requests":['
        first = True
        async for chunk in lanes.member_chunks(self.redis, self.keys, batch.handle, 200):
            here = [(cid, job_id) for cid, job_id, still in chunk if still]
            specs = await self.redis.mget([self.keys.lane_spec_key(job_id) for _, job_id in here])
            for (cid, _), raw in zip(here, specs, strict=True):
                if raw is None:
                    continue
                params = {k: v for k, v in orjson.loads(raw)["request"].items() if k != "stream"}
                yield (b"" if first else b",") + orjson.dumps({"custom_id": cid, "params": params})
                first = False
        yield b"]}"

    async def _record(self, batch: UpstreamBatch, created: dict[str, Any]) -> None:
        """The upstream ID, stored, then shown on every member's record."""
        upstream_id = str(created["id"])
        batch.state, batch.upstream_id, batch.last_error = "submitted", upstream_id, None
        await batch_adopt.claim(self.redis, self.keys, created)
        await lanes.save_batch(
            self.redis, self.keys, batch, due_ms=now_ms() + int(self.settings.batch_poll_s * 1000)
        )
        log.info("batch.created", handle=batch.handle, upstream_id=upstream_id, n=batch.count)
        async for chunk in lanes.member_chunks(self.redis, self.keys, batch.handle, 200):
            await asyncio.gather(
                *(
                    self.services.store.update(
                        job_id, lambda r: batch_records.upstream_recorded(r, upstream_id)
                    )
                    for _, job_id, still in chunk
                    if still
                )
            )


def _sent_as(custom_id: str) -> Callable[[JobRecord], JobRecord | None]:
    """The record change for a member sent as `custom_id` (its attempt is the suffix)."""
    attempt = int(custom_id.rsplit("-", 1)[1])
    return lambda record: batch_records.sent_upstream(record, attempt)
