"""The dashboard's job queries: filters answered from an index, never a scan of every key.

Each filter has an index: status and model (msgq.jobs.indexes), tenant (the tenant's ZSET), batch
(the batch's list of custom IDs). A query walks the smallest of the indexes its filters name,
newest first, and checks the other filters on the records it reads (a cheap dict test before
any model is built). The walk reads at most `budget` records per page: a combination of
filters that matches rarely (error type alone, say) returns a partial page and a cursor to go
on from, instead of reading 100,000 records. Index entries whose record expired are pruned.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, cast

import orjson
from redis.asyncio import Redis

from msgq.batches import job_id_for
from msgq.jobs.gather import Cursor, newest_first
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

    def indexes(self, keys: Keyspace) -> list[Index]:
        """Every index these filters can walk; the whole-fleet one when none. A job index has
        a copy in each partition (`copies`); a batch's list is one."""
        found = []
        if self.batch and self.batch_tenant:
            found.append(Index("list", keys.batch_ids_key(self.batch)))
        if self.status:
            status = self.status.value
            found.append(Index.of_jobs(keys, lambda k: k.status_jobs_key(status)))
        if self.model:
            model = self.model
            found.append(Index.of_jobs(keys, lambda k: k.model_jobs_key(model)))
        if self.tenant:
            tenant = self.tenant
            found.append(Index.of_jobs(keys, lambda k: k.tenant_jobs_key(tenant)))
        return found or [Index.of_jobs(keys, lambda k: k.index_key)]

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


@dataclass(frozen=True)
class Index:
    """An index a query walks: its kind, its name (the deployment's, for labels) and the
    keys it is read from (a job index: one copy a partition)."""

    kind: str  # "zset" (a job index, newest first) or "list" (a batch's custom IDs)
    key: str
    copies: tuple[str, ...] = ()

    @classmethod
    def of_jobs(cls, keys: Keyspace, name: Callable[[Keyspace], str]) -> Index:
        return cls("zset", name(keys), tuple(name(part) for part in keys.parts))


@dataclass
class JobSlice:
    records: list[JobRecord] = field(default_factory=list)
    next_cursor: str | None = None  # where the walk goes on (see `Walk.rows`)
    scanned: int = 0
    index: str = ""
    index_label: str = ""  # the index in words, for the page
    index_size: int = 0
    partial: bool = False  # the read budget ran out before the page filled: go on from next


async def _sizes(redis: Redis, indexes: list[Index]) -> list[int]:
    async with redis.pipeline(transaction=False) as pipe:
        for index in indexes:
            if index.kind == "list":
                pipe.llen(index.key)
            else:
                for copy in index.copies:
                    pipe.zcard(copy)
        counts = [int(n) for n in await pipe.execute()]
    sizes = []
    for index in indexes:
        taken = 1 if index.kind == "list" else len(index.copies)
        sizes.append(sum(counts[:taken]))
        counts = counts[taken:]
    return sizes


class Walk:
    """Newest-first reads of one index in chunks, pruning entries whose record has gone. A
    walk goes on from a cursor: a position in a batch's list, or the last entry read of a job
    index (`score:member`, merged over the partitions' copies by `msgq.jobs.gather`)."""

    def __init__(self, redis: Redis, keys: Keyspace, flt: JobFilter, index: Index) -> None:
        self.keys = keys
        self.redis, self.flt, self.index = redis, flt, index
        self.key = index.key
        self.position: str | None = None  # where a walk stopped
        self.exhausted = False  # it reached the end of the index

    async def rows(self, start: str, budget: int) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """(cursor after this row, raw record) for each record matching the filter."""
        if self.index.kind == "list":
            async for row in self._list_rows(int(start) if start.isdigit() else 0, budget):
                yield row
            return
        after = None
        score, _, member = start.partition(":")
        if member and score.lstrip("-").isdigit():
            after = Cursor(int(score), member)
        copies = [(self.redis, copy) for copy in self.index.copies]
        read: list[tuple[Cursor, int]] = []
        async with contextlib.aclosing(newest_first(copies, after=after, chunk=CHUNK)) as walk:
            async for entry in walk:
                read.append(entry)
                if len(read) == CHUNK or len(read) >= budget:
                    async for row in self._zset_rows(read):
                        yield row
                    budget -= len(read)
                    read = []
                if budget <= 0:
                    return
        async for row in self._zset_rows(read):
            yield row
        self.exhausted = True

    async def _zset_rows(
        self, read: list[tuple[Cursor, int]]
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        if not read:
            return
        ids = [cursor.member for cursor, _ in read]
        raws = await self.redis.mget([self.keys.record_key(i) for i in ids])
        for (cursor, source), raw in zip(read, raws, strict=True):
            at = f"{cursor.score}:{cursor.member}"
            if raw is None:  # past its retention: out of the copy holding it
                await self.redis.zrem(self.index.copies[source], cursor.member)
            else:
                data = orjson.loads(raw)
                if self.flt.matches(data):
                    yield at, data
            self.position = at

    async def _list_rows(
        self, position: int, budget: int
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        read = 0
        while read < budget:
            count = min(CHUNK, budget - read)
            # A batch's custom IDs in submission order; its jobs' IDs derive from them.
            raw = await cast(Any, self.redis.lrange(self.key, position, position + count - 1))
            tenant, batch = self.flt.batch_tenant or "", self.flt.batch or ""
            ids = [job_id_for(tenant, batch, c.decode()) for c in raw]
            if not ids:
                self.exhausted = True
                return
            read += len(ids)
            raws = await self.redis.mget([self.keys.record_key(i) for i in ids])
            for offset, raw in enumerate(raws):
                if raw is not None and self.flt.matches(data := orjson.loads(raw)):
                    yield str(position + offset + 1), data
            position += len(ids)
            self.position = str(position)


async def walk_for(redis: Redis, keys: Keyspace, flt: JobFilter) -> tuple[Walk, int]:
    """A walk of the smallest index the filters name, and that index's size."""
    indexes = flt.indexes(keys)
    sizes = await _sizes(redis, indexes)
    size, smallest = min(zip(sizes, range(len(indexes)), strict=True))
    return Walk(redis, keys, flt, indexes[smallest]), size


async def find_jobs(
    redis: Redis,
    keys: Keyspace,
    flt: JobFilter,
    *,
    cursor: str = "",
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
