"""Admission for one attempt: the dispatcher's ticket, or the worker's own limiter and budget.

A job the dispatcher admitted carries a ticket (`worker.ticket`): its rate-limit capacity and
budget were reserved at dispatch, so the worker sends at once. Jobs without one (retries, raw
producers, the scheduler switched off) wait for the fleet limiter here, and a tenant with a
budget reserves it here. Either way every reservation is held in the job's ledger in Redis
(`msgq.ledger`) until `settle` applies the attempt's outcome to it, once.
"""

from __future__ import annotations

from dataclasses import dataclass

from msgq.arq_format import Defer
from msgq.jobs.records import utcnow
from msgq.pricing import prices_for
from msgq.tenancy.budgets import Budgets, Reservation, budget_message, reserve_usd
from msgq.tenancy.tenants import load_tenants
from schemas import JobError, JobErrorType, JobRecord, JobStatus, MessageRequest
from worker import transitions
from worker.job.run import JobRun, Prefetched, fleet_reads, prefetch_reads
from worker.ledger import CUT, Outcome, Settled
from worker.services import Services
from worker.ticket import HeldTicket, parse_or_none
from worker.transitions import RunningJob

BUDGET_RECHECK_S = 60.0


@dataclass(frozen=True)
class Pickup:
    """What the task reads before it decides anything, in one round trip: the record, the
    dispatcher's ticket (now the run's), and whether the fleet is paused or any model class
    cools down."""

    record: JobRecord
    raw: bytes | None  # the record's JSON as read (for the compare-and-set writes that follow)
    gate_clear: bool


async def pick_up(services: Services, run: JobRun, template: JobRecord) -> Pickup:
    """The run's prefetched reads, or (when the claim did not take them) the same reads here,
    in one round trip. The ticket read becomes `run.ticket`."""
    prefetched = run.prefetched
    if prefetched is None:
        async with services.redis.pipeline(transaction=False) as pipe:
            keys = services.settings.keys
            for op, key in [*prefetch_reads(keys, template.id), *fleet_reads(keys)]:
                pipe.execute_command(op, key)
            prefetched = Prefetched._make(await pipe.execute())
    raw = prefetched.record
    if raw is None:
        record, raw = await services.store.ensure_raw(template)
    else:
        record = JobRecord.model_validate_json(raw)
    run.ticket = held_ticket(services, run.job_id, prefetched.ticket)
    if prefetched.ledger:
        # A run before this one held reservations and never settled them (a worker lost or
        # killed mid-call): the call may have reached the API, so it is settled as cut.
        await services.ledgers.settle(run.job_id, CUT, model=record.model or "unknown")
    return Pickup(record, raw, gate_clear=not prefetched.paused and not prefetched.cooling)


def held_ticket(services: Services, job_id: str, raw: bytes | None) -> HeldTicket:
    return HeldTicket(services.ledgers, job_id, parse_or_none(raw))


async def reserve_budget(
    services: Services,
    job: RunningJob | str,
    record: JobRecord,
    request: MessageRequest,
    input_tokens: int,
    *,
    hold: str | None = None,
) -> tuple[bool, Reservation | None]:
    """For an attempt without a ticket: reserve the tenant's budget, held in the ledger of the
    job `hold` names (or returned for the caller to keep). False: the job must not be sent now
    (it failed `budget_exceeded`; a wait raises Defer)."""
    config = load_tenants(services.settings.tenants_file).get(record.tenant)
    if record.tenant is None or not config.has_budget:
        return True, None
    usd = reserve_usd(
        prices_for(request.model, services.settings.prices_file), input_tokens, request.max_tokens
    )
    outcome = await Budgets(services.redis, services.settings.keys).reserve(
        record.tenant, config, usd, hold=hold
    )
    if isinstance(outcome, Reservation):
        return True, outcome
    if config.on_budget == "fail":
        error = JobError(
            type=JobErrorType.BUDGET_EXCEEDED,
            message=budget_message(record.tenant, outcome),
        )
        await transitions.finish(services.store, job, JobStatus.FAILED, error=error)
        return False, None
    await services.store.update(
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


async def settle(services: Services, run: JobRun, record: JobRecord, outcome: Outcome) -> None:
    """Settle what this run holds in the job's ledger by how the attempt ended, and count the
    spend of a tenant without a budget for usage reports."""
    model = record.model or "unknown"
    settled = Settled()
    if run.held:
        run.held = False
        settled = await services.ledgers.settle(run.job_id, outcome, model=model)
    if not settled.budget:
        await services.ledgers.record_spend(record.tenant, outcome.cost_usd, model)
    if outcome.headers and not settled.fleet:
        # Sent with no capacity held (no limit known yet): its answer's headers teach the limits.
        await services.ledgers.learn(model, outcome.headers)
