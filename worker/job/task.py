"""The task: validate → wait for capacity → call upstream → store → log, for one `JobRun`."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from datetime import datetime
from typing import Any

import orjson
import structlog
from pydantic import ValidationError
from redis.exceptions import RedisError

from msgq import arq_format
from msgq.arq_format import UNDECODABLE_KEY, Defer
from msgq.errors import UnavailableError
from msgq.jobs import records
from msgq.jobs.ids import scoped_id
from msgq.jobs.records import new_record, utcnow
from msgq.jobs.rehome import rehome
from msgq.model_catalog import note_unknown_model, unknown_label
from msgq.settings import Settings
from schemas import (
    JobError,
    JobErrorType,
    JobRecord,
    JobSpec,
    JobStatus,
    MessageRequest,
    field_errors,
    summarize,
    validate_request,
)
from worker import metrics, transitions
from worker.job import admission
from worker.job.attempt import attempt, handle_failure
from worker.job.backoff import retry_delay_for
from worker.job.run import JobRun
from worker.lane import lane as batch_lane
from worker.ledger import CUT, NOT_SENT
from worker.queue.claim import QueueJob
from worker.queue.hooks import Ctx
from worker.services import SERVICES, Services

log = structlog.get_logger("msgq.job")


def services_of(ctx: Ctx) -> Services:
    """The worker's services, built once by `worker.main.startup`."""
    services: Services = ctx[SERVICES]
    return services


async def run_message(ctx: Ctx, job: QueueJob, kwargs: dict[str, Any]) -> None:
    """The task. Returns nothing: the job's outcome lives in its record, not in arq's result."""
    services = services_of(ctx)
    run = JobRun.of(job)
    job_id = run.job_id
    structlog.contextvars.bind_contextvars(job_id=job_id)
    try:
        async with asyncio.timeout(ceiling_s(services.settings)):
            # The worker's one heartbeat keeps this job's in-progress lock alive meanwhile.
            await _run(services, run, kwargs, enqueued_at=job.enqueued_at or utcnow())
    except Defer:
        raise
    except TimeoutError:
        await _timed_out(services, run, kwargs)
    except RedisError as exc:
        # Redis went away mid-job: re-queue rather than let arq finish (and delete) the job.
        log.warning("job.redis_unavailable", error=type(exc).__name__)
        raise Defer(defer=2.0) from None
    except Exception as exc:  # a bug in task code (a "poison" job): never crash the worker
        await _crashed(services, job_id, exc, kwargs)
    except asyncio.CancelledError:
        # Either an operator's cancel (arq abort) or a worker shutting down mid-attempt.
        await asyncio.shield(transitions.release_after_shutdown(services.store, run))
        raise
    finally:
        structlog.contextvars.unbind_contextvars("job_id", "latency_ms")


def ceiling_s(settings: Settings) -> float:
    """The most one run of the task may take: every wait in it is bounded (an answer held through
    a Redis outage too, `worker.hold`), and this bounds their sum. The queue's own timeout is
    set beyond reach (`worker.queue.build`), because arq's timeout deletes the job without
    msgq's record ever being finished."""
    waits = settings.max_slot_wait_s + settings.max_limiter_wait_s + settings.answer_hold_s
    return settings.job_timeout_s + waits + 60


async def _timed_out(services: Services, run: JobRun, kwargs: dict[str, Any]) -> None:
    """The task hit its ceiling: a retryable failure if a call was under way, else a hand-back
    to the queue. Either way the record says what happens next; nothing is left stranded."""
    log.warning("job.ceiling_reached", ceiling_s=ceiling_s(services.settings))
    record = await services.store.get(run.job_id)
    spec, _ = _parse_spec(kwargs)
    if record is None or spec is None or record.status is not JobStatus.IN_PROGRESS:
        raise Defer(defer=services.settings.slot_retry_s)
    error = UnavailableError("attempt exceeded its time ceiling (job_timeout_s and waits)")
    await handle_failure(services, run, record, error, spec)


async def _run(
    services: Services, run: JobRun, kwargs: dict[str, Any], *, enqueued_at: datetime
) -> None:
    spec, problem = _parse_spec(kwargs)
    if spec is not None and spec.tenant and not run.job_id.startswith(scoped_id(spec.tenant, "")):
        await _rehome(services, run, spec.tenant, kwargs, enqueued_at)
        return
    template = new_record(
        run.job_id,
        spec,
        created_at=enqueued_at,
        default_max_attempts=services.settings.max_attempts,
    )
    pickup = await admission.pick_up(services, run, template)
    try:
        await _decide(services, run, pickup, spec, problem)
    finally:
        # Every way out that did not send (an end, a deferral, an error, a cancel, a shutdown)
        # gives the dispatcher's reservation back; after a send this does nothing. What the
        # run still holds in the job's ledger (a cancel, a shutdown cut or a crash mid-call, a
        # deferral after reserving) is settled here, as cut once the call began.
        await asyncio.shield(_let_go(services, run, pickup.record))


async def _let_go(services: Services, run: JobRun, record: JobRecord) -> None:
    if run.ticket is not None:
        await run.ticket.release()
    if run.held:
        await admission.settle(services, run, record, CUT if run.sending else NOT_SENT)


async def _decide(
    services: Services,
    run: JobRun,
    pickup: admission.Pickup,
    spec: JobSpec | None,
    problem: JobError | None,
) -> None:
    record = pickup.record
    if record.status.terminal:
        log.info("job.duplicate_skipped", status=record.status.value)
        return
    if spec is None or problem is not None:
        await transitions.finish(services.store, run, JobStatus.FAILED, error=problem)
        return
    request = await _ready_to_send(services, run, record, spec)
    if request is None or await batch_lane.route(services, run, record, spec, request):
        return
    await attempt(services, run, record, request, spec, pickup=pickup)


async def _rehome(
    services: Services,
    run: JobRun,
    tenant: str,
    kwargs: dict[str, Any],
    enqueued_at: datetime,
) -> None:
    """A raw producer's job that names a tenant is that tenant's job, stored as `tenant:id` as
    every other producer's is (else it was scheduled and billed as the tenant but unreachable
    through the tenant's API). It is queued again under that ID; this entry ends with no record."""
    new_id = scoped_id(tenant, run.job_id)
    payload = arq_format.job_payload(kwargs, int(enqueued_at.timestamp() * 1000))
    moved = await rehome(services.store, run.job_id, new_id, payload)
    log.info("job.rehomed", to=new_id, moved=moved)
    await _release_prefetched_ticket(services, run)  # the new ID is admitted anew


async def _release_prefetched_ticket(services: Services, run: JobRun) -> None:
    """The claim read the dispatcher's ticket with a job that will not run here: give it back."""
    if run.prefetched is not None:
        await admission.held_ticket(services, run.job_id, run.prefetched.ticket).release()


async def on_refused(ctx: Ctx, job: QueueJob, result_data: bytes | None) -> None:
    """The queue refused a job before our task ran: record why."""
    services: Services | None = ctx.get(SERVICES)
    if services is not None:
        try:
            await record_refused(services, job.job_id, result_data)
        finally:
            await _release_prefetched_ticket(services, JobRun.of(job))


async def record_refused(services: Services, job_id: str, result_data: bytes | None) -> None:
    """A failed record for a job arq refused before running it; its reason, never its bytes."""
    reason = "job payload is missing or empty"
    with contextlib.suppress(orjson.JSONDecodeError, TypeError, AttributeError):
        result = orjson.loads(result_data or b"{}").get("r") or {}
        if result.get("message") and result["message"] != "job expired":
            reason = f"refused by arq: {result['message']}"[:500]
    record = new_record(
        job_id, None, created_at=utcnow(), default_max_attempts=services.settings.max_attempts
    )
    current = await services.store.ensure(record)
    if current.cancel_requested:
        # arq refuses a job it was asked to abort before it started: that is a cancel.
        await transitions.finish(services.store, job_id, JobStatus.CANCELED)
        return
    error = JobError(type=JobErrorType.VALIDATION, message=reason)
    await transitions.finish(services.store, job_id, JobStatus.FAILED, error=error)


async def _crashed(services: Services, job_id: str, exc: Exception, kwargs: dict[str, Any]) -> None:
    """Retry with backoff like a transient failure; after max_attempts, `failed` with the
    exception's type and message."""
    log.error("job.crashed", error=f"{type(exc).__name__}: {exc}"[:500], exc_info=exc)
    error = JobError(type=JobErrorType.INTERNAL, message=f"{type(exc).__name__}: {exc}"[:2000])
    stored = await transitions.record_crash(
        services.store,
        job_id,
        error=error,
        backoff=functools.partial(retry_delay_for, services.settings),
    )
    if stored is not None and stored.status is JobStatus.FAILED and "request" in kwargs:
        await services.store.keep_spec(job_id, {k: v for k, v in kwargs.items() if k != "deadline"})
    if stored is not None and stored.status is JobStatus.RETRYING and stored.next_attempt_at:
        raise Defer(defer=max(0.0, (stored.next_attempt_at - utcnow()).total_seconds()))


def _parse_spec(kwargs: dict[str, Any]) -> tuple[JobSpec | None, JobError | None]:
    if UNDECODABLE_KEY in kwargs:
        return None, JobError(type=JobErrorType.VALIDATION, message=str(kwargs[UNDECODABLE_KEY]))
    try:
        return JobSpec.model_validate(kwargs), None
    except ValidationError as exc:
        message = "job payload does not match the msgq job format"
        return None, JobError(
            type=JobErrorType.VALIDATION, message=message, errors=field_errors(exc, kwargs)
        )


async def _ready_to_send(
    services: Services, run: JobRun, record: JobRecord, spec: JobSpec
) -> MessageRequest | None:
    """Deadline, validation and spent attempts end a job without calling the API (None)."""
    store = services.store
    if record.deadline is not None and utcnow() >= record.deadline:
        await transitions.finish(store, run, JobStatus.EXPIRED)
        return None
    models = await services.catalog.limits()
    try:
        request = validate_request(
            spec.request,
            max_image_bytes=services.settings.max_image_bytes,
            in_batch=record.batch_id is not None,
            anthropic_version=spec.anthropic_version or services.settings.anthropic_version,
            models=models,
        )
    except ValidationError as exc:
        errors = field_errors(exc, spec.request)
        message = summarize(errors, 5)
        error = JobError(type=JobErrorType.VALIDATION, message=message, errors=errors)
        await transitions.finish(store, run, JobStatus.FAILED, error=error)
        return None
    if record.attempts >= record.max_attempts:
        # A worker died during the last allowed call: do not make one more.
        await transitions.finish(store, run, JobStatus.FAILED, error=records.exhausted(record))
        return None
    if note_unknown_model(request.model, models):
        metrics.UNKNOWN_MODELS.labels(unknown_label(request.model)).inc()
    if request.model_extra:
        log.info("request.unknown_parameters", names=sorted(request.model_extra))
    if unknown_fields := request.unknown_fields():
        log.info("request.unknown_block_fields", names=sorted(unknown_fields))
    return request
