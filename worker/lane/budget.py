"""Budgets in the batch lane: a tenant's budget is reserved when its job is pooled (as the
worker reserves before a realtime call; the scheduler does not see batch-lane jobs), held while
the job is pooled or upstream, and settled to the batch-priced cost when it leaves the lane.
So a budget is never overshot by jobs waiting in batches."""

from __future__ import annotations

import dataclasses

import orjson
from redis.asyncio import Redis

from msgq import lanes
from msgq.estimate import estimate_input_tokens
from msgq.keys import Keyspace
from msgq.tenancy.budgets import Budgets, Reservation
from schemas import JobRecord, MessageRequest
from worker.job import admission
from worker.services import Services
from worker.transitions import RunningJob


async def reserve(
    services: Services, run: RunningJob, record: JobRecord, request: MessageRequest
) -> bool:
    """As the worker's own admission (`on_budget` fail: `failed`; wait: deferred, still in
    arq's queue), the reservation kept with the job. False: do not pool it now."""
    estimate = estimate_input_tokens(request)
    ok, reservation = await admission.reserve_budget(services, run, record, request, estimate)
    if not ok:
        return False
    if reservation is not None:
        value = orjson.dumps(dataclasses.asdict(reservation)).decode()
        await services.redis.hset(services.settings.keys.lane_budgets, record.id, value)  # type: ignore[misc]  # stubs
    return True


async def settle(
    redis: Redis,
    keys: Keyspace,
    job_id: str,
    *,
    tenant: str | None,
    cost_usd: float | None,
    model: str | None,
) -> None:
    """The job left the lane: its reservation becomes what it cost (0 if nothing was billed),
    once (HDEL decides), or the spend is recorded for usage when it held none."""
    raw = await redis.hget(keys.lane_budgets, job_id)  # type: ignore[misc]  # redis-py stubs
    budgets = Budgets(redis, keys)
    if raw is not None:
        if await redis.hdel(keys.lane_budgets, job_id):  # type: ignore[misc]
            await budgets.settle(Reservation(**orjson.loads(raw)), cost_usd or 0.0, model or "")
    elif cost_usd:  # untenanted spend too: the usage reports add up to the records' cost
        await budgets.record(tenant, cost_usd, model or "unknown")


async def leave_lane(
    redis: Redis,
    keys: Keyspace,
    job_id: str,
    expected: str,
    *,
    record: JobRecord | None = None,
    cost_usd: float | None = None,
) -> None:
    """The job leaves the batch lane from `expected` ("pool", an upstream handle, or "" for
    wherever it is): its place and spec are dropped and its budget settled."""
    if await lanes.leave(redis, keys, job_id, expected):
        tenant, model = (record.tenant, record.model) if record else (None, None)
        await settle(redis, keys, job_id, tenant=tenant, cost_usd=cost_usd, model=model)
