"""Listings of job records, newest first, read across the deployment's partitions: each keeps
its own copy of the index (all jobs, a tenant's), merged by `msgq.jobs.gather`."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from redis.asyncio import Redis

from msgq.jobs.gather import Cursor, newest_first
from msgq.keys import Keyspace
from schemas import JobRecord, JobStatus

PAGE_CHUNK = 500  # listed IDs whose records are read at once


async def page(
    redis: Redis,
    keys: Keyspace,
    *,
    tenant: str | None = None,
    status: JobStatus | None = None,
    limit: int = 100,
    after_id: str | None = None,
) -> tuple[list[JobRecord], bool]:
    """Newest first, `limit` records after `after_id`; True when more follow. The index
    is read across the partitions, merged (`msgq.jobs.gather`).

    Index entries whose record has expired are pruned on the way.
    """

    def index(part: Keyspace) -> str:
        return part.tenant_jobs_key(tenant) if tenant else part.index_key

    after = None
    if after_id is not None:
        score = await redis.zscore(index(keys.for_job(after_id)), after_id)
        after = None if score is None else Cursor(int(score), after_id)
    copies = [(redis, index(part)) for part in keys.parts]
    found: list[JobRecord] = []
    chunk: list[str] = []
    async with contextlib.aclosing(newest_first(copies, after=after)) as walk:
        async for cursor, _source in walk:
            chunk.append(cursor.member)
            if len(chunk) >= PAGE_CHUNK:
                found += await _listed(redis, keys, chunk, index, status)
                chunk = []
                if len(found) > limit:
                    break
    if chunk and len(found) <= limit:
        found += await _listed(redis, keys, chunk, index, status)
    return found[:limit], len(found) > limit


async def _listed(
    redis: Redis,
    keys: Keyspace,
    ids: list[str],
    index: Callable[[Keyspace], str],
    status: JobStatus | None,
) -> list[JobRecord]:
    """The records of listed IDs, in order, that match `status`; IDs whose record expired
    are taken out of their partition's index."""
    raws = await redis.mget([keys.record_key(i) for i in ids])
    for job_id, raw in zip(ids, raws, strict=True):
        if raw is None:
            await redis.zrem(index(keys.for_job(job_id)), job_id)
    records = (JobRecord.model_validate_json(raw) for raw in raws if raw is not None)
    return [r for r in records if status is None or r.status is status]
