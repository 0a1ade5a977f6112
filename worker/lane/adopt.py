"""Finding the upstream batch an unanswered create made: the one window the Batches API leaves
open (it has no idempotency key, and custom_ids are only visible in the results).

A create whose answer never arrived (the worker died, the connection broke, the call timed
out) may or may not have made a batch. Once `batch_create_timeout_s` has passed since it was
sent (so the call can no longer land), the workspace's batches are listed, newest first, and
the candidates are those created within [sent - 60 s, sent + timeout + 60 s] (60 s allows for
clock skew between msgq and the API) with the same request count and not already claimed by
msgq (`Keyspace.lane_adopted`). The oldest is adopted. None: the create never took effect, and it is
sent again with the same custom_ids. Residual risk: another client of the same workspace
creating a batch of exactly that size inside that window; its results would then name
custom_ids msgq does not know (logged `batch.unknown_custom_id`) and msgq's own jobs, missing
from them, are sent again.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from typing import Any

from redis.asyncio import Redis

from msgq.jobs.records import utcnow
from msgq.keys import Keyspace
from msgq.lanes import UpstreamBatch
from worker.lane.api import LaneApi

SKEW_S = 60.0
CLAIM_DAYS = 30  # claims older than this cannot match a create still being resolved


async def find_orphan(
    redis: Redis, keys: Keyspace, api: LaneApi, batch: UpstreamBatch, *, create_timeout_s: float
) -> dict[str, Any] | None:
    """The upstream batch `batch`'s unanswered create made, if any."""
    assert batch.sent_at is not None
    earliest = batch.sent_at - timedelta(seconds=SKEW_S)
    latest = batch.sent_at + timedelta(seconds=create_timeout_s + SKEW_S)
    candidates: list[dict[str, Any]] = []
    after: str | None = None
    while True:
        page = await api.page(after_id=after)
        for item in page.get("data", []):
            created = parse_time(item.get("created_at"))
            if created < earliest:
                return await _unclaimed(redis, keys, candidates)
            total = sum(int(v) for v in (item.get("request_counts") or {}).values())
            if created <= latest and total == batch.count:
                candidates.append(item)
        if not page.get("has_more") or not page.get("data"):
            return await _unclaimed(redis, keys, candidates)
        after = page.get("last_id")


async def claim(redis: Redis, keys: Keyspace, created: dict[str, Any]) -> None:
    """Mark an upstream batch as msgq's, so no other unanswered create adopts it. Claims past
    `CLAIM_DAYS` are trimmed on this write: every batch msgq creates is claimed, and trimming
    only where an unanswered create was resolved (rare) let the set grow for good."""
    created_ms = int(parse_time(created.get("created_at")).timestamp() * 1000)
    old_ms = int((time.time() - CLAIM_DAYS * 24 * 3600) * 1000)
    async with redis.pipeline(transaction=True) as pipe:
        pipe.zadd(keys.lane_adopted, {str(created["id"]): created_ms})
        pipe.zremrangebyscore(keys.lane_adopted, "-inf", old_ms)
        await pipe.execute()


async def _unclaimed(
    redis: Redis, keys: Keyspace, candidates: list[dict[str, Any]]
) -> dict[str, Any] | None:
    for item in sorted(candidates, key=lambda i: str(i.get("created_at"))):
        if await redis.zscore(keys.lane_adopted, str(item["id"])) is None:
            return item
    return None


def parse_time(value: Any) -> datetime:
    if not isinstance(value, str):
        return utcnow()
    return datetime.fromisoformat(value.replace("Z", "+00:00"))
