"""The arq task: validate → wait for capacity → call upstream → store → log; and start-up."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
import uuid
from datetime import datetime
from typing import Any

import orjson
import structlog
from prometheus_client import start_http_server
from pydantic import ValidationError
from redis.asyncio import Redis
from redis.exceptions import RedisError

from msgq import arq_format
from msgq.arq_format import UNDECODABLE_KEY, Defer
from msgq.errors import UnavailableError
from msgq.jobs.records import utcnow
from msgq.jobs.rehome import rehome
from msgq.jobs.store import JobStore
from msgq.keys import FLEET_WORKERS
from msgq.logs import register_secret
from msgq.model_catalog import note_unknown_model, unknown_label
from msgq.settings import Settings
from msgq.tenancy import policy
from schemas import (
    JobError,
    JobRecord,
    JobSpec,
    JobStatus,
    MessageRequest,
    field_errors,
    summarize,
    validate_request,
)
from worker import metrics, tracing, transitions
from worker.dispatch.dispatcher import Dispatcher
from worker.dispatch.window import announce
from worker.job import admission
from worker.job.attempt import attempt, handle_failure
from worker.job.backoff import retry_delay_s
from worker.job.concurrency import AdaptiveConcurrency
from worker.lane import lane as batch_lane
from worker.queue.claim import PREFETCHED
from worker.ratelimit import Limits, RateLimiter
from worker.reconciler import Reconciler
from worker.services import Deps
from worker.upstream import models as models_refresh
from worker.upstream.client import Upstream, build_client
from worker.webhooks import WebhookDispatcher

log = structlog.get_logger("msgq.job")
POLICY_EVERY_S = 60.0


async def startup(ctx: dict[str, Any]) -> None:
    settings: Settings = ctx["settings"]
    if settings.anthropic_api_key is not None:
        register_secret(settings.anthropic_api_key.get_secret_value())
    redis: Redis = ctx["redis"]
    store = JobStore.from_settings(redis, settings)
    limits = {cls: Limits(**values) for cls, values in settings.rate_limits.items()}
    concurrency = AdaptiveConcurrency(settings.max_jobs)
    ctx["msgq"] = Deps(
        settings,
        store,
        Upstream(settings),  # here, in the running loop, as aiohttp requires
        build_client(settings),
        redis,
        RateLimiter(redis, limits),
        concurrency,
    )
    ctx["gauges"] = asyncio.create_task(_update_gauges(ctx["msgq"]))
    ctx["reconciler"] = asyncio.create_task(Reconciler(redis, store, settings).run_forever())
    ctx["batch_lane"] = asyncio.create_task(batch_lane.BatchLane(ctx["msgq"]).run_forever())
    # Always one per fleet: with the scheduler off it only drains what producers placed there.
    dispatcher = Dispatcher(redis, store, settings, ctx["msgq"].limiter)
    ctx["dispatcher"] = asyncio.create_task(dispatcher.run_forever())
    ctx["worker_id"] = uuid.uuid4().hex
    ctx["announce"] = asyncio.create_task(_announce(ctx))
    ctx["webhooks"] = asyncio.create_task(WebhookDispatcher(redis, store, settings).run_forever())
    ctx["models"] = asyncio.create_task(models_refresh.run_forever(ctx["msgq"]))
    if settings.metrics_port:
        start_http_server(settings.metrics_port)
    tracing.configure(settings)  # only if the OTEL_* variables ask for it
    log.info("worker.started", base_url=settings.anthropic_base_url, max_jobs=settings.max_jobs)


async def shutdown(ctx: dict[str, Any]) -> None:
    for name in ("gauges", "reconciler", "dispatcher", "batch_lane", "announce", "models"):
        if name in ctx:
            ctx[name].cancel()
    if "worker_id" in ctx:
        with contextlib.suppress(RedisError, OSError):
            await ctx["redis"].hdel(FLEET_WORKERS, ctx["worker_id"])
    deps: Deps | None = ctx.get("msgq")
    if deps is not None:
        await deps.upstream.aclose()
        await deps.http.aclose()
    if "webhooks" in ctx:
        ctx["webhooks"].cancel()  # an attempt cut short is delivered again when its lease ends
    tracing.shutdown()
    log.info("worker.stopped")


async def _announce(ctx: dict[str, Any]) -> None:
    """Every second: this worker's slots for the dispatcher's sizing (and its adaptive limit, for
    the dashboard), and (every minute) the fleet policy for producers. Never stops on an error."""
    deps: Deps = ctx["msgq"]
    published_at = -POLICY_EVERY_S
    while True:
        try:
            running = ctx.get("running_jobs", lambda: 0)()
            slots, limit = deps.settings.max_jobs, deps.concurrency.limit
            await announce(deps.redis, ctx["worker_id"], slots, running, limit)
            if time.monotonic() - published_at >= POLICY_EVERY_S:
                await policy.publish(deps.redis, deps.settings)
                published_at = time.monotonic()
        except Exception as exc:
            log.warning("worker.announce_failed", error=type(exc).__name__)
        await asyncio.sleep(1.0)


async def _update_gauges(deps: Deps) -> None:
    """This worker's own gauges; the fleet's (queue depth, pause) are `msgq api`'s alone."""
    while True:
        metrics.CONCURRENCY.set(deps.concurrency.limit)
        await asyncio.sleep(5)


async def run_message(ctx: dict[str, Any], **kwargs: Any) -> None:
    """The arq task. Returns nothing: the job's outcome lives in its record, not in arq's result."""
    deps: Deps = ctx["msgq"]
    job_id: str = ctx["job_id"]
    structlog.contextvars.bind_contextvars(job_id=job_id)
    try:
        async with asyncio.timeout(ceiling_s(deps.settings)):
            # The worker's one heartbeat keeps this job's in-progress lock alive meanwhile.
            await _run(
                deps,
                job_id,
                kwargs,
                enqueued_at=ctx["enqueue_time"],
                prefetched=ctx.get(PREFETCHED),
            )
    except Defer:
        raise
    except TimeoutError:
        await _timed_out(deps, job_id, kwargs)
    except RedisError as exc:
        # Redis went away mid-job: re-queue rather than let arq finish (and delete) the job.
        log.warning("job.redis_unavailable", error=type(exc).__name__)
        raise Defer(defer=2.0) from None
    except Exception as exc:  # a bug in task code (a "poison" job): never crash the worker
        await _crashed(deps, job_id, exc, kwargs)
    except asyncio.CancelledError:
        # Either an operator's cancel (arq abort) or a worker shutting down mid-attempt.
        await asyncio.shield(transitions.release_after_shutdown(deps.store, job_id))
        raise
    finally:
        structlog.contextvars.unbind_contextvars("job_id", "latency_ms")


def ceiling_s(settings: Settings) -> float:
    """The most one run of the task may take: every wait in it is bounded, and this bounds their
    sum. The queue's own timeout is set beyond reach (arq_adapter), because arq's timeout deletes
    the job without msgq's record ever being finished."""
    return settings.job_timeout_s + settings.max_slot_wait_s + settings.max_limiter_wait_s + 60


async def _timed_out(deps: Deps, job_id: str, kwargs: dict[str, Any]) -> None:
    """The task hit its ceiling: a retryable failure if a call was under way, else a hand-back
    to the queue. Either way the record says what happens next; nothing is left stranded."""
    log.warning("job.ceiling_reached", ceiling_s=ceiling_s(deps.settings))
    record = await deps.store.get(job_id)
    spec, _ = _parse_spec(kwargs)
    if record is None or spec is None or record.status is not JobStatus.IN_PROGRESS:
        raise Defer(defer=deps.settings.slot_retry_s)
    error = UnavailableError("attempt exceeded its time ceiling (job_timeout_s and waits)")
    await handle_failure(deps, record, error, spec)


async def _run(
    deps: Deps,
    job_id: str,
    kwargs: dict[str, Any],
    *,
    enqueued_at: datetime,
    prefetched: list[Any] | None = None,
) -> None:
    spec, problem = _parse_spec(kwargs)
    if spec is not None and spec.tenant and not job_id.startswith(f"{spec.tenant}:"):
        await _rehome(deps, job_id, spec.tenant, kwargs, enqueued_at, prefetched)
        return
    template = transitions.new_record(
        job_id, spec, created_at=enqueued_at, default_max_attempts=deps.settings.max_attempts
    )
    pickup = await admission.pick_up(deps, template, prefetched)
    try:
        await _decide(deps, pickup, spec, problem)
    finally:
        # Every way out that did not send (an end, a deferral, an error, a cancel, a shutdown)
        # gives the dispatcher's reservation back; after a send this does nothing.
        await asyncio.shield(pickup.ticket.release())


async def _decide(
    deps: Deps, pickup: admission.Pickup, spec: JobSpec | None, problem: JobError | None
) -> None:
    record, job_id = pickup.record, pickup.record.id
    if record.status.terminal:
        log.info("job.duplicate_skipped", status=record.status.value)
        return
    if spec is None or problem is not None:
        await transitions.finish(deps.store, job_id, JobStatus.FAILED, error=problem)
        return
    request = await _ready_to_send(deps, record, spec)
    if request is None or await batch_lane.route(deps, record, spec, request):
        return
    await attempt(deps, record, request, spec, pickup=pickup)


async def _rehome(
    deps: Deps,
    job_id: str,
    tenant: str,
    kwargs: dict[str, Any],
    enqueued_at: datetime,
    prefetched: list[Any] | None,
) -> None:
    """A raw producer's job that names a tenant is that tenant's job, stored as `tenant:id` as
    every other producer's is (else it was scheduled and billed as the tenant but unreachable
    through the tenant's API). It is queued again under that ID; this entry ends with no record."""
    new_id = f"{tenant}:{job_id}"
    payload = arq_format.job_payload(kwargs, int(enqueued_at.timestamp() * 1000))
    moved = await rehome(deps.store, job_id, new_id, payload)
    log.info("job.rehomed", to=new_id, moved=moved)
    if prefetched:  # a ticket taken for the old ID is given back; the new one is admitted anew
        ticket = admission.parse_or_none(prefetched[1])
        await admission.HeldTicket(deps, job_id, ticket).release()


async def on_refused(ctx: dict[str, Any], job_id: str, result_data: bytes | None) -> None:
    """The queue refused a job before our task ran: record why."""
    deps: Deps | None = ctx.get("msgq")
    if deps is not None:
        try:
            await record_refused(deps, job_id, result_data)
        finally:
            prefetched = ctx.get(PREFETCHED)
            if prefetched:  # the claim read the dispatcher's ticket with the job: give it back
                ticket = admission.parse_or_none(prefetched[1])
                await admission.HeldTicket(deps, job_id, ticket).release()


async def record_refused(deps: Deps, job_id: str, result_data: bytes | None) -> None:
    """A failed record for a job arq refused before running it; its reason, never its bytes."""
    reason = "job payload is missing or empty"
    with contextlib.suppress(orjson.JSONDecodeError, TypeError, AttributeError):
        result = orjson.loads(result_data or b"{}").get("r") or {}
        if result.get("message") and result["message"] != "job expired":
            reason = f"refused by arq: {result['message']}"[:500]
    record = transitions.new_record(
        job_id, None, created_at=utcnow(), default_max_attempts=deps.settings.max_attempts
    )
    current = await deps.store.ensure(record)
    if current.cancel_requested:
        # arq refuses a job it was asked to abort before it started: that is a cancel.
        await transitions.finish(deps.store, job_id, JobStatus.CANCELED)
        return
    error = JobError(type="validation_error", message=reason)
    await transitions.finish(deps.store, job_id, JobStatus.FAILED, error=error)


async def _crashed(deps: Deps, job_id: str, exc: Exception, kwargs: dict[str, Any]) -> None:
    """Retry with backoff like a transient failure; after max_attempts, `failed` with the
    exception's type and message."""
    log.error("job.crashed", error=f"{type(exc).__name__}: {exc}"[:500], exc_info=exc)
    error = JobError(type="internal_error", message=f"{type(exc).__name__}: {exc}"[:2000])
    s = deps.settings
    stored = await transitions.record_crash(
        deps.store,
        job_id,
        error=error,
        backoff=functools.partial(
            retry_delay_s,
            retry_after_s=None,
            base_s=s.backoff_base_s,
            factor=s.backoff_factor,
            max_s=s.backoff_max_s,
        ),
    )
    if stored is not None and stored.status is JobStatus.FAILED and "request" in kwargs:
        await deps.store.keep_spec(job_id, {k: v for k, v in kwargs.items() if k != "deadline"})
    if stored is not None and stored.status is JobStatus.RETRYING and stored.next_attempt_at:
        raise Defer(defer=max(0.0, (stored.next_attempt_at - utcnow()).total_seconds()))


def _parse_spec(kwargs: dict[str, Any]) -> tuple[JobSpec | None, JobError | None]:
    if UNDECODABLE_KEY in kwargs:
        return None, JobError(type="validation_error", message=str(kwargs[UNDECODABLE_KEY]))
    try:
        return JobSpec.model_validate(kwargs), None
    except ValidationError as exc:
        message = "job payload does not match the msgq job format"
        return None, JobError(
            type="validation_error", message=message, errors=field_errors(exc, kwargs)
        )


async def _ready_to_send(deps: Deps, record: JobRecord, spec: JobSpec) -> MessageRequest | None:
    """Deadline, validation and spent attempts end a job without calling the API (None)."""
    store, job_id = deps.store, record.id
    if record.deadline is not None and utcnow() >= record.deadline:
        await transitions.finish(store, job_id, JobStatus.EXPIRED)
        return None
    models = await deps.catalog.limits()
    try:
        request = validate_request(
            spec.request,
            max_image_bytes=deps.settings.max_image_bytes,
            in_batch=record.batch_id is not None,
            anthropic_version=spec.anthropic_version or deps.settings.anthropic_version,
            models=models,
        )
    except ValidationError as exc:
        errors = field_errors(exc, spec.request)
        message = summarize(errors, 5)
        error = JobError(type="validation_error", message=message, errors=errors)
        await transitions.finish(store, job_id, JobStatus.FAILED, error=error)
        return None
    if record.attempts >= record.max_attempts:
        # A worker died during the last allowed call: do not make one more.
        error = record.error or JobError(type="attempts_exhausted", message="no attempts left")
        await transitions.finish(store, job_id, JobStatus.FAILED, error=error)
        return None
    if note_unknown_model(request.model, models):
        metrics.UNKNOWN_MODELS.labels(unknown_label(request.model)).inc()
    if request.model_extra:
        log.info("request.unknown_parameters", names=sorted(request.model_extra))
    if unknown_fields := request.unknown_fields():
        log.info("request.unknown_block_fields", names=sorted(unknown_fields))
    return request
