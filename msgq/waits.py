"""Why queued work waits, in words an operator can act on.

Read only from what the fleet writes anyway: the workers' announcements (slots, slots in use,
adaptive limit), the spend-limit pause, the 429 cool-downs, the scheduler's backlog and the
records' own `waiting_reason`. Never from a worker's memory: the dashboard and `msgq status
--follow`, which say it, do not import the worker. A queue beside 90-100% rate-limit headroom
is otherwise a mystery: the answer is often that the workers' adaptive limits were cut by 529s,
or that no worker reads this Redis at all.

A job is given the first reason that holds it, in the order they block: with no worker nothing
moves; a pooled batch-lane job waits for its upstream batch whatever else holds; the pause holds
every admission; then the tenant's budget, a retry's back-off, the model's cool-down, and last
the scheduler (rate-limit capacity) or the worker slots (admitted, waiting for a free slot).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
from redis.asyncio import Redis

from msgq.keys import Keyspace
from msgq.lanes import WAITING_POOL
from msgq.liveness import SEEN_WITHIN_S
from msgq.settings import Settings
from schemas import JobRecord, JobStatus
from schemas.capabilities import rate_limit_class

# The limiter's model classes (worker.ratelimit.model_class), read-only here.
CLASSES = ("opus", "sonnet", "haiku", "mythos", "fable", "default")
WAITING = (JobStatus.QUEUED.value, JobStatus.RETRYING.value)
CHUNK = 1000

# key -> (label, what it means and what to do). The order is the order in which they block.
REASONS: dict[str, tuple[str, str]] = {
    "no_worker": (
        "no worker",
        f"No worker has been seen on this Redis in the last {SEEN_WITHIN_S:g} s: start one "
        "(`msgq worker`, or `msgq dev`) with this REDIS_URL.",
    ),
    "batch_pool": (
        "batch pool",
        "Pooled in the batch lane until its upstream Message Batch is sent (half price, "
        "ends within 24 h).",
    ),
    "pause": ("pause", "Sending is paused by a spend limit: resume it, or let it lift."),
    "budget": (
        "budget",
        "Its tenant's budget has no room for its reservation until the period rolls over.",
    ),
    "retry": ("retry back-off", "An attempt failed; it waits out its back-off before the next."),
    "cooldown": (
        "cool-down",
        "Its model class cools down after a 429 from the API; admission resumes when it ends.",
    ),
    "capacity": (
        "rate-limit capacity",
        "Waiting for admission under the rate limits (or, before any limit is known, the "
        "slow start's window of calls in flight).",
    ),
    "slots": (
        "worker slots",
        "Admitted, waiting for a free worker slot: every slot is in use, or a worker's "
        "adaptive limit was cut after 429s and 529s.",
    ),
}


@dataclass(frozen=True)
class WorkerRow:
    """One live worker as it announced itself."""

    name: str  # a short form of its random ID
    slots: int
    running: int
    limit: int | None  # its adaptive concurrency limit (None: a worker too old to say)
    seen_s: float

    @property
    def usable(self) -> int:
        return self.slots if self.limit is None else min(self.slots, self.limit)

    @property
    def cut(self) -> bool:
        """Its limit was cut below its slots by overload answers (429, 529)."""
        return self.limit is not None and self.limit < self.slots


@dataclass
class Fleet:
    workers: list[WorkerRow] = field(default_factory=list)
    live: bool = False  # a worker announced itself, or arq's health check is fresh
    paused: bool = False
    cooling: set[str] = field(default_factory=set)

    @property
    def full(self) -> bool:
        """Every live worker's usable slots are taken: admitted work waits for a slot."""
        usable = sum(w.usable for w in self.workers)
        return bool(self.workers) and sum(w.running for w in self.workers) >= usable


def _worker(worker_id: bytes, raw: bytes, now_ms: int) -> WorkerRow | None:
    try:
        seen = orjson.loads(raw)
        age_ms = now_ms - int(seen["seen_ms"])
        limit = seen.get("limit")
        row = WorkerRow(
            worker_id.decode()[:8],
            int(seen["slots"]),
            int(seen.get("running", 0)),
            None if limit is None else int(limit),
            max(0, age_ms) / 1000,
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
        return None
    return row if age_ms <= SEEN_WITHIN_S * 1000 else None


async def fleet_state(redis: Redis, settings: Settings) -> Fleet:
    """The live workers, the pause and the model classes cooling down, in one round trip."""
    classes = list(dict.fromkeys([*CLASSES, *settings.rate_limits]))
    keys = settings.keys
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hgetall(keys.fleet_workers)
        pipe.exists(keys.pause_key)
        pipe.exists(keys.health_check_key)
        for cls in classes:
            pipe.pttl(keys.cooldown_key(cls))
        entries, paused, health, *ttls = await pipe.execute()
    now_ms = int(time.time() * 1000)
    rows = [_worker(k, v, now_ms) for k, v in entries.items()]
    workers = sorted((w for w in rows if w is not None), key=lambda w: w.name)
    cooling = {cls for cls, ttl in zip(classes, ttls, strict=True) if int(ttl) > 0}
    return Fleet(workers, bool(workers) or bool(health), bool(paused), cooling)


async def _in_scheduler(redis: Redis, keys: Keyspace, ids: list[str]) -> set[str]:
    """The jobs still waiting for the dispatcher's admission (its queues, or the raw inbox)."""
    found: set[str] = set()
    for start in range(0, len(ids), CHUNK):
        chunk = ids[start : start + CHUNK]
        async with redis.pipeline(transaction=False) as pipe:
            pipe.hmget(keys.sched_where, chunk)
            pipe.zmscore(keys.sched_inbox, chunk)
            where, inbox = await pipe.execute()
        found |= {i for i, w, s in zip(chunk, where, inbox, strict=True) if w or s is not None}
    return found


def reason(data: dict[str, Any], fleet: Fleet, *, in_scheduler: bool) -> str:
    """The key (in REASONS) of what holds one waiting job, from its record's JSON."""
    if not fleet.live:
        return "no_worker"
    if data.get("waiting_reason") == WAITING_POOL:
        return "batch_pool"
    if fleet.paused:
        return "pause"
    if data.get("waiting_reason") == "budget":
        return "budget"
    if data.get("status") == JobStatus.RETRYING.value:
        return "retry"
    if rate_limit_class(str(data.get("model") or "")) in fleet.cooling:
        return "cooldown"
    if in_scheduler and not fleet.full:
        return "capacity"
    return "slots"


async def count_reasons(
    redis: Redis, keys: Keyspace, fleet: Fleet, waiting: Iterable[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Waiting jobs counted by reason, in REASONS order; reasons with no job left out."""
    records = [d for d in waiting if d.get("status") in WAITING]
    scheduled = await _in_scheduler(redis, keys, [str(d.get("id")) for d in records])
    counts = Counter(reason(d, fleet, in_scheduler=str(d.get("id")) in scheduled) for d in records)
    return [
        {"key": key, "label": label, "why": why, "count": counts[key]}
        for key, (label, why) in REASONS.items()
        if counts[key]
    ]


async def job_reason(redis: Redis, settings: Settings, record: JobRecord) -> dict[str, str] | None:
    """Why this job waits ({label, why}); None when it is not waiting (running, or ended)."""
    if record.status.value not in WAITING:
        return None
    fleet = await fleet_state(redis, settings)
    scheduled = await _in_scheduler(redis, settings.keys, [record.id])
    data = record.model_dump(mode="json")
    label, why = REASONS[reason(data, fleet, in_scheduler=record.id in scheduled)]
    return {"label": label, "why": why}
