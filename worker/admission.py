"""Admission for one attempt: the dispatcher's ticket, or the worker's own limiter and budget.

A job the dispatcher admitted carries a ticket (`msgq:admitted:<id>`): its rate-limit capacity
and budget were reserved at dispatch, so the worker sends at once. Jobs without one (retries,
raw producers, the scheduler switched off) wait for the fleet limiter here, and a tenant with a
budget reserves it here; either way the reservation is settled from the answer's cost.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import orjson

from msgq.arq_format import Defer
from msgq.keys import COOLING_KEY, PAUSE_KEY, admitted_key, record_key
from msgq.pricing import prices_for
from msgq.tenancy.budgets import Budgets, Reservation, reserve_usd
from msgq.tenancy.scheduling import Estimate
from msgq.tenancy.tenants import load_tenants
from schemas import JobError, JobRecord, JobStatus, MessageRequest
from worker import transitions
from worker.deps import Deps

# The budget reservation of the attempt running in this task (each arq job is its own task).
RESERVATION: ContextVar[Reservation | None] = ContextVar("msgq_reservation", default=None)
BUDGET_RECHECK_S = 60.0


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


async def take_ticket(deps: Deps, job_id: str) -> Ticket | None:
    return parse_ticket(await deps.redis.getdel(admitted_key(job_id)))


@dataclass(frozen=True)
class Pickup:
    """What the task reads before it decides anything, in one round trip: the record, the
    dispatcher's ticket, and whether the fleet is paused or any model class cools down."""

    record: JobRecord
    raw: bytes | None  # the record's JSON as read (for the compare-and-set writes that follow)
    ticket: Ticket | None
    gate_clear: bool


def prefetch_reads(job_id: str) -> list[tuple[str, str]]:
    """What the worker reads with the job itself, in its claiming script: the record, the
    dispatcher's ticket (taken), and whether the fleet is paused or any class cools down."""
    return [
        ("GET", record_key(job_id)),
        ("GETDEL", admitted_key(job_id)),
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
    return Pickup(record, raw, parse_ticket(ticket_raw), gate_clear=not paused and not cooling)


async def return_ticket(deps: Deps, ticket: Ticket | None) -> None:
    """The job was not sent after all (it had ended, expired or failed validation): give back
    what admission reserved for it."""
    if ticket is None:
        return
    if ticket.limited and ticket.estimate is not None:
        est = ticket.estimate
        await deps.limiter.settle(
            est.model, input_delta=est.input_tokens, output_delta=est.output_tokens, requests=1
        )
    if ticket.reservation is not None:
        model = ticket.estimate.model if ticket.estimate else "unknown"
        await Budgets(deps.redis).settle(ticket.reservation, 0.0, model)


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
            message=f"tenant {record.tenant!r} has reached its {outcome} budget",
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
    raise Defer(defer=BUDGET_RECHECK_S)


async def settle_budget(deps: Deps, record: JobRecord, cost_usd: float | None) -> None:
    """Replace the attempt's reservation with what it cost; count spend for usage reports."""
    reservation = RESERVATION.get()
    RESERVATION.set(None)
    model = record.model or "unknown"
    budgets = Budgets(deps.redis)
    if reservation is not None:
        await budgets.settle(reservation, cost_usd or 0.0, model)
    elif record.tenant and cost_usd:
        await budgets.record(record.tenant, cost_usd, model)
