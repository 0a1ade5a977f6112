"""Where a job waits for admission: the fair-share scheduler's queues (one per model class,
priority and tenant), and the estimate admission reserves against the limits and the budget.

Producers place a job here instead of in arq's queue; the dispatcher (worker.runtime.dispatcher,
one per fleet) moves it into arq's queue once it is admitted, so the order in which work reaches
the API is decided at the one point where it is scarce: the organisation's rate limit. Batch-
lane jobs, and raw-Redis jobs written straight to arq's queue, do not pass through here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import orjson
from redis.asyncio import Redis

from schemas import Lane, MessageRequest, Priority
from schemas.capabilities import rate_limit_class
from worker.budgets import reserve_usd
from worker.estimate import estimate_input_tokens
from worker.keys import SCHED_BACKLOG, SCHED_EST, SCHED_WAKE, SCHED_WHERE, sched_queue_key
from worker.pricing import prices_for
from worker.settings import Settings
from worker.tenants import Tenants, load_tenants


@dataclass(frozen=True)
class Estimate:
    """What admission reserves for one call (limits and budget) and settles afterwards."""

    model: str
    input_tokens: int
    output_tokens: int
    usd: float

    def dumps(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def loads(cls, raw: bytes | str) -> Estimate:
        return cls(**orjson.loads(raw))


def estimate(request: MessageRequest, settings: Settings) -> Estimate:
    tokens = estimate_input_tokens(request)
    prices = prices_for(request.model, settings.prices_file)
    usd = reserve_usd(prices, tokens, request.max_tokens)
    return Estimate(request.model, tokens, request.max_tokens, usd)


@dataclass(frozen=True)
class Placement:
    """A job's scheduler queue and its estimate."""

    queue: str
    estimate: Estimate

    def write(self, pipe: Redis, job_id: str, score_ms: int) -> None:
        """Queue the job on `pipe`, in the caller's transaction with its record and payload."""
        pipe.zadd(self.queue, {job_id: score_ms}, nx=True)
        pipe.hset(SCHED_WHERE, job_id, self.queue)
        pipe.hset(SCHED_EST, job_id, self.estimate.dumps().decode())
        pipe.sadd(SCHED_BACKLOG, self.queue)
        pipe.publish(SCHED_WAKE, job_id)


def uses_scheduler(settings: Settings, lane: Lane | None) -> bool:
    return settings.scheduler and lane in (None, Lane.REALTIME)


def resolve_priority(
    priority: Priority | str | None, tenant: str | None, tenants: Tenants
) -> Priority:
    """An explicit priority, else the tenant's default, else `default`."""
    if priority is not None:
        return Priority(priority)
    return tenants.get(tenant).default_priority


def placement(
    request: MessageRequest, priority: Priority, tenant: str | None, settings: Settings
) -> Placement:
    queue = sched_queue_key(rate_limit_class(request.model), priority.value, tenant)
    return Placement(queue, estimate(request, settings))


def tenants_of(settings: Settings) -> Tenants:
    return load_tenants(settings.tenants_file)
