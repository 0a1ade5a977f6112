"""Admission for one attempt: the dispatcher's ticket, or the worker's own limiter and budget.

A job the dispatcher admitted carries a ticket (`msgq:admitted:<id>`): its rate-limit capacity
and budget were reserved at dispatch, so the worker sends at once. Jobs without one (retries,
raw producers, the scheduler switched off) wait for the fleet limiter here, and a tenant with a
budget reserves it here; either way the reservation is settled from the answer's cost.

A ticket stays with its job in Redis until the job either sends (`HeldTicket.consume`) or ends
or is handed back without sending (`HeldTicket.release`, which refunds what it reserved). Both
delete the key and act only if they deleted it, so whatever path a job takes (a deferral for a
slot, a pause, a Redis error, a cancel, a shutdown, a crash and a re-run elsewhere) its
reservation is settled exactly once.
"""

from __future__ import annotations

import time
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import orjson
from redis.asyncio import Redis

from msgq.arq_format import Defer
from msgq.jobs.records import utcnow
from msgq.keys import COOLING_KEY, PAUSE_KEY, TICKETS_KEY, admitted_key, record_key
from msgq.pricing import prices_for
from msgq.tenancy.budgets import Budgets, Reservation, budget_message, reserve_usd
from msgq.tenancy.scheduling import Estimate
from msgq.tenancy.tenants import load_tenants
from schemas import JobError, JobRecord, JobStatus, MessageRequest
from worker import transitions
from worker.deps import Deps
from worker.ratelimit import RateLimiter

# The budget reservation of the attempt running in this task (each arq job is its own task).
RESERVATION: ContextVar[Reservation | None] = ContextVar("msgq_reservation", default=None)
BUDGET_RECHECK_S = 60.0
ORPHAN_AFTER_MS = 5_000  # a ticket this old whose job is not in arq's queue is an orphan


@dataclass(frozen=True)
class Ticket:
    limited: bool  # capacity was reserved in the fleet's buckets at dispatch
    reservation: Reservation | None
    estimate: Estimate | None = None


def parse_ticket(raw: bytes | None) -> Ticket | None:
    if raw is None:
        return None
    data = orjson.loads(raw)
    reservation = None
    if "micro_usd" in data:
        reservation = Reservation(data["tenant"], data["day"], data["month"], data["micro_usd"])
    estimate = Estimate.loads(data["estimate"]) if "estimate" in data else None
    return Ticket(bool(data.get("limited")), reservation, estimate)


class HeldTicket:
    """The ticket a running job read at pick-up, until it is consumed or released."""

    def __init__(self, deps: Deps, job_id: str, ticket: Ticket | None) -> None:
        self.deps, self.job_id, self.ticket = deps, job_id, ticket
        self._done = ticket is None

    async def consume(self) -> Ticket | None:
        """The job is about to send: the ticket's reservation is now the attempt's. None when
        there was none, or another run of the job settled it first."""
        if self._done:
            return None
        self._done = True
        return self.ticket if await take(self.deps.redis, self.job_id) else None

    async def release(self) -> None:
        """The job is not sending on this run: give back what the ticket reserved. Safe to call
        on every path and more than once."""
        if self._done:
            return
        self._done = True
        if await take(self.deps.redis, self.job_id):
            await refund(self.deps.redis, self.deps.limiter, self.ticket)


async def take(redis: Redis, job_id: str) -> bool:
    """Delete the job's ticket; True only for the one caller that deleted it."""
    async with redis.pipeline(transaction=False) as pipe:  # DEL alone decides who took it
        pipe.delete(admitted_key(job_id))
        pipe.zrem(TICKETS_KEY, job_id)
        deleted, _ = await pipe.execute()
    return bool(deleted)


@dataclass(frozen=True)
class Pickup:
    """What the task reads before it decides anything, in one round trip: the record, the
    dispatcher's ticket, and whether the fleet is paused or any model class cools down."""

    record: JobRecord
    raw: bytes | None  # the record's JSON as read (for the compare-and-set writes that follow)
    ticket: HeldTicket
    gate_clear: bool


def prefetch_reads(job_id: str) -> list[tuple[str, str]]:
    """What the worker reads with the job itself, in its claiming script: the record, the
    dispatcher's ticket (read, not taken: see `HeldTicket`), and whether the fleet is paused or
    any class cools down."""
    return [
        ("GET", record_key(job_id)),
        ("GET", admitted_key(job_id)),
        ("EXISTS", PAUSE_KEY),
        ("EXISTS", COOLING_KEY),
    ]


async def pick_up(deps: Deps, template: JobRecord, prefetched: list[Any] | None = None) -> Pickup:
    """`prefetched`: the results of `prefetch_reads`, when the worker read them with the job;
    else they are read here (one round trip)."""
    if prefetched is None or len(prefetched) != len(prefetch_reads("")):
        async with deps.redis.pipeline(transaction=False) as pipe:
            for op, key in prefetch_reads(template.id):
                pipe.execute_command(op, key)
            prefetched = await pipe.execute()
    raw, ticket_raw, paused, cooling = prefetched
    if raw is None:
        record, raw = await deps.store.ensure_raw(template)
    else:
        record = JobRecord.model_validate_json(raw)
    held = HeldTicket(deps, template.id, parse_or_none(ticket_raw))
    return Pickup(record, raw, held, gate_clear=not paused and not cooling)


def parse_or_none(raw: bytes | None) -> Ticket | None:
    """A ticket that cannot be read reserved nothing this code can give back: it is dropped
    (the key is deleted by whichever run consumes or releases it)."""
    try:
        return parse_ticket(raw)
    except (ValueError, KeyError, TypeError):
        return Ticket(limited=False, reservation=None)


async def refund(redis: Redis, limiter: RateLimiter, ticket: Ticket | None) -> None:
    """Give back what admission reserved for a job that did not send. Call it only after
    `take` returned True, which makes sure it happens once."""
    if ticket is None:
        return
    if ticket.limited and ticket.estimate is not None:
        est = ticket.estimate
        await limiter.settle(
            est.model, input_delta=est.input_tokens, output_delta=est.output_tokens, requests=1
        )
    if ticket.reservation is not None:
        model = ticket.estimate.model if ticket.estimate else "unknown"
        await Budgets(redis).settle(ticket.reservation, 0.0, model)


async def release_orphans(redis: Redis, limiter: RateLimiter, queue_name: str) -> int:
    """Tickets whose job left arq's queue without a worker consuming or releasing them (it was
    canceled or expired after admission, or its payload was lost): released here, once."""
    cutoff_ms = int(time.time() * 1000) - ORPHAN_AFTER_MS
    ids = await redis.zrangebyscore(TICKETS_KEY, "-inf", cutoff_ms, start=0, num=500)
    released = 0
    for raw_id in ids:
        job_id = raw_id.decode()
        if await redis.zscore(queue_name, job_id) is not None:
            continue  # still queued or running: its worker settles it
        raw = await redis.get(admitted_key(job_id))
        if await take(redis, job_id):
            await refund(redis, limiter, parse_or_none(raw))
            released += 1
    return released


async def reserve_budget(
    deps: Deps, record: JobRecord, request: MessageRequest, input_tokens: int
) -> bool:
    """For an attempt without a ticket: reserve the tenant's budget. False: the job must not be
    sent now (it failed `budget_exceeded`, or it is deferred until the budget allows)."""
    config = load_tenants(deps.settings.tenants_file).get(record.tenant)
    if record.tenant is None or not config.has_budget:
        return True
    usd = reserve_usd(
        prices_for(request.model, deps.settings.prices_file), input_tokens, request.max_tokens
    )
    outcome = await Budgets(deps.redis).reserve(record.tenant, config, usd)
    if isinstance(outcome, Reservation):
        RESERVATION.set(outcome)
        return True
    if config.on_budget == "fail":
        error = JobError(
            type="budget_exceeded",
            message=budget_message(record.tenant, outcome),
        )
        await transitions.finish(deps.store, record.id, JobStatus.FAILED, error=error)
        return False
    await deps.store.update(
        record.id,
        lambda r: (
            None
            if r.waiting_reason == "budget"
            else r.model_copy(update={"waiting_reason": "budget"})
        ),
    )
    recheck_s = BUDGET_RECHECK_S
    if record.deadline is not None:  # wake for the deadline, which then ends the job `expired`
        recheck_s = min(recheck_s, max(0.0, (record.deadline - utcnow()).total_seconds()))
    raise Defer(defer=recheck_s)


async def settle_budget(deps: Deps, record: JobRecord, cost_usd: float | None) -> None:
    """Replace the attempt's reservation with what it cost; count spend for usage reports."""
    reservation = RESERVATION.get()
    RESERVATION.set(None)
    model = record.model or "unknown"
    budgets = Budgets(deps.redis)
    if reservation is not None:
        await budgets.settle(reservation, cost_usd or 0.0, model)
    elif cost_usd:  # untenanted spend too: the usage reports add up to the records' cost
        await budgets.record(record.tenant, cost_usd, model)
