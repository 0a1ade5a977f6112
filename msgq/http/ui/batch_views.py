"""Batches for the dashboard: newest first across the tenants in scope, with live progress from
the counts each job's terminal write keeps (the API's own view shows counts only at the end)."""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from typing import cast

from redis.asyncio import Redis

from msgq.batches import COUNT_FIELDS, BatchMeta
from msgq.keys import Keyspace


@dataclass(frozen=True)
class BatchRow:
    meta: BatchMeta
    counts: dict[str, int]  # succeeded, errored, canceled, expired
    created_ms: int

    @property
    def done(self) -> int:
        return sum(self.counts.values())

    @property
    def status(self) -> str:
        if self.done >= self.meta.count:
            return "ended"
        return "canceling" if self.meta.cancel_initiated_at else "in_progress"


async def _rows(redis: Redis, keys: Keyspace, scored: list[tuple[str, int]]) -> list[BatchRow]:
    async with redis.pipeline(transaction=False) as pipe:
        for batch_id, _ in scored:
            pipe.get(keys.batch_key(batch_id))
            pipe.hgetall(keys.batch_counts_key(batch_id))
        replies = await pipe.execute()
    rows = []
    for n, (_, score) in enumerate(scored):
        raw, counts = replies[2 * n], replies[2 * n + 1]
        if raw is None:
            continue  # deleted, or past its retention
        decoded = {k.decode(): v.decode() for k, v in counts.items()}
        done = {name: int(decoded.get(status, 0)) for status, name in COUNT_FIELDS.items()}
        rows.append(BatchRow(BatchMeta.model_validate_json(raw), done, score))
    return rows


async def batch_page(
    redis: Redis,
    keys: Keyspace,
    tenants: list[str],
    *,
    before_ms: int | None = None,
    limit: int = 50,
) -> tuple[list[BatchRow], int | None]:
    """Newest first across `tenants`, created before `before_ms`; and the next page's cursor."""
    top = f"({before_ms}" if before_ms is not None else "+inf"
    scored: list[tuple[str, int]] = []
    for tenant in tenants:
        found = await redis.zrevrangebyscore(
            keys.tenant_batches_key(tenant), top, "-inf", start=0, num=limit + 1, withscores=True
        )
        scored += [(member.decode(), int(score)) for member, score in found]
    scored.sort(key=lambda item: -item[1])
    more = len(scored) > limit
    rows = await _rows(redis, keys, scored[:limit])
    return rows, (scored[limit - 1][1] if more else None)


async def batch_row(
    redis: Redis, keys: Keyspace, batch_id: str, *, tenant: str | None
) -> BatchRow | None:
    """One batch, if it exists and `tenant` (None: any) owns it."""
    raw = await cast(Awaitable[bytes | None], redis.get(keys.batch_key(batch_id)))
    if raw is None:
        return None
    meta = BatchMeta.model_validate_json(raw)
    if tenant is not None and meta.tenant != tenant:
        return None
    rows = await _rows(redis, keys, [(batch_id, int(meta.created_at.timestamp() * 1000))])
    return rows[0] if rows else None
