"""One attempt: wait for fleet capacity, call the API, settle the limiter, record the outcome."""

from __future__ import annotations

import asyncio
import time
from contextlib import AbstractAsyncContextManager
from typing import Any

import structlog
from redis.exceptions import RedisError

from msgq.arq_format import Defer
from msgq.errors import RateLimitError, SpendLimitError, UnavailableError, UpstreamError
from msgq.estimate import estimate_input_tokens
from msgq.fleet_stats import count_minute
from msgq.pricing import cost_fields
from schemas import JobError, JobRecord, JobSpec, JobStatus, JobUsage, Lane, MessageRequest
from worker import metrics, tracing, transitions
from worker.job import admission
from worker.job.backoff import retry_delay_for
from worker.job.progress import send_with_progress
from worker.job.run import JobRun
from worker.ledger import NOT_SENT, Outcome
from worker.services import Services
from worker.upstream.client import UpstreamReply

log = structlog.get_logger("msgq.job")


async def wait_for_capacity(
    services: Services, run: JobRun, request: MessageRequest, input_tokens: int
) -> None:
    """Block briefly for the fleet's buckets; a long wait or a pause frees the slot instead.

    The whole wait is bounded by `max_limiter_wait_s` (not each sleep): past it the job is
    deferred through the queue, so no task ever waits long enough to meet a queue timeout.
    """
    started = time.monotonic()
    while True:
        admission = await services.limiter.acquire(
            request.model,
            input_tokens=input_tokens,
            output_tokens=request.max_tokens,
            now_ms=int(time.time() * 1000),
            holder=run.job_id,
        )
        if admission.admitted:
            metrics.LIMITER_WAIT.observe(time.monotonic() - started)
            run.held = True
            await services.ledgers.hold_rate(
                run.job_id, request.model, input_tokens, request.max_tokens, admission.count
            )
            return
        if admission.reason == "paused":
            log.info("job.deferred", reason="fleet_paused")
            raise Defer(defer=min(admission.wait_s, services.settings.pause_recheck_s))
        waited = time.monotonic() - started
        if waited + admission.wait_s > services.settings.max_limiter_wait_s:
            log.debug("job.deferred", reason=admission.reason, wait_s=admission.wait_s)
            raise Defer(defer=admission.wait_s)
        await asyncio.sleep(admission.wait_s)


async def attempt(
    services: Services,
    run: JobRun,
    record: JobRecord,
    request: MessageRequest,
    spec: JobSpec,
    *,
    pickup: admission.Pickup | None = None,
) -> None:
    """A slot, capacity and budget, then one call. Raises Defer for a retryable failure or a
    wait. `pickup`: what the task read in its first round trip (the record's JSON, so the record
    writes that follow take one round trip each; whether the fleet's gate was clear)."""
    estimate = estimate_input_tokens(request)
    async with await _slot(services):
        metrics.IN_FLIGHT.inc()
        try:
            gate_clear = pickup is not None and pickup.gate_clear
            if not await _admit(services, run, record, request, estimate, gate_clear=gate_clear):
                return
            expected = pickup.raw if pickup else None
            current = record if expected else None
            run.attempt = record.attempts + 1  # before the write: a cancel may land in it
            started = await transitions.begin_attempt(
                services.store,
                record.id,
                expected=expected,
                current=current,
                lost_because=services.held.unstored(record.id),
            )
            run.attempt = started.attempts if started is not None else None
            if started is None or started.status is not JobStatus.IN_PROGRESS:
                await admission.settle(services, run, record, NOT_SENT)
                return
            run.sending = True
            _observe_start(started)
            await _call(services, run, started, request, spec)
        finally:
            metrics.IN_FLIGHT.dec()
            metrics.CONCURRENCY.set(services.concurrency.limit)


async def _slot(services: Services) -> AbstractAsyncContextManager[None]:
    """One of this worker's adaptive slots. Saturated (its adaptive limit fell): the job goes
    back to the queue, where another worker, or this one later, takes it; its record untouched."""
    try:
        return await services.concurrency.acquire(timeout_s=services.settings.max_slot_wait_s)
    except TimeoutError:
        log.debug("job.deferred", reason="no_slot")
        raise Defer(defer=services.settings.slot_retry_s) from None


async def _admit(
    services: Services,
    run: JobRun,
    record: JobRecord,
    request: MessageRequest,
    estimate: int,
    *,
    gate_clear: bool,
) -> bool:
    """Capacity and budget for this attempt: what the dispatcher's ticket reserved, else the
    fleet's buckets and the tenant's budget, reserved here; all of it held in the job's ledger
    (`run.held`). False: not sending now (the job ended; what was held is given back)."""
    held = run.ticket
    reserved = held is not None and held.limited  # capacity reserved at dispatch
    if held is not None and held.ticket is not None and not gate_clear:
        # Admitted before a pause or a cool-down began: it waits like any other job (the
        # ticket goes back when the task hands the job back).
        await _wait_for_gate(services, request.model)
    # Unmetered: no limit configured or known, and the pick-up read showed no pause or
    # cool-down, so there is nothing to wait for.
    unmetered = gate_clear and services.limiter.unmetered(request.model)
    if not reserved and not unmetered:
        await wait_for_capacity(services, run, request, estimate)
    ticket = await held.consume() if held is not None else None
    run.held = run.held or ticket is not None
    if reserved and ticket is None and not unmetered:
        # Another run of this job gave the ticket back first: reserve afresh.
        await wait_for_capacity(services, run, request, estimate)
    if ticket is not None:
        return True
    run.held = True  # the budget, if the tenant has one, is held from the reserving step itself
    sendable, _ = await admission.reserve_budget(
        services, run, record, request, estimate, hold=run.job_id
    )
    if not sendable:
        await admission.settle(services, run, record, NOT_SENT)
    return sendable


async def _wait_for_gate(services: Services, model: str) -> None:
    """A pause or this model's cool-down: hand the job back until it ends."""
    wait_s, reason = await services.limiter.gate_wait(model)
    if wait_s > 0:
        log.info("job.deferred", reason=reason)
        raise Defer(defer=min(wait_s, services.settings.pause_recheck_s))


def _observe_start(record: JobRecord) -> None:
    metrics.ATTEMPTS.inc()
    if record.attempts == 1 and record.started_at is not None:
        metrics.QUEUE_WAIT.observe((record.started_at - record.created_at).total_seconds())
        tracing.queued(record)
    log.info("job.started", attempt=record.attempts, model=record.model)


async def _call(
    services: Services,
    run: JobRun,
    record: JobRecord,
    request: MessageRequest,
    spec: JobSpec,
) -> None:
    stream = request.max_tokens >= services.settings.stream_min_max_tokens  # as send_message does
    with tracing.call_span(
        record,
        request,
        spec.request,
        stream=stream,
        traceparent=spec.traceparent,
        tracestate=spec.tracestate,
    ) as span:
        try:
            reply = await send_with_progress(services, record, request, spec.request)
        except TimeoutError:
            error = UnavailableError("attempt exceeded job_timeout_s or the job's deadline")
            span.failed(error.error_type, error.message)
            await _failed(services, run, record, request, spec, error)
        except UpstreamError as exc:
            span.failed(exc.error_type, exc.message)
            await _failed(services, run, record, request, spec, exc)
        else:
            span.succeeded(reply)
            metrics.UPSTREAM.labels("200").inc()
            metrics.UPSTREAM_LATENCY.observe(reply.latency_ms / 1000)
            await _succeeded(services, run, record, request, reply)


async def _failed(
    services: Services,
    run: JobRun,
    record: JobRecord,
    request: MessageRequest,
    spec: JobSpec,
    exc: UpstreamError,
) -> None:
    metrics.UPSTREAM.labels(str(exc.status_code or exc.error_type)).inc()
    # Nothing was produced, nothing billed: the output and the budget go back. The request and
    # its input stay charged: the API may have counted them, and after a 429 sending less is
    # the safe error.
    await admission.settle(services, run, record, Outcome(sent=True, headers=exc.headers))
    refused = exc.status_code in (429, 529)
    if refused:
        services.concurrency.overloaded()
        await count_minute(
            services.redis, services.settings.keys, str(exc.status_code)
        )  # the dashboard's 429/529 chart
    if isinstance(exc, RateLimitError):
        await services.limiter.cool_down(request.model, exc.retry_after_s or 1.0)
    if isinstance(exc, SpendLimitError):
        await _pause_fleet(services, record, exc)
        return
    await handle_failure(services, run, record, exc, spec)


async def _pause_fleet(services: Services, record: JobRecord, exc: SpendLimitError) -> None:
    """The org hit its spend limit: stop the fleet, keep this job queued (attempt refunded)."""
    await services.limiter.pause(exc.message[:200], services.settings.spend_pause_s)
    log.error(
        "fleet.paused",
        reason="spend_limit",
        status_code=exc.status_code,
        request_id=exc.request_id,
        pause_s=services.settings.spend_pause_s,
    )
    error = JobError.model_validate(exc.as_record_error())
    await transitions.requeue(services.store, record.id, error=error)
    raise Defer(defer=services.settings.pause_recheck_s)


async def handle_failure(
    services: Services, run: JobRun, record: JobRecord, exc: UpstreamError, spec: JobSpec
) -> None:
    error = JobError.model_validate(exc.as_record_error())
    if not exc.retryable or record.attempts >= record.max_attempts:
        await transitions.finish(services.store, run, JobStatus.FAILED, error=error)
        # Kept so an operator can `msgq retry` it once the cause (a key, a quota) is fixed.
        kept = spec.model_dump(mode="json", exclude_none=True, exclude={"deadline"})
        await services.store.keep_spec(record.id, kept)
        return
    delay_s = retry_delay_for(services.settings, record.attempts, exc.retry_after_s)
    stored = await transitions.schedule_retry(
        services.store, record.id, delay_s=delay_s, error=error
    )
    if stored is not None and stored.status is JobStatus.RETRYING:
        metrics.RETRIES.labels(error.type).inc()
        # arq re-queues the job `delay_s` from now; no worker slot is held while it waits.
        raise Defer(defer=delay_s)


async def _succeeded(
    services: Services,
    run: JobRun,
    record: JobRecord,
    request: MessageRequest,
    reply: UpstreamReply,
) -> None:
    structlog.contextvars.bind_contextvars(latency_ms=round(reply.latency_ms, 1))
    usage: dict[str, Any] = reply.message.get("usage") or {}
    job_usage = JobUsage(
        input_tokens=int(usage.get("input_tokens") or 0),
        output_tokens=int(usage.get("output_tokens") or 0),
        cache_creation_input_tokens=int(usage.get("cache_creation_input_tokens") or 0),
        cache_read_input_tokens=int(usage.get("cache_read_input_tokens") or 0),
    )
    priced = cost_fields(record.model or request.model, usage, services.settings.prices_file)
    cost = priced["cost_usd"]
    # The Message is stored first: it was paid for. Everything after is bookkeeping that may
    # fail (Redis blips, a bad prices file) without the answer being thrown away and re-sent.
    await transitions.finish_durably(
        services.store,
        run,
        JobStatus.SUCCEEDED,
        hold=services.held,
        expected=record.model_dump_json().encode(),  # as begin_attempt wrote it
        current=record,
        result=reply.message,
        usage=job_usage,
        **priced,
        upstream_request_id=reply.request_id,
        error=None,
        served_by=Lane.REALTIME,
    )
    for kind, value in job_usage.model_dump().items():
        metrics.TOKENS.labels(kind).inc(value)
    metrics.COST.inc(cost or 0)
    await services.concurrency.succeeded()
    # Cache reads do not count toward ITPM: the estimate is corrected with what really counted.
    outcome = Outcome(
        sent=True,
        cost_usd=cost or 0.0,
        input_counted=job_usage.input_tokens + job_usage.cache_creation_input_tokens,
        output_tokens=job_usage.output_tokens,
        headers=reply.headers,
    )
    try:
        await admission.settle(services, run, record, outcome)
    except RedisError as exc:  # still in the ledger: the reconciler settles it
        log.warning("ledger.settle_failed", error=type(exc).__name__)
