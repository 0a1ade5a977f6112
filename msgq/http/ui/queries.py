"""The dashboard's job queries: filters answered from an index, never a scan of every key.

Each filter has an index: status and model (msgq.jobs.indexes), tenant (the tenant's ZSET), batch
(the batch's list of custom IDs). A query walks the smallest of the indexes its filters name,
newest first, and checks the other filters on the records it reads (a cheap dict test before
any model is built). The walk reads at most `budget` records per page: a combination of
filters that matches rarely (error type alone, say) returns a partial page and a cursor to go
on from, instead of reading 100,000 records. Index entries whose record expired are pruned.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, cast

import orjson
from redis.asyncio import Redis

from msgq.batches import job_id_for
from msgq.keys import Keyspace
from schemas import JobRecord, JobStatus

CHUNK = 500
SCAN_BUDGET = 5000


@dataclass(frozen=True)
class JobFilter:
    status: JobStatus | None = None
    tenant: str | None = None
    model: str | None = None
    error_type: str | None = None
    batch: str | None = None
    batch_tenant: str | None = None  # the batch's owner (its job IDs start with it)

    def matches(self, data: dict[str, Any]) -> bool:
        """The filters, on a record's raw JSON."""
        error = data.get("error") or {}
        return (
            (self.status is None or data.get("status") == self.status.value)
            and (self.tenant is None or data.get("tenant") == self.tenant)
            and (self.model is None or data.get("model") == self.model)
            and (self.error_type is None or error.get("type") == self.error_type)
            and (self.batch is None or data.get("batch_id") == self.batch)
        )

    def indexes(self, keys: Keyspace) -> list[tuple[str, str]]:
        """(kind, key) of every index these filters can walk; the whole-fleet one when none."""
        found = []
        if self.batch and self.batch_tenant:
            found.append(("list", keys.batch_ids_key(self.batch)))
        if self.status:
            found.append(("zset", keys.status_jobs_key(self.status.value)))
        if self.model:
            found.append(("zset", keys.model_jobs_key(self.model)))
        if self.tenant:
            found.append(("zset", keys.tenant_jobs_key(self.tenant)))
        return found or [("zset", keys.index_key)]

    def label(self, keys: Keyspace, key: str) -> str:
        """The index `key` in words: a page never shows a Redis key name."""
        if self.batch and key == keys.batch_ids_key(self.batch):
            return f"jobs of batch {self.batch}"
        if self.status and key == keys.status_jobs_key(self.status.value):
            return f"{self.status.value} jobs"
        if self.model and key == keys.model_jobs_key(self.model):
            return f"jobs of model {self.model}"
        if self.tenant and key == keys.tenant_jobs_key(self.tenant):
            return f"jobs of tenant {self.tenant}"
        return "all jobs"


@dataclass
class JobSlice:
    records: list[JobRecord] = field(default_factory=list)
    next_cursor: int | None = None  # where the walk goes on (a position in the index)
    scanned: int = 0
    index: str = ""
    index_label: str = ""  # the index in words, for the page
    index_size: int = 0
    partial: bool = False  # the read budget ran out before the page filled: go on from next


async def _sizes(redis: Redis, indexes: list[tuple[str, str]]) -> list[int]:
    async with redis.pipeline(transaction=False) as pipe:
        for kind, key in indexes:
            pipe.llen(key) if kind == "list" else pipe.zcard(key)
        return [int(n) for n in await pipe.execute()]


class Walk:
    """Newest-first reads of one index in chunks, pruning entries whose record has gone."""

    def __init__(self, redis: Redis, keys: Keyspace, flt: JobFilter, kind: str, key: str) -> None:
        self.keys = keys
        self.redis, self.flt, self.kind, self.key = redis, flt, kind, key
        self.position = 0  # where a walk stopped
        self.exhausted = False  # it reached the end of the index

    async def _ids(self, start: int, count: int) -> list[str]:
        if self.kind == "list":
            # A batch's custom IDs in submission order; its jobs' IDs derive from them.
            raw = await cast(Any, self.redis.lrange(self.key, start, start + count - 1))
            tenant, batch = self.flt.batch_tenant or "", self.flt.batch or ""
            return [job_id_for(tenant, batch, c.decode()) for c in raw]
        return [i.decode() for i in await self.redis.zrevrange(self.key, start, start + count - 1)]

    async def rows(self, start: int, budget: int) -> AsyncIterator[tuple[int, dict[str, Any]]]:
        """(cursor after this row, raw record) for each record matching the filter."""
        position, read = start, 0
        while read < budget:
            ids = await self._ids(position, min(CHUNK, budget - read))
            if not ids:
                self.exhausted = True
                return
            read += len(ids)
            raws = await self.redis.mget([self.keys.record_key(i) for i in ids])
            gone = [i for i, raw in zip(ids, raws, strict=True) if raw is None]
            pruned = bool(gone) and self.kind == "zset"
            if pruned:
                await self.redis.zrem(self.key, *gone)  # records past their retention
            skipped = 0
            for offset, raw in enumerate(raws):
                if raw is None:
                    skipped += 1 if pruned else 0
                    continue
                data = orjson.loads(raw)
                if self.flt.matches(data):
                    # Later ranks moved up by the entries pruned before this row.
                    yield position + offset + 1 - skipped, data
            position += len(ids) - (len(gone) if pruned else 0)
            self.position = position


async def walk_for(redis: Redis, keys: Keyspace, flt: JobFilter) -> tuple[Walk, int]:
    """A walk of the smallest index the filters name, and that index's size."""
    indexes = flt.indexes(keys)
    sizes = await _sizes(redis, indexes)
    size, (kind, key) = min(zip(sizes, indexes, strict=True))
    return Walk(redis, keys, flt, kind, key), size


async def find_jobs(
    redis: Redis,
    keys: Keyspace,
    flt: JobFilter,
    *,
    cursor: int = 0,
    limit: int = 50,
    budget: int = SCAN_BUDGET,
) -> JobSlice:
    """One page of matching records, newest first, from the smallest index the filters name."""
    walk, size = await walk_for(redis, keys, flt)
    page = JobSlice(index=walk.key, index_label=flt.label(keys, walk.key), index_size=size)
    async for after, data in walk.rows(cursor, budget):
        page.records.append(JobRecord.model_validate(data))
        if len(page.records) == limit:
            page.next_cursor = after
            break
    else:
        page.partial = not walk.exhausted
        page.next_cursor = walk.position if page.partial else None
    return page
