"""The overview's figures: active jobs (exact counts from the status indexes, and a breakdown by
priority, lane and tenant), the last hour per minute, rate-limit headroom and the pause."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson
from redis.asyncio import Redis

from msgq import waits
from msgq.fleet_stats import last_hour
from msgq.keys import Keyspace
from msgq.settings import Settings
from schemas import JobStatus

ACTIVE = (JobStatus.QUEUED, JobStatus.IN_PROGRESS, JobStatus.RETRYING)
ACTIVE_SAMPLE = 5000  # records read for the breakdown; the counts themselves are exact
# The limiter's model classes (worker.ratelimit.model_class), read-only here: the HTTP
# API does not import the worker runtime.
CLASSES = waits.CLASSES
LEARNED_TTL_MS = 600_000  # a learned limit counts this long after the header that said it
# (label, level field, learned-limit field, configured name) of the limiter's three buckets
BUCKETS = (
    ("requests", "r", "R", "rpm"),
    ("input tokens", "i", "I", "itpm"),
    ("output tokens", "o", "O", "otpm"),
)
DIMENSIONS = ("priority", "lane", "tenant")


@dataclass
class Active:
    counts: dict[str, int]
    sampled: int
    total: int
    breakdown: dict[str, dict[str, Counter[str]]] = field(default_factory=dict)
    # The sampled records of jobs that wait (queued, retrying), for msgq.waits.
    waiting: list[dict[str, Any]] = field(default_factory=list)

    def rows(self, dimension: str) -> list[tuple[str, list[int]]]:
        """(value, count per active status) for a table, values sorted."""
        table = self.breakdown[dimension]
        values = sorted({v for counter in table.values() for v in counter})
        return [(v, [table[s.value][v] for s in ACTIVE]) for v in values]


async def active_jobs(redis: Redis, keys: Keyspace, tenant: str | None) -> Active:
    """Exact counts per status; the breakdown from the oldest ACTIVE_SAMPLE active records."""
    parts = keys.parts  # each partition keeps its own copy of every index
    async with redis.pipeline(transaction=False) as pipe:
        for status in ACTIVE:
            for part in parts:
                key, mine = part.status_jobs_key(status.value), part.tenant_jobs_key(tenant or "")
                pipe.zintercard(2, [key, mine]) if tenant else pipe.zcard(key)
        each = [int(n) for n in await pipe.execute()]
    counts = [sum(each[n : n + len(parts)]) for n in range(0, len(each), len(parts))]
    ids: list[bytes] = []
    share = -(-ACTIVE_SAMPLE // len(parts))  # the oldest of each partition, a share each
    for part in parts:
        if tenant:
            ids += (await redis.zinter([part.active_key, part.tenant_jobs_key(tenant)]))[:share]
        else:
            ids += await redis.zrange(part.active_key, 0, share - 1)
    ids = ids[:ACTIVE_SAMPLE]
    result = Active(dict(zip([s.value for s in ACTIVE], counts, strict=True)), 0, sum(counts))
    result.breakdown = {d: {s.value: Counter() for s in ACTIVE} for d in DIMENSIONS}
    for start in range(0, len(ids), 1000):
        raws = await redis.mget([keys.record_key(i.decode()) for i in ids[start : start + 1000]])
        for raw in raws:
            data = orjson.loads(raw) if raw is not None else {}
            now = str(data.get("status"))
            if now not in result.breakdown["lane"]:
                continue  # ended since the index was read
            result.sampled += 1
            if now in (JobStatus.QUEUED.value, JobStatus.RETRYING.value):
                result.waiting.append(data)
            for dimension in DIMENSIONS:
                value = str(data.get(dimension) or "-")
                result.breakdown[dimension][now][value] += 1
    return result


@dataclass(frozen=True)
class Series:
    name: str
    css: str
    values: list[int]

    @property
    def total(self) -> int:
        return sum(self.values)


async def last_hour_series(redis: Redis, keys: Keyspace, tenant: str | None) -> list[Series]:
    """Jobs succeeded and failed (the tenant's, or the fleet's) and upstream 429s and 529s
    (always the fleet's: rate limits are the organisation's) per minute."""
    jobs = await last_hour(redis, keys, ["succeeded", "failed"], tenant=tenant)
    upstream = await last_hour(redis, keys, ["429", "529"])
    return [
        Series("succeeded", "s-ok", jobs["succeeded"]),
        Series("failed", "s-failed", jobs["failed"]),
        Series("429 rate limited", "s-429", upstream["429"]),
        Series("529 overloaded", "s-529", upstream["529"]),
    ]


def chart(series: list[Series], *, width: int = 720, height: int = 180) -> dict[str, Any]:
    """Polyline points for an inline SVG: x is the minute (oldest left), y the count."""
    top = max([1, *(max(s.values) for s in series)])
    pad, inner_w, inner_h = 30, width - 40, height - 30
    lines = []
    for s in series:
        step = inner_w / max(1, len(s.values) - 1)
        points = " ".join(
            f"{pad + n * step:.1f},{10 + inner_h - v / top * inner_h:.1f}"
            for n, v in enumerate(s.values)
        )
        lines.append({"series": s, "points": points})
    return {"width": width, "height": height, "top": top, "lines": lines, "pad": pad}


def _bucket(
    h: dict[str, str], now: int, configured: int, level_f: str, learned_f: str
) -> dict[str, Any] | None:
    """The limiter's own arithmetic (its CAPS and refill), read-only."""
    fresh = float(h.get("L", "-1e18")) + LEARNED_TTL_MS > now
    learned = float(h[learned_f]) if fresh and learned_f in h else None
    if configured > 0 and learned is not None:
        cap, source = min(configured, learned), "configured, lowered by headers"
    elif configured > 0:
        cap, source = float(configured), "configured"
    elif learned is not None:
        cap, source = learned, "learned from headers"
    else:
        return None
    last = float(h.get("t", now))
    level = min(cap, float(h.get(level_f, cap)) + (now - last) * cap / 60000)
    pct = 0 if cap <= 0 else max(0, round(100 * level / cap))
    return {"level": max(0.0, level), "cap": cap, "pct": pct, "source": source}


async def headroom(redis: Redis, settings: Settings) -> list[dict[str, Any]]:
    """Per model class: what each bucket holds now against its cap, and any 429 cool-down."""
    classes = list(dict.fromkeys([*CLASSES, *settings.rate_limits]))
    keys = settings.keys
    async with redis.pipeline(transaction=False) as pipe:
        for cls in classes:
            pipe.hgetall(keys.bucket_key(cls))
            pipe.pttl(keys.cooldown_key(cls))
        replies = await pipe.execute()
    now = int(time.time() * 1000)
    rows = []
    for n, cls in enumerate(classes):
        h = {k.decode(): v.decode() for k, v in replies[2 * n].items()}
        conf = settings.rate_limits.get(cls) or settings.rate_limits.get("default") or {}
        buckets = []
        for name, level_f, learned_f, conf_name in BUCKETS:
            found = _bucket(h, now, int(conf.get(conf_name, 0)), level_f, learned_f)
            if found is not None:
                buckets.append({"name": name, **found})
        cooldown_ms = int(replies[2 * n + 1])
        if buckets or cooldown_ms > 0:
            rows.append({"cls": cls, "buckets": buckets, "cooldown_s": max(0, cooldown_ms) / 1000})
    return rows


async def pause_state(redis: Redis, keys: Keyspace) -> dict[str, Any] | None:
    """The spend-limit pause: its reason and how long it has left (None: no expiry)."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.get(keys.pause_key)
        pipe.pttl(keys.pause_key)
        reason, ttl_ms = await pipe.execute()
    if reason is None:
        return None
    return {"reason": reason.decode(), "left_s": int(ttl_ms) / 1000 if int(ttl_ms) > 0 else None}
